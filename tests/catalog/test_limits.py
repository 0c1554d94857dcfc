"""Tenant quotas in the catalog, over gRPC: admins set them (audited, visible in SQL), tenants read their own;
stored bytes, revisions and policies are enforced at publish, create_policy and bulk import inside the
storing transaction — concurrent publishers on Postgres never pass a limit — and a refusal names the limit,
the tenant, the current value and when to retry, and stores nothing."""

from __future__ import annotations

import threading

import grpc
import pytest
from sqlalchemy import create_engine, text

from mint.adapters import LORA_MODULES
from mint.cli import main as mint_cli
from mint.errors import Code, MintError
from mint.proto import catalog_pb2 as pb
from mint.sdk import CatalogClient
from mint.server import channel
from tests.catalog.test_keys import ADMIN_KEY as KEYS_ADMIN_KEY
from tests.catalog.test_keys import catalog_server
from tests.catalog.test_service import serving
from tests.factories import adapter_files, make_adapter


@pytest.fixture
def service(db_url, tmp_path):
    with serving(db_url, tmp_path / "blobs") as service:
        service["url"] = db_url
        yield service


@pytest.fixture
def pg_service(pg_url, tmp_path):
    with serving(pg_url, tmp_path / "blobs") as service:
        service["url"] = pg_url
        yield service


