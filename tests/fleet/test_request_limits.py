"""The request limits in a fleet: the gateway checks what it serves itself and refuses repeated headers;
calls it forwards untouched are checked by the service that implements them, and their refusals (a silent
upload's idle limit included) reach the client with their own status through the gateway."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mint import auth
from mint.proto import catalog_pb2, catalog_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc
from mint.server import channel
from services.local_fleet import BASE_MODEL, LocalFleet
from tests.conftest import assert_clean_logs
from tests.fleet.conftest import HEARTBEAT_S

IDLE_S = 1.0


@pytest.fixture
def small_fleet(tmp_path, pg_url, fleet_base, monkeypatch):
    monkeypatch.setenv("MINT_LIMIT_UPLOAD_IDLE_S", str(IDLE_S))  # the child processes read it in from_env
    fleet = LocalFleet(tmp_path, pg_url, fleet_base, engines=1, heartbeat_s=HEARTBEAT_S)
    try:
        fleet.wait_for_engines(1)
        yield fleet
    finally:
        fleet.stop()
    assert_clean_logs(fleet.workdir.glob("*.log"))


def test_limits_hold_through_the_gateway(small_fleet):
    ch = channel(small_fleet.gateway.address)
    member = auth.call_metadata(small_fleet.member_key)
    catalog = catalog_pb2_grpc.CatalogServiceStub(ch)
    catalog.CreatePolicy(catalog_pb2.CreatePolicyRequest(name="quiet", base_model=BASE_MODEL), metadata=member)

    # a silent upload, forwarded to the catalog, ends there with the catalog's idle limit
    release = threading.Event()

    def silent():
        yield catalog_pb2.PublishRevisionRequest(
            header=catalog_pb2.PublishRevisionHeader(policy="quiet", adapter_config_json='{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}')
        )
        release.wait(30)

    with pytest.raises(grpc.RpcError) as err:
        catalog.PublishRevision(silent(), metadata=member, timeout=30)
    release.set()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload_idle_s" in err.value.details()
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING

    # checked by the catalog behind the gateway
    with pytest.raises(grpc.RpcError) as err:
        catalog.SetAlias(catalog_pb2.SetAliasRequest(policy="quiet", alias="prod", revision_number=1, reason="a\x00b"), metadata=member)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in err.value.details()

    # checked by the gateway itself
    sampling = gateway_pb2_grpc.SamplingServiceStub(ch)
    huge = gateway_pb2.SampleRequest(
        base_model=BASE_MODEL, prompt=common_pb2.Prompt(text="x" * (2 * 1024 * 1024)), params=common_pb2.SamplingParams(max_tokens=1)
    )
    with pytest.raises(grpc.RpcError) as err:
        list(sampling.Sample(huge, metadata=member, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_prompt_bytes" in err.value.details()
    twice = (*member, (auth.AUTH_HEADER, "Bearer mint_000000000000_nope"))
    with pytest.raises(grpc.RpcError) as err:
        catalog.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=twice)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ch.close()
