"""Tenant quotas the gateway and the trainer enforce, over gRPC: requests per second on every call, concurrent
sampling sequences around each sample (a slot freed when its stream finishes, fails or is cancelled),
concurrent training sessions at CreateSession — on the embedded stack (in-memory limiter), and the request
bucket shared through Redis by two gateway processes of one fleet. Refusals are RESOURCE_EXHAUSTED naming the
tenant, the limit and when to retry (also as trailing metadata retry-after-s). Buckets refill so slowly here
(a request every 1000 s) that no assertion depends on timing."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest

from mint.errors import Code, MintError
from mint.models.presets import init_base
from mint.proto import gateway_pb2, gateway_pb2_grpc
from mint.sdk import SamplingParams, ServiceClient
from mint.sdk.types import prompt_proto
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.local_fleet import TENANT
from services.scheduler.quotas import SEQUENCES, SESSIONS
from tests.engine.conftest import random_adapter

SLOW = 0.001  # requests per second: a spent bucket stays spent for the length of any test


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("quotas")
    init_base(root / "tiny", arch="llama", preset="tiny", seed=12)
    stack = EmbeddedStack(EmbeddedConfig(model_path=str(root / "tiny"), data_dir=str(root / "data"), address="127.0.0.1:0")).start()
    admin = ServiceClient(stack.address, stack.admin_key)
    yield stack, admin
    admin.close()
    stack.stop()


@pytest.fixture
def tenant(stack, request):
    """A fresh tenant (its own bucket and slots) and a client with a key of it."""
    stack, admin = stack
    name = request.node.name.replace("_", "-")[5:40].strip("-")
    admin.catalog.create_tenant(name)
    client = ServiceClient(stack.address, admin.catalog.create_api_key(name, "k"))
    yield name, client
    client.close()


def refused(fn, *args) -> MintError:
    with pytest.raises(MintError) as caught:
        fn(*args)
    assert caught.value.code is Code.RESOURCE_EXHAUSTED, caught.value
    return caught.value


def test_requests_per_second_refuses_past_the_burst_naming_the_limit(stack, tenant):
    stack, admin = stack
    name, client = tenant
    admin.catalog.set_tenant_limits(name, requests_per_second=SLOW, burst=3)
    for _ in range(3):
        client.engines()
    err = refused(client.engines)
    assert f"tenant {name} is over its request rate (requests_per_second=0.001, burst=3)" in err.message
    assert "retry after 1000 s" in err.message
    refused(client.catalog.whoami)  # every call counts, the catalog's through the gateway too
    # The status carries the wait as trailing metadata too.
    stub = gateway_pb2_grpc.SamplingServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListEngines(gateway_pb2.ListEnginesRequest(), metadata=client.metadata)
    trailing = dict(caught.value.trailing_metadata())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and float(trailing["retry-after-s"]) == pytest.approx(1000, rel=0.01)
    # The HTTP door draws on the same bucket: 429 with Retry-After, which OpenAI's clients wait on.
    answer = httpx.post(f"{stack.http_url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1},
                        headers={"authorization": f"Bearer {client.api_key}"}, timeout=30)
    assert answer.status_code == 429 and answer.json()["error"]["type"] == "rate_limit_error", answer.text
    assert f"tenant {name} is over its request rate" in answer.json()["error"]["message"]
    assert 990 <= int(answer.headers["retry-after"]) <= 1001
    # Other tenants are not limited; raising the limit applies at once (the embedded catalog tells the limiter).
    admin.engines()
    admin.catalog.set_tenant_limits(name, clear=["requests_per_second", "burst"])
    client.engines()


def test_the_status_page_counts_against_its_admins_tenant(stack, tenant):
    stack, admin = stack
    name, _ = tenant
    operator = admin.catalog.create_api_key(name, "operator", "admin")  # an admin key of its own tenant
    admin.catalog.set_tenant_limits(name, requests_per_second=SLOW, burst=1)
    page = lambda: httpx.get(f"{stack.http_url}/status", headers={"authorization": f"Bearer {operator}"}, timeout=30)  # noqa: E731
    assert page().status_code == 200
    answer = page()
    assert answer.status_code == 429 and f"tenant {name} is over its request rate" in answer.text
    assert 990 <= int(answer.headers["retry-after"]) <= 1001


def test_concurrent_sequences_are_limited_and_a_cancelled_stream_frees_its_slot(stack, tenant, monkeypatch):
    stack, admin = stack
    name, client = tenant
    client.catalog.create_policy("held", stack.base_model)
    revision = client.catalog.publish("held", random_adapter(stack.engine.model_config, rank=2, seed=3, modules=("q_proj",)))
    # The adapter's bytes are held back, so its sample waits for them, holding its slot, until the test lets go.
    gate = threading.Event()
    source = stack.engine.residency.source
    for method in ("fetch", "local_path"):
        original = getattr(source, method)
        monkeypatch.setattr(source, method, lambda sha256, _original=original: gate.wait(60) and _original(sha256))
    admin.catalog.set_tenant_limits(name, max_concurrent_sequences=1)
    stub = gateway_pb2_grpc.SamplingServiceStub(client.channel)
    request = gateway_pb2.SampleRequest(
        model=f"held@{revision.number}", prompt=prompt_proto([1, 2, 3]),
        params=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True).to_proto(),
    )
    stream = stub.Sample(request, metadata=client.metadata)
    _until(lambda: stack.quotas.held(SEQUENCES, name) == 1)  # the waiting stream holds the tenant's one slot
    sampler = client.create_sampling_client(base_model=stack.base_model)
    short = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    err = refused(sampler.sample, [1, 2], 1, short)
    assert f"tenant {name} has 1 sampling sequences in flight, its limit (max_concurrent_sequences=1)" in err.message
    assert "retry after" in err.message
    stream.cancel()
    gate.set()
    _until(lambda: stack.quotas.held(SEQUENCES, name) == 0)
    assert len(sampler.sample([1, 2], 1, short).sequences) == 1  # finished: freed again
    assert stack.quotas.held(SEQUENCES, name) == 0
    with pytest.raises(MintError):  # a failed sample frees its slot too
        client.create_sampling_client("no-such-policy").sample([1, 2], 1, short)
    assert stack.quotas.held(SEQUENCES, name) == 0


def test_concurrent_training_sessions_are_limited_and_closing_one_frees_it(stack, tenant):
    stack, admin = stack
    name, client = tenant
    admin.catalog.set_tenant_limits(name, max_concurrent_sessions=1)
    first = client.create_lora_training_client(stack.base_model, "p1", rank=2)
    err = refused(client.create_lora_training_client, stack.base_model, "p2", 2)
    assert f"tenant {name} has 1 open training sessions, its limit (max_concurrent_sessions=1)" in err.message
    assert [p.name for p in client.catalog.list_policies()] == ["p1"]  # a refused session creates no policy
    first.close()
    client.create_lora_training_client(stack.base_model, "p2", rank=2).close()
    assert stack.quotas.held(SESSIONS, name) == 0


def _until(condition, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the condition never held")


def test_two_gateways_share_one_bucket_through_redis(two_gateways):
    fleet, second = two_gateways
    fleet.admin.set_tenant_limits(TENANT, requests_per_second=SLOW, burst=4)
    key = fleet.admin.create_api_key(TENANT, "rated", scopes=["read", "sample"])
    one, two = (ServiceClient(gateway.address, key, timeout_s=30) for gateway in (fleet.gateway, second))
    try:
        for client in (one, two, one, two):
            client.engines()
        for client in (one, two):  # spent on both: each gateway alone has seen only two requests
            err = refused(client.engines)
            assert f"tenant {TENANT} is over its request rate (requests_per_second=0.001, burst=4)" in err.message
    finally:
        one.close()
        two.close()