def refusal(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn()
    return caught.value


def set_limits(service, tenant: str = "acme", clear=(), **limits) -> pb.TenantLimits:
    return service["admin"].SetTenantLimits(pb.SetTenantLimitsRequest(tenant=tenant, limits=pb.TenantLimits(**limits), clear=list(clear)))


def payload(seed: int) -> tuple[str, bytes]:
    return adapter_files(make_adapter(seed=seed))


def test_unset_limits_are_no_limits_and_admins_set_and_clear_them(service):
    acme = service["acme"]
    unset = acme.GetTenantLimits(pb.GetTenantLimitsRequest())
    assert unset.tenant == "acme" and not unset.HasField("max_stored_bytes") and not unset.HasField("updated_at")
    limits = set_limits(service, max_revisions=5, requests_per_second=2.5)
    assert (limits.max_revisions, limits.requests_per_second, limits.HasField("max_policies")) == (5, 2.5, False)
    limits = set_limits(service, max_policies=3, clear=["max_revisions"])
    assert (limits.HasField("max_revisions"), limits.max_policies, limits.requests_per_second) == (False, 3, 2.5)
    used = acme.GetTenantLimits(pb.GetTenantLimitsRequest(with_usage=True))
    assert (used.usage.policies, used.usage.revisions, used.usage.stored_bytes) == (1, 0, 0)
    events = acme.ListAuditEvents(pb.ListAuditEventsRequest(action="set_limits")).events
    assert len(events) == 2 and events[0].actor.startswith("key:")


def test_only_global_admins_set_limits_and_tenants_read_only_their_own(service):
    acme, admin = service["acme"], service["admin"]
    assert refusal(lambda: acme.SetTenantLimits(pb.SetTenantLimitsRequest(tenant="acme", limits=pb.TenantLimits(max_policies=100)))).code() \
        == grpc.StatusCode.PERMISSION_DENIED
    err = refusal(lambda: acme.GetTenantLimits(pb.GetTenantLimitsRequest(tenant="globex")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "globex" in err.details()
    assert admin.GetTenantLimits(pb.GetTenantLimitsRequest(tenant="globex")).tenant == "globex"
    assert refusal(lambda: admin.GetTenantLimits(pb.GetTenantLimitsRequest(tenant="nobody"))).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("limits", "clear", "named"),
    [
        ({"max_policies": -1}, [], "max_policies"),
        ({"burst": 0}, [], "burst"),
        ({"requests_per_second": 0.0}, [], "requests_per_second"),
        ({"requests_per_second": float("nan")}, [], "requests_per_second"),
        ({"max_concurrent_sequences": -3}, [], "max_concurrent_sequences"),
        ({}, ["max_bogus"], "max_bogus"),
        ({"max_policies": 1}, ["max_policies"], "max_policies"),
        ({}, [], "at least one limit"),
    ],
)
def test_bad_limits_are_refused_naming_the_limit(service, limits, clear, named):
    err = refusal(lambda: set_limits(service, clear=clear, **limits))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and named in err.details()
    assert not service["acme"].GetTenantLimits(pb.GetTenantLimitsRequest()).HasField("updated_at")


def test_revisions_limit_refuses_the_next_publish_and_stores_nothing(service):
    acme = service["acme"]
    set_limits(service, max_revisions=2)
    for seed in (1, 2):
        acme.publish("bot", *payload(seed))
    files_before = sorted(p for p in service["blob_dir"].rglob("*") if p.is_file())
    err = refusal(lambda: acme.publish("bot", *payload(3)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant acme has 2 revisions" in err.details() and "max_revisions=2" in err.details() and "Retry once an admin raises it" in err.details()
    assert sorted(p for p in service["blob_dir"].rglob("*") if p.is_file()) == files_before
    assert acme.GetPolicy(pb.GetPolicyRequest(name="bot")).head_number == 2
    set_limits(service, max_revisions=3)
    assert acme.publish("bot", *payload(3)).number == 3
    # Another tenant is not limited by acme's limits.
    service["globex"].CreatePolicy(pb.CreatePolicyRequest(name="bot", base_model="tiny"))
    for seed in (4, 5, 6):
        service["globex"].publish("bot", *payload(seed))


def test_stored_bytes_limit_counts_every_revision_including_retracted_ones(service):
    acme = service["acme"]
    config_json, data = payload(1)
    set_limits(service, max_stored_bytes=2 * len(data) + 10)
    acme.publish("bot", config_json, data)
    acme.publish("bot", *payload(2))
    acme.RetractRevision(pb.RetractRevisionRequest(ref="bot@2", reason="bad"))
    err = refusal(lambda: acme.publish("bot", *payload(3)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"tenant acme has {2 * len(data)} bytes; {len(data)} more would pass its limit (max_stored_bytes={2 * len(data) + 10})" in err.details()
    assert "retracting revisions does not free" in err.details()


def test_policies_limit_refuses_create_policy(service):
    acme = service["acme"]
    set_limits(service, max_policies=2)
    acme.CreatePolicy(pb.CreatePolicyRequest(name="second", base_model="tiny"))
    err = refusal(lambda: acme.CreatePolicy(pb.CreatePolicyRequest(name="third", base_model="tiny")))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tenant acme has 2 policies" in err.details() and "max_policies=2" in err.details()
    assert [p.name for p in acme.ListPolicies(pb.ListPoliciesRequest()).policies] == ["bot", "second"]


def test_bulk_import_is_refused_whole_when_it_would_pass_a_limit(service):
    admin, acme = service["admin"], service["acme"]
    config_json, data = payload(1)
    blob = admin.UploadBlob(iter([pb.BlobChunk(data=data, base_model="tiny", adapter_config_json=config_json)]))
    records = [pb.RevisionRecord(policy=f"acme/imported-{p}", base_model="tiny", number=n, sha256=blob.sha256, rank=4, alpha=8,
                                 target_modules=list(LORA_MODULES)) for p in range(2) for n in (1, 2)]
    set_limits(service, max_revisions=3)
    err = refusal(lambda: admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records)])))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tenant acme has 0 revisions; 4 more" in err.details()
    set_limits(service, max_revisions=10, max_policies=2)
    err = refusal(lambda: admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records)])))
    assert "tenant acme has 1 policies; 2 more would pass its limit (max_policies=2)" in err.details()
    assert [p.name for p in acme.ListPolicies(pb.ListPoliciesRequest()).policies] == ["bot"]
    set_limits(service, max_policies=3, max_stored_bytes=4 * len(data))
    assert admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records)])).revisions == 4
    assert acme.GetTenantLimits(pb.GetTenantLimitsRequest(with_usage=True)).usage.stored_bytes == 4 * len(data)


