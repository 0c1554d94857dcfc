"""The catalog over gRPC on real Postgres: auth, tenancy, publish/resolve/download, concurrency, bad input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import struct
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import json_format, timestamp_pb2

from mint import auth
from mint.adapters import LORA_MODULES
from mint.proto import catalog_pb2 as pb
from mint.proto import catalog_pb2_grpc, common_pb2
from mint.server import channel
from services.catalog.config import CatalogConfig
from services.catalog.main import create_server, open_catalog
from tests.conftest import create_database, drop_database
from tests.factories import TINY_LAYERS, TINY_SHAPES, adapter_files, make_adapter

ADMIN_KEY = auth.generate_key().key


class Client:
    """A raw stub plus the key it calls with."""

    def __init__(self, stub: catalog_pb2_grpc.CatalogServiceStub, key: str):
        self.stub, self.md = stub, auth.call_metadata(key)

    def __getattr__(self, name):
        method = getattr(self.stub, name)
        return lambda request, **kw: method(request, metadata=self.md, **kw)

    def publish(self, policy: str, config_json: str, data: bytes, *, chunk: int = 1000, **header) -> pb.Revision:
        def messages():
            yield pb.PublishRevisionRequest(header=pb.PublishRevisionHeader(policy=policy, adapter_config_json=config_json, **header))
            for i in range(0, len(data), chunk):
                yield pb.PublishRevisionRequest(chunk=data[i : i + chunk])

        return self.stub.PublishRevision(messages(), metadata=self.md)


@contextlib.contextmanager
def serving(url: str, blob_dir: Path):
    """A catalog server on `url` with tenants acme and globex (a member key each), base model tiny and acme/bot."""
    config = CatalogConfig(database_url=url, blob_dir=str(blob_dir), admin_key=ADMIN_KEY, max_rank=64, address="127.0.0.1:0")
    catalog = open_catalog(config)
    server, port = create_server(config, catalog)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    stub = catalog_pb2_grpc.CatalogServiceStub(ch)
    admin = Client(stub, ADMIN_KEY)
    admin.CreateTenant(pb.CreateTenantRequest(name="acme"))
    admin.CreateTenant(pb.CreateTenantRequest(name="globex"))
    admin.RegisterBaseModel(
        pb.RegisterBaseModelRequest(
            name="tiny", architecture="llama", config_json="{}", weights_sha256="ab" * 32, num_layers=TINY_LAYERS,
            module_shapes={k: pb.ModuleShape(in_features=i, out_features=o) for k, (i, o) in TINY_SHAPES.items()},
        )
    )
    acme = Client(stub, admin.CreateApiKey(pb.CreateApiKeyRequest(tenant="acme", name="ci", role=pb.ROLE_MEMBER)).key)
    globex = Client(stub, admin.CreateApiKey(pb.CreateApiKeyRequest(tenant="globex", name="ci", role=pb.ROLE_MEMBER)).key)
    acme.CreatePolicy(pb.CreatePolicyRequest(name="bot", base_model="tiny"))
    try:
        yield {"admin": admin, "acme": acme, "globex": globex, "stub": stub, "channel": ch, "blob_dir": Path(config.blob_dir), "catalog": catalog}
    finally:
        ch.close()
        server.stop(None)
        catalog.store.close()


@pytest.fixture
def service(pg_url, tmp_path):
    with serving(pg_url, tmp_path / "blobs") as service:
        yield service


@pytest.fixture
def service_any_db(db_url, tmp_path):
    """The service on Postgres and on SQLite."""
    with serving(db_url, tmp_path / "blobs") as service:
        yield service


def status_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_publish_resolve_download_round_trip(service):
    acme = service["acme"]
    config_json, data = adapter_files(make_adapter(rank=4))
    rev = acme.publish("bot", config_json, data, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), metrics={"loss": 0.5})
    assert (rev.policy, rev.number, rev.address, rev.size_bytes) == ("acme/bot", 1, "acme/bot@1", len(data))
    assert rev.sha256 == hashlib.sha256(data).hexdigest() and rev.status == pb.REVISION_STATUS_ACTIVE
    resolved = acme.Resolve(pb.ResolveRequest(ref="bot@latest"))
    assert resolved.adapter.sha256 == rev.sha256 and resolved.adapter.rank == 4 and resolved.adapter.base_model == "tiny"
    chunks = list(acme.DownloadRevision(pb.DownloadRevisionRequest(ref="acme/bot@1")))
    assert chunks[0].revision.number == 1
    assert b"".join(c.chunk for c in chunks[1:]) == data
    assert json.loads(chunks[0].revision.adapter_config_json)["r"] == 4
    assert b"".join(c.chunk for c in service["admin"].DownloadBlob(pb.DownloadBlobRequest(sha256=rev.sha256))) == data


def test_auth_and_tenancy(service):
    acme, globex, stub = service["acme"], service["globex"], service["stub"]
    config_json, data = adapter_files(make_adapter())
    acme.publish("bot", config_json, data)
    assert status_of(lambda: stub.Resolve(pb.ResolveRequest(ref="acme/bot"))) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: stub.Resolve(pb.ResolveRequest(ref="acme/bot"), metadata=auth.call_metadata("mint_000000000000_nope"))) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(lambda: stub.Resolve(pb.ResolveRequest(ref="acme/bot"), metadata=auth.call_metadata("garbage"))) == grpc.StatusCode.UNAUTHENTICATED
    # Another tenant's policy is indistinguishable from a missing one.
    assert status_of(lambda: globex.Resolve(pb.ResolveRequest(ref="acme/bot"))) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: globex.GetPolicy(pb.GetPolicyRequest(name="acme/bot"))) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: globex.publish("acme/bot", config_json, data)) == grpc.StatusCode.NOT_FOUND
    sha = acme.Resolve(pb.ResolveRequest(ref="bot")).adapter.sha256
    assert status_of(lambda: list(globex.DownloadBlob(pb.DownloadBlobRequest(sha256=sha)))) == grpc.StatusCode.PERMISSION_DENIED
    assert [p.full_name for p in globex.ListPolicies(pb.ListPoliciesRequest()).policies] == []
    # Member keys cannot administer; acting for another tenant needs a privileged key.
    assert status_of(lambda: acme.CreateTenant(pb.CreateTenantRequest(name="evil"))) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: stub.Resolve(pb.ResolveRequest(ref="bot"), metadata=acme.md + ((auth.TENANT_HEADER, "globex"),))) == grpc.StatusCode.PERMISSION_DENIED
    admin_as_acme = stub.Resolve(pb.ResolveRequest(ref="bot"), metadata=service["admin"].md + ((auth.TENANT_HEADER, "acme"),))
    assert admin_as_acme.revision.policy == "acme/bot"
    who = acme.WhoAmI(pb.WhoAmIRequest())
    assert (who.tenant, who.role) == ("acme", pb.ROLE_MEMBER)


def test_sixty_four_concurrent_publishers_get_revisions_one_to_sixty_four(service):
    acme = service["acme"]
    payloads = [adapter_files(make_adapter(seed=i)) for i in range(64)]
    barrier = threading.Barrier(16)
    results, errors = [], []

    def worker(items):
        barrier.wait()
        for config_json, data in items:
            try:
                results.append(acme.publish("bot", config_json, data).number)
            except grpc.RpcError as err:  # pragma: no cover - reported below
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(payloads[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 65))
    events, token = [], ""
    while True:
        page = acme.ListAuditEvents(pb.ListAuditEventsRequest(policy="bot", action="publish", page=common_pb2.PageRequest(page_size=10, page_token=token)))
        events += [e.revision_number for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert sorted(events) == list(range(1, 65))
    assert acme.GetPolicy(pb.GetPolicyRequest(name="bot")).head_number == 64
    history = acme.ListAliasHistory(pb.ListAliasHistoryRequest(policy="bot", alias="latest", page=common_pb2.PageRequest(page_size=1000)))
    assert sorted(m.to_number for m in history.moves) == list(range(1, 65))


def _header(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """Raw safetensors bytes from (dtype, shape, nbytes) entries, zero-filled."""
    meta, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(meta).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * offset


def _modified(fn) -> tuple[str, bytes]:
    adapter = make_adapter(rank=4, modules=("q_proj",))
    fn(adapter)
    return adapter_files(adapter)


def _good() -> tuple[str, bytes]:
    return adapter_files(make_adapter(rank=4, modules=("q_proj",)))


def _with_tensor(name: str, value: torch.Tensor) -> tuple[str, bytes]:
    from safetensors.torch import save

    adapter = make_adapter(rank=4, modules=("q_proj",))
    state = adapter.state_dict()
    state[name] = value
    return json.dumps(adapter.config.to_dict()), save(state)


def _without(name: str) -> tuple[str, bytes]:
    from safetensors.torch import save

    adapter = make_adapter(rank=4, modules=("q_proj",))
    state = adapter.state_dict()
    del state[name]
    return json.dumps(adapter.config.to_dict()), save(state)


def _deep_header(depth: int) -> bytes:
    raw = ('{"__metadata__": {"a": ' + "[" * depth + "]" * depth + "}}").encode()
    return struct.pack("<Q", len(raw)) + raw


def _renamed(name: str, new_name: str) -> tuple[str, bytes]:
    from safetensors.torch import save

    adapter = make_adapter(rank=4, modules=("q_proj",))
    state = adapter.state_dict()
    state[new_name] = state.pop(name)
    return json.dumps(adapter.config.to_dict()), save(state)


def _config(**changes) -> str:
    config = json.loads(_good()[0])
    config.update(changes)
    return json.dumps({k: v for k, v in config.items() if v is not ...})


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
def _finite_but(value: float) -> torch.Tensor:
    tensor = torch.randn(4, 64)
    tensor[2, 17] = value
    return tensor


BAD_INPUTS = {
    "empty file": lambda: (_good()[0], b""),
    "truncated length": lambda: (_good()[0], b"\x10\x00\x00"),
    "truncated header": lambda: (_good()[0], _good()[1][:40]),
    "truncated data": lambda: (_good()[0], _good()[1][:-7]),
    "oversized header claim": lambda: (_good()[0], struct.pack("<Q", 10**12) + b"{}"),
    "header not json": lambda: (_good()[0], struct.pack("<Q", 4) + b"{abc"),
    "pickle": lambda: (_good()[0], pickle.dumps({"weights": [1, 2, 3]})),
    "torch.save zip": lambda: (_good()[0], b"PK\x03\x04" + b"\0" * 100),
    "offsets overlap": lambda: (_good()[0], _header({Q_A: ("F32", [4, 64], 1024)}).replace(b"[0, 1024]", b"[0, 1000]")),
    "wrong dtype": lambda: _with_tensor(Q_A, torch.zeros(4, 64, dtype=torch.int32)),
    "float64": lambda: _with_tensor(Q_A, torch.zeros(4, 64, dtype=torch.float64)),
    "nan": lambda: _with_tensor(Q_A, torch.full((4, 64), float("nan"))),
    "inf": lambda: _with_tensor(Q_A, torch.full((4, 64), float("inf"))),
    "one nan": lambda: _with_tensor(Q_A, _finite_but(float("nan"))),
    "one -inf": lambda: _with_tensor(Q_A, _finite_but(float("-inf"))),
    "shape mismatch": lambda: _with_tensor(Q_A, torch.zeros(4, 63)),
    "rank mismatch": lambda: _with_tensor(Q_A, torch.zeros(5, 64)),
    "unknown module": lambda: _with_tensor("base_model.model.model.layers.0.self_attn.rotary.lora_A.weight", torch.zeros(4, 64)),
    "untargeted module": lambda: _with_tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", torch.zeros(4, 64)),
    "layer out of range": lambda: _with_tensor("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", torch.zeros(4, 64)),
    "hostile tensor name": lambda: _with_tensor("../../etc/passwd", torch.zeros(1)),
    "layer in arabic digits": lambda: _renamed(Q_A, Q_A.replace("layers.0", "layers.\u0660")),
    "layer with a leading zero": lambda: _renamed(Q_A, Q_A.replace("layers.0", "layers.00")),
    "tensor name with a trailing newline": lambda: _renamed(Q_A, Q_A + "\n"),
    "missing lora_B": lambda: _without("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"),
    "config not json": lambda: ("{r: 4", _good()[1]),
    "config missing r": lambda: (_config(r=...), _good()[1]),
    "config rank too big": lambda: (_config(r=65), _good()[1]),
    "config string targets": lambda: (_config(target_modules="all-linear"), _good()[1]),
    "config dora": lambda: (_config(use_dora=True), _good()[1]),
    "config modules_to_save": lambda: (_config(modules_to_save=["lm_head"]), _good()[1]),
    "config bias": lambda: (_config(bias="all"), _good()[1]),
    "config not lora": lambda: (_config(peft_type="IA3"), _good()[1]),
    "config negative alpha": lambda: (_config(lora_alpha=-1), _good()[1]),
    "config absurd alpha": lambda: (_config(lora_alpha=1e300), _good()[1]),
    "config nan alpha": lambda: (_config(lora_alpha=float("nan")), _good()[1]),
    "config scale overflows fp16": lambda: (_config(lora_alpha=60000), _good()[1]),
    "config rank 0": lambda: (_config(r=0), _good()[1]),
    "config negative rank": lambda: (_config(r=-4), _good()[1]),
    "config nested 20 deep": lambda: (_config(extra=json.loads("[" * 20 + "]" * 20)), _good()[1]),
    "header nested 100,000 deep": lambda: (_good()[0], _deep_header(100_000)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_adapters_are_rejected_and_nothing_is_stored(service, case):
    acme = service["acme"]
    config_json, data = BAD_INPUTS[case]()
    with pytest.raises(grpc.RpcError) as info:
        acme.publish("bot", config_json, data)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details()  # a message for the client
    _assert_nothing_stored(service)


@pytest.mark.parametrize(
    "policy, header, code",
    [
        ("../../etc", {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("Acme/Bot", {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot; DROP TABLE revisions", {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("a" * 65, {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("ghost", {}, grpc.StatusCode.NOT_FOUND),
        ("bot", {"sha256": "0" * 64}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"sha256": "not-hex"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"size_bytes": 12}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"parent_number": 3}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"metrics": {"loss": float("nan")}}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"source": "s" * 257}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"idempotency_key": "k" * 129}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"size_bytes": -5}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot", {"size_bytes": 2**62}, grpc.StatusCode.INVALID_ARGUMENT),
        ("bot@7", {}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_publish_requests(service, policy, header, code):
    config_json, data = _good()
    assert status_of(lambda: service["acme"].publish(policy, config_json, data, **header)) == code
    _assert_nothing_stored(service)


def test_stream_must_start_with_a_header(service):
    acme = service["acme"]
    messages = iter([pb.PublishRevisionRequest(chunk=b"abc")])
    assert status_of(lambda: service["stub"].PublishRevision(messages, metadata=acme.md)) == grpc.StatusCode.INVALID_ARGUMENT


def _assert_nothing_stored(service):
    acme = service["acme"]
    assert acme.GetPolicy(pb.GetPolicyRequest(name="bot")).head_number == 0
    assert list(acme.ListRevisions(pb.ListRevisionsRequest()).revisions) == []
    stored = [p for p in service["blob_dir"].rglob("*") if p.is_file()]
    assert stored == [], stored


def test_aliases_rollback_and_retract_over_grpc(service):
    acme = service["acme"]
    for seed in range(3):
        acme.publish("bot", *adapter_files(make_adapter(seed=seed)))
    acme.SetAlias(pb.SetAliasRequest(policy="bot", alias="prod", revision_number=2))
    acme.SetAlias(pb.SetAliasRequest(policy="bot", alias="prod", revision_number=3))
    assert acme.Rollback(pb.RollbackRequest(policy="bot", alias="prod", reason="bad eval")).revision_number == 2
    acme.RetractRevision(pb.RetractRevisionRequest(ref="bot@2", reason="leak"))
    assert status_of(lambda: acme.Resolve(pb.ResolveRequest(ref="bot@prod"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(lambda: acme.RetractRevision(pb.RetractRevisionRequest(ref="bot@prod", reason="x"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert acme.Resolve(pb.ResolveRequest(ref="bot")).revision.number == 3
    rev = acme.RecordMetrics(pb.RecordMetricsRequest(ref="bot@3", metrics={"eval/accuracy": 0.9}))
    assert rev.metrics["eval/accuracy"] == pytest.approx(0.9)


def test_bulk_path_over_grpc(service):
    admin, acme = service["admin"], service["acme"]
    config_json, data = adapter_files(make_adapter(rank=4))

    def chunks():
        yield pb.BlobChunk(data=data[:500], base_model="tiny", adapter_config_json=config_json)
        yield pb.BlobChunk(data=data[500:])

    blob = admin.UploadBlob(chunks())
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    records = [pb.RevisionRecord(policy=f"acme/imported-{p}", base_model="tiny", number=n, sha256=blob.sha256, rank=4, alpha=8,
                                 target_modules=list(LORA_MODULES)) for p in range(3) for n in (1, 2)]
    result = admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records[:3]), pb.ImportRevisionsRequest(records=records[3:])]))
    assert (result.revisions, result.policies_created) == (6, 3)
    assert acme.Resolve(pb.ResolveRequest(ref="imported-2")).revision.number == 2
    assert status_of(lambda: acme.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records)]))) == grpc.StatusCode.PERMISSION_DENIED
    bad = [pb.BlobChunk(data=b"\0" * 16, base_model="tiny", adapter_config_json=config_json)]
    assert status_of(lambda: admin.UploadBlob(iter(bad))) == grpc.StatusCode.INVALID_ARGUMENT


def _stored_files(service) -> list[Path]:
    return sorted(p for p in service["blob_dir"].rglob("*") if p.is_file())


def _upload(admin: Client, config_json: str, data: bytes) -> pb.BlobInfo:
    return admin.UploadBlob(iter([pb.BlobChunk(data=data[:500], base_model="tiny", adapter_config_json=config_json), pb.BlobChunk(data=data[500:])]))


def test_a_replayed_publish_stores_no_bytes(service):
    acme = service["acme"]
    first = acme.publish("bot", *_good(), idempotency_key="step-1")
    stored = _stored_files(service)
    again = acme.publish("bot", *adapter_files(make_adapter(rank=4, modules=("q_proj",), seed=9)), idempotency_key="step-1")
    assert (again.number, again.sha256) == (first.number, first.sha256)
    assert _stored_files(service) == stored


def test_refused_uploads_store_nothing(service):
    admin = service["admin"]
    config_json, data = _good()
    _upload(admin, config_json, data)
    stored = _stored_files(service)
    other_alpha = json.dumps({**json.loads(config_json), "lora_alpha": 16})
    assert status_of(lambda: _upload(admin, other_alpha, data)) == grpc.StatusCode.ALREADY_EXISTS
    assert status_of(lambda: _upload(admin, _config(r=8), data)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: admin.UploadBlob(iter([pb.BlobChunk(data=data, base_model="ghost", adapter_config_json=config_json)]))) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert _stored_files(service) == stored


def test_a_restarted_catalog_removes_staging_files_no_upload_will_finish(service, pg_url):
    staging = service["blob_dir"] / "staging"
    stale, live = staging / "upload-killed-mid-upload", staging / "upload-in-flight"
    for path in (stale, live):
        path.write_bytes(b"partial adapter")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    with serving_again(pg_url, service["blob_dir"]):
        assert not stale.exists()
        assert live.exists()  # another catalog process on this directory may still be writing it


_TS = timestamp_pb2.Timestamp
BAD_CREATED_AT = {
    "seconds past Timestamp's range": _TS(seconds=2**62),
    "seconds before Timestamp's range": _TS(seconds=-(2**62)),
    "negative nanos": _TS(seconds=0, nanos=-1),
    "nanos past a second": _TS(seconds=0, nanos=2_000_000_000),
    "year 9999": _TS(seconds=253_402_300_799),
    "next week": _TS(seconds=int(time.time()) + 7 * 86400),
    "before 1970": _TS(seconds=-1),
}


def _records(blob: str, **changes) -> list[pb.RevisionRecord]:
    base = dict(policy="acme/imported", base_model="tiny", sha256=blob, rank=4, alpha=8, target_modules=["q_proj"])
    return [pb.RevisionRecord(number=1, **base), pb.RevisionRecord(number=2, **{**base, **changes})]


@pytest.mark.parametrize("case", sorted(BAD_CREATED_AT))
def test_imported_timestamps_out_of_range_are_invalid_and_name_the_record(service, case):
    admin = service["admin"]
    blob = _upload(admin, *_good()).sha256
    records = _records(blob)
    records[1].created_at.CopyFrom(BAD_CREATED_AT[case])
    with pytest.raises(grpc.RpcError) as info:
        admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records[:1]), pb.ImportRevisionsRequest(records=records[1:])]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith("record 1") and "created_at" in info.value.details(), info.value.details()


@pytest.mark.parametrize(
    "changes, named",
    [({"rank": 8}, "rank 8"), ({"alpha": 16}, "alpha 16"), ({"target_modules": ["q_proj", "k_proj"]}, "k_proj"), ({"alpha": 1e300}, "1e+300")],
)
def test_imported_records_must_match_their_blobs(service, changes, named):
    admin, acme = service["admin"], service["acme"]
    blob = _upload(admin, *_good()).sha256
    with pytest.raises(grpc.RpcError) as info:
        admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=_records(blob, **changes))]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith("record 1 (acme/imported@2)") and named in info.value.details(), info.value.details()
    assert status_of(lambda: acme.GetPolicy(pb.GetPolicyRequest(name="imported"))) == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_need_no_key(service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(service["channel"])
    response = health.Check(health_pb2.HealthCheckRequest(service="mint.v1.CatalogService"))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(service["channel"])
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(answers).list_services_response.service}
    assert "mint.v1.CatalogService" in names


# --- page tokens ---------------------------------------------------------------------------------------


def _page(token: str, size: int = 1) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


LISTINGS = {
    "ListBaseModels": lambda c, t: c.ListBaseModels(pb.ListBaseModelsRequest(page=_page(t))),
    "ListPolicies": lambda c, t: c.ListPolicies(pb.ListPoliciesRequest(page=_page(t))),
    "ListPolicies by prefix": lambda c, t: c.ListPolicies(pb.ListPoliciesRequest(name_prefix="b", page=_page(t))),
    "ListRevisions of a policy": lambda c, t: c.ListRevisions(pb.ListRevisionsRequest(policy="bot", page=_page(t))),
    "ListRevisions newest first": lambda c, t: c.ListRevisions(pb.ListRevisionsRequest(policy="bot", newest_first=True, page=_page(t))),
    "ListRevisions of the tenant": lambda c, t: c.ListRevisions(pb.ListRevisionsRequest(page=_page(t))),
    "ListAliasHistory": lambda c, t: c.ListAliasHistory(pb.ListAliasHistoryRequest(policy="bot", page=_page(t))),
    "ListAliasHistory of latest": lambda c, t: c.ListAliasHistory(pb.ListAliasHistoryRequest(policy="bot", alias="latest", page=_page(t))),
    "ListAuditEvents": lambda c, t: c.ListAuditEvents(pb.ListAuditEventsRequest(page=_page(t))),
    "ListAuditEvents of publishes": lambda c, t: c.ListAuditEvents(pb.ListAuditEventsRequest(action="publish", page=_page(t))),
}


def _b64json(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# What a client could send instead of a token it was given: JSON keysets of every wrong type, range and arity
# (what tokens used to hold), and strings that are not tokens at all.
CRAFTED_TOKENS = {
    "int past int64": _b64json(json.dumps([2**70])),
    "int64 max + 1": _b64json(json.dumps([2**63])),
    "null": _b64json("[null]"),
    "true": _b64json("[true]"),
    "object": _b64json("[{}]"),
    "nested list": _b64json("[[1]]"),
    "string": _b64json('["x"]'),
    "NUL string": _b64json('["\\u0000"]'),
    "1e308": _b64json("[1e308]"),
    "NaN": _b64json("[NaN]"),
    "negative id": _b64json("[-1]"),
    "zero": _b64json("[0]"),
    "wrong arity": _b64json("[1, 2]"),
    "empty keyset": _b64json("[]"),
    "not a list": _b64json('{"id": 1}'),
    "bare number": _b64json("5"),
    "not json": _b64json("[1"),
    "not base64": "!!!not-base64!!!",
    "one character": "a",
    "padding only": "====",
    "non-ascii": "\ufb01\u0663",
    "long": "A" * 3000,
}


def _tokens_to_try(service) -> dict[str, str]:
    """Crafted tokens, plus real ones spoiled: another listing's, another filter's, altered, cut short."""
    acme = service["acme"]
    real = {name: LISTINGS[name](acme, "").next_page_token for name in LISTINGS}
    assert all(real.values()), real
    tokens = dict(CRAFTED_TOKENS)
    good = real["ListRevisions of the tenant"]
    tokens["another listing's"] = real["ListAuditEvents"]
    tokens["another filter's"] = real["ListPolicies"]
    tokens["altered"] = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    tokens["cut short"] = good[:-4]
    tokens["extended"] = good + "AAAA"
    return tokens, real


def _fill_listings(service) -> None:
    admin, acme = service["admin"], service["acme"]
    admin.RegisterBaseModel(
        pb.RegisterBaseModelRequest(
            name="tiny2", architecture="llama", config_json="{}", weights_sha256="cd" * 32, num_layers=TINY_LAYERS,
            module_shapes={k: pb.ModuleShape(in_features=i, out_features=o) for k, (i, o) in TINY_SHAPES.items()},
        )
    )
    acme.CreatePolicy(pb.CreatePolicyRequest(name="bot2", base_model="tiny"))
    for seed in range(3):
        acme.publish("bot", *adapter_files(make_adapter(seed=seed)))


def test_every_listing_refuses_every_token_it_did_not_issue(service_any_db):
    _fill_listings(service_any_db)
    acme = service_any_db["acme"]
    tokens, real = _tokens_to_try(service_any_db)
    for listing, call in LISTINGS.items():
        for case, token in tokens.items():
            if token == real[listing]:
                continue
            with pytest.raises(grpc.RpcError) as info:
                call(acme, token)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (listing, case, info.value.details())
            assert "not one this server issued" in info.value.details(), (listing, case, info.value.details())


def test_pages_resume_in_another_catalog_process(service_any_db, tmp_path):
    """A second catalog process on the same database accepts the tokens the first one issued."""
    _fill_listings(service_any_db)
    acme = service_any_db["acme"]
    first = acme.ListRevisions(pb.ListRevisionsRequest(page=_page("")))
    assert first.revisions[0].number == 1 and first.next_page_token
    url = service_any_db["catalog"].store.db.url
    with serving_again(url, tmp_path / "blobs2") as again:
        second = again.ListRevisions(pb.ListRevisionsRequest(page=_page(first.next_page_token)), metadata=acme.md)
    assert [r.number for r in second.revisions] == [2]


@contextlib.contextmanager
def serving_again(url: str, blob_dir: Path):
    """A second catalog server on a database `serving` set up."""
    config = CatalogConfig(database_url=url, blob_dir=str(blob_dir), admin_key=ADMIN_KEY, max_rank=64, address="127.0.0.1:0")
    catalog = open_catalog(config)
    server, port = create_server(config, catalog)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield catalog_pb2_grpc.CatalogServiceStub(ch)
    finally:
        ch.close()
        server.stop(None)
        catalog.store.close()


# --- what a member sees of other tenants -------------------------------------------------------------------


def _member_view(acme: Client) -> list[dict]:
    """Everything acme's key can read, as dicts; clock readings left out (they are not other tenants' doing)."""
    responses = [
        acme.WhoAmI(pb.WhoAmIRequest()),
        acme.GetPolicy(pb.GetPolicyRequest(name="bot")),
        acme.ListPolicies(pb.ListPoliciesRequest(page=_page("", 1))),
        acme.Resolve(pb.ResolveRequest(ref="bot")),
        acme.Resolve(pb.ResolveRequest(ref="bot@1")),
        acme.GetRevision(pb.GetRevisionRequest(ref="bot@prod")),
        acme.ListRevisions(pb.ListRevisionsRequest(page=_page("", 1))),
        acme.ListRevisions(pb.ListRevisionsRequest(policy="bot", newest_first=True, page=_page("", 1))),
        acme.ListAliases(pb.ListAliasesRequest(policy="bot")),
        acme.ListAliasHistory(pb.ListAliasHistoryRequest(policy="bot", page=_page("", 2))),
        acme.ListAuditEvents(pb.ListAuditEventsRequest(page=_page("", 3))),
        acme.ListAuditEvents(pb.ListAuditEventsRequest(page=_page("", 100))),
        acme.GetBaseModel(pb.GetBaseModelRequest(name="tiny")),
        acme.ListBaseModels(pb.ListBaseModelsRequest()),
        next(iter(acme.DownloadRevision(pb.DownloadRevisionRequest(ref="bot@2")))),
        acme.RecordMetrics(pb.RecordMetricsRequest(ref="bot@2", metrics={"eval": 1.0})),
        acme.CreatePolicy(pb.CreatePolicyRequest(name="new", base_model="tiny")),
    ]
    key_id = responses[0].key_id
    view = []
    for response in responses:
        text = json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), sort_keys=True)
        text = text.replace(key_id, "<acme's key>")  # keys are random per catalog
        view.append(_scrubbed(json.loads(text)))
    return view


_CLOCK_FIELDS = {"created_at", "updated_at", "at"}


def _scrubbed(value):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _CLOCK_FIELDS:
                continue
            if key == "next_page_token":
                item = f"<a token of {len(item)} characters>"  # sealed: their bytes differ by catalog, never their length
            elif key == "details_json":
                item = json.loads(item)
            out[key] = _scrubbed(item)
        return out
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def _acme_story(world, busy_neighbours: bool) -> list[dict]:
    """The same steps by acme in every world; in a busy one, globex works between them (and shares an import)."""
    acme, globex, admin = world["acme"], world["globex"], world["admin"]
    modules = list(make_adapter().config.target_modules)
    neighbour = f"p{uuid.uuid4().hex[:6]}"
    if busy_neighbours:
        globex.CreatePolicy(pb.CreatePolicyRequest(name=neighbour, base_model="tiny"))

    def neighbours():
        if busy_neighbours:
            for seed in range(3):
                globex.publish(neighbour, *adapter_files(make_adapter(seed=100 + seed)))
            globex.SetAlias(pb.SetAliasRequest(policy=neighbour, alias="prod", revision_number=2))

    neighbours()
    acme.publish("bot", *adapter_files(make_adapter(seed=1)))
    neighbours()
    acme.publish("bot", *adapter_files(make_adapter(seed=2)))
    neighbours()
    acme.SetAlias(pb.SetAliasRequest(policy="bot", alias="prod", revision_number=1))
    neighbours()
    config_json, data = adapter_files(make_adapter(seed=200))
    blob = admin.UploadBlob(iter([pb.BlobChunk(data=data, base_model="tiny", adapter_config_json=config_json)]))
    records = [pb.RevisionRecord(policy="acme/imported", base_model="tiny", number=1, sha256=blob.sha256, rank=4, alpha=8, target_modules=modules)]
    if busy_neighbours:
        head = globex.GetPolicy(pb.GetPolicyRequest(name=neighbour)).head_number
        records += [
            pb.RevisionRecord(policy=f"globex/{neighbour}", number=head + n, sha256=blob.sha256, rank=4, alpha=8, target_modules=modules)
            for n in (1, 2, 3)
        ]
        records += [pb.RevisionRecord(policy="globex/fresh", base_model="tiny", number=1, sha256=blob.sha256, rank=4, alpha=8, target_modules=modules)]
    admin.ImportRevisions(iter([pb.ImportRevisionsRequest(records=records)]))
    neighbours()
    return _member_view(acme)


def test_a_members_view_does_not_change_when_other_tenants_are_busy(pg_url, tmp_path):
    quiet_url = create_database()
    try:
        with serving(quiet_url, tmp_path / "quiet") as quiet:
            quiet_view = _acme_story(quiet, busy_neighbours=False)
        with serving(pg_url, tmp_path / "busy") as busy:
            busy_view = _acme_story(busy, busy_neighbours=True)
    finally:
        drop_database(quiet_url)
    for quiet_item, busy_item in zip(quiet_view, busy_view, strict=True):
        assert quiet_item == busy_item


REF_RPCS = {
    "Resolve": lambda c, ref: c.Resolve(pb.ResolveRequest(ref=ref)),
    "GetRevision": lambda c, ref: c.GetRevision(pb.GetRevisionRequest(ref=ref)),
    "DownloadRevision": lambda c, ref: list(c.DownloadRevision(pb.DownloadRevisionRequest(ref=ref))),
    "RetractRevision": lambda c, ref: c.RetractRevision(pb.RetractRevisionRequest(ref=ref, reason="x")),
    "RecordMetrics": lambda c, ref: c.RecordMetrics(pb.RecordMetricsRequest(ref=ref, metrics={"m": 1.0})),
}


def test_every_rpc_taking_a_ref_refuses_refs_outside_the_ascii_grammar(service):
    """`bot@²` used to answer INTERNAL; `bot@３` and `bot@١` meant revisions 3 and 1."""
    acme = service["acme"]
    for seed in range(3):
        acme.publish("bot", *adapter_files(make_adapter(seed=seed)))
    for selector in ["²", "３", "١", "3\n", " 3", "+3", "03", "1_0", "2147483648", "pr\u043ed"]:
        for name, call in REF_RPCS.items():
            with pytest.raises(grpc.RpcError) as info:
                call(acme, f"bot@{selector}")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, selector, info.value.details())
    assert acme.Resolve(pb.ResolveRequest(ref="bot@3")).revision.number == 3