def test_concurrent_publishers_never_pass_the_revisions_limit(pg_service):
    acme = pg_service["acme"]
    set_limits(pg_service, max_revisions=10)
    payloads = [payload(i) for i in range(24)]
    barrier = threading.Barrier(12)
    published, refused, other = [], [], []

    def worker(items):
        barrier.wait()
        for config_json, data in items:
            try:
                published.append(acme.publish("bot", config_json, data).number)
            except grpc.RpcError as err:
                (refused if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else other).append(err)

    threads = [threading.Thread(target=worker, args=(payloads[i::12],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other
    assert sorted(published) == list(range(1, 11)) and len(refused) == 14


def test_concurrent_publishers_to_many_policies_never_pass_the_stored_bytes_limit(pg_service):
    acme = pg_service["acme"]
    for p in range(8):
        acme.CreatePolicy(pb.CreatePolicyRequest(name=f"p{p}", base_model="tiny"))
    size = len(payload(0)[1])
    set_limits(pg_service, max_stored_bytes=5 * size)
    barrier = threading.Barrier(8)
    published, other = [], []

    def worker(p):
        barrier.wait()
        for seed in range(3):
            try:
                published.append(acme.publish(f"p{p}", *payload(100 * p + seed)).number)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    other.append(err)

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other and len(published) == 5
    assert acme.GetTenantLimits(pb.GetTenantLimitsRequest(with_usage=True)).usage.stored_bytes == 5 * size


def test_limits_are_visible_in_sql(service):
    set_limits(service, max_revisions=7, max_concurrent_sequences=4)
    service["acme"].publish("bot", *payload(1))
    engine = create_engine(service["url"])
    try:
        with engine.connect() as conn:
            rows = {r.tenant: r for r in conn.execute(text("SELECT * FROM tenant_quotas"))}
            event = conn.execute(text("SELECT tenant, key_name, details FROM audit_log WHERE action = 'set_limits'")).one()
    finally:
        engine.dispose()
    acme = rows["acme"]
    assert (acme.max_revisions, acme.revisions, acme.max_concurrent_sequences, acme.policies, acme.max_stored_bytes) == (7, 1, 4, 1, None)
    assert acme.stored_bytes == len(payload(1)[1])
    assert rows["globex"].max_revisions is None
    assert event.tenant == "acme"


def test_sdk_and_cli(tmp_path, capsys):
    with catalog_server(tmp_path) as served:
        admin = CatalogClient(channel(served["address"]), KEYS_ADMIN_KEY)
        limits = admin.set_tenant_limits("acme", max_policies=4, requests_per_second=10.0)
        assert (limits.max_policies, limits.requests_per_second) == (4, 10.0)
        assert not admin.set_tenant_limits("acme", clear=["max_policies"]).HasField("max_policies")
        assert admin.get_tenant_limits("acme", with_usage=True).usage.policies == 0
        with pytest.raises(MintError) as caught:
            admin.set_tenant_limits("acme", max_polices=1)
        assert caught.value.code is Code.INVALID_ARGUMENT

        cli = ["--address", served["address"], "--api-key", KEYS_ADMIN_KEY]
        assert mint_cli(["limits", "set", "acme", "--max-stored-bytes", "1000000", "--burst", "20", "--requests-per-second", "none", *cli]) == 0
        assert mint_cli(["limits", "show", "acme", *cli]) == 0
        out = capsys.readouterr().out
        assert "max_stored_bytes           1000000  (now 0)" in out and "requests_per_second        none" in out and "burst                      20" in out
        member = served["key"]("member", "read").key
        assert mint_cli(["limits", "set", "acme", "--max-policies", "99", "--address", served["address"], "--api-key", member]) == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err
