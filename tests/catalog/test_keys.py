"""API keys with scopes, expiry and revocation, over gRPC: the scope table covers every public RPC and each
scope opens exactly its RPCs; expired and revoked keys are refused (revoked ones by other services within
their cache's TTL); no key grants more than its creator holds; the audit log names keys; listings never
show secrets; bad input is refused with the right code."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import create_engine, text

from mint import auth, scopes
from mint.cli import main as mint_cli
from mint.errors import MintError
from mint.proto import catalog_pb2 as pb
from mint.proto import catalog_pb2_grpc, gateway_pb2, trainer_pb2
from mint.scopes import Scope
from mint.server import RemoteAuthenticator, Service, build_server, channel
from services.catalog.catalog import StoreAuthenticator
from services.catalog.config import CatalogConfig
from services.catalog.main import catalog_service, open_catalog
from services.catalog.migrate import upgrade
from tests.factories import TINY_LAYERS, TINY_SHAPES

ADMIN_KEY = auth.generate_key().key
PUBLIC = [pb.DESCRIPTOR.services_by_name["CatalogService"], gateway_pb2.DESCRIPTOR.services_by_name["SamplingService"],
          trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]]


class Clock:
    """The wall clock the catalog's authenticator reads expiry on, moved by hand."""

    def __init__(self):
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return auth.utcnow() + self.offset


class Caller:
    def __init__(self, stub: catalog_pb2_grpc.CatalogServiceStub, key: str):
        self.stub, self.key, self.md = stub, key, auth.call_metadata(key)

    def __getattr__(self, name):
        method = getattr(self.stub, name)
        return lambda request, **kw: method(request, metadata=self.md, **kw)


@contextlib.contextmanager
def catalog_server(tmp_path: Path, url: str = ""):
    config = CatalogConfig(database_url=url or f"sqlite:///{tmp_path / 'catalog.db'}", blob_dir=str(tmp_path / "blobs"),
                           admin_key=ADMIN_KEY, address="127.0.0.1:0")
    catalog = open_catalog(config)
    clock = Clock()
    server, port = build_server([catalog_service(catalog)], authenticator=StoreAuthenticator(catalog.store, ttl_s=60, now=clock))
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    stub = catalog_pb2_grpc.CatalogServiceStub(ch)
    admin = Caller(stub, ADMIN_KEY)
    for tenant in ("acme", "globex"):
        admin.CreateTenant(pb.CreateTenantRequest(name=tenant))
    admin.RegisterBaseModel(pb.RegisterBaseModelRequest(
        name="tiny", architecture="llama", config_json="{}", weights_sha256="ab" * 32, num_layers=TINY_LAYERS,
        module_shapes={k: pb.ModuleShape(in_features=i, out_features=o) for k, (i, o) in TINY_SHAPES.items()},
    ))

    def key(name: str, *scope_names: str, tenant: str = "acme", by: Caller = admin, **fields) -> Caller:
        created = by.CreateApiKey(pb.CreateApiKeyRequest(tenant=tenant, name=name, scopes=scope_names, **fields))
        return Caller(stub, created.key)

    try:
        yield {"admin": admin, "key": key, "stub": stub, "clock": clock, "address": f"127.0.0.1:{port}", "catalog": catalog}
    finally:
        ch.close()
        server.stop(None)
        catalog.store.close()


@pytest.fixture
def keys(tmp_path):
    with catalog_server(tmp_path) as served:
        yield served


def refused(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# --- the table -----------------------------------------------------------------------------------------------


def test_every_public_rpc_needs_a_listed_scope():
    methods = {f"/{service.full_name}/{method.name}" for service in PUBLIC for method in service.methods}
    assert methods - scopes.REQUIRED.keys() == set(), "a public RPC with no entry in mint.scopes.REQUIRED"
    assert scopes.REQUIRED.keys() - methods == set(), "an entry in mint.scopes.REQUIRED for an RPC that no longer exists"
    assert {s.full_name for s in PUBLIC} == set(scopes.PUBLIC_SERVICES)
    assert [m for m, needed in scopes.REQUIRED.items() if not needed] == ["/mint.v1.CatalogService/WhoAmI"]


def _answer_everything(service) -> Service:
    """A service answering every method of `service` with an empty response, bytes in and out."""
    handlers = {}
    for method in service.methods:
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(lambda requests, context: iter([b""]))
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(lambda requests, context: b"")
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(lambda request, context: iter([b""]))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    handler = grpc.method_handlers_generic_handler(service.full_name, handlers)
    return Service(service, handler, lambda h, server: server.add_generic_rpc_handlers((h,)))


def _call(ch: grpc.Channel, service, method, md) -> grpc.StatusCode:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            list(ch.stream_stream(path)(iter([b""]), metadata=md, timeout=30))
        elif method.client_streaming:
            ch.stream_unary(path)(iter([b""]), metadata=md, timeout=30)
        elif method.server_streaming:
            list(ch.unary_stream(path)(b"", metadata=md, timeout=30))
        else:
            ch.unary_unary(path)(b"", metadata=md, timeout=30)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_each_scope_opens_exactly_its_rpcs(keys):
    """Every public RPC of every service, called by a key holding one scope, through the server interceptor
    and real keys: allowed exactly when the table lists that scope."""
    server, port = build_server([_answer_everything(s) for s in PUBLIC], authenticator=StoreAuthenticator(keys["catalog"].store))
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    try:
        for scope in Scope:
            md = keys["key"](f"only-{scope.value}", scope.value).md
            for service in PUBLIC:
                for method in service.methods:
                    needed = scopes.REQUIRED[f"/{service.full_name}/{method.name}"]
                    want = grpc.StatusCode.OK if not needed or scope in needed else grpc.StatusCode.PERMISSION_DENIED
                    assert _call(ch, service, method, md) == want, (scope, service.name, method.name)
    finally:
        ch.close()
        server.stop(None)


def test_a_missing_scope_names_the_scope_and_the_key(keys):
    reader = keys["key"]("dashboard", "read")
    keys["admin"].CreatePolicy(pb.CreatePolicyRequest(name="acme/bot", base_model="tiny"))
    assert reader.GetPolicy(pb.GetPolicyRequest(name="bot")).full_name == "acme/bot"
    err = refused(lambda: reader.SetAlias(pb.SetAliasRequest(policy="bot", alias="prod", revision_number=1)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'publish' scope" in err.details() and "'dashboard'" in err.details(), err.details()
    sampler = keys["key"]("sampler", "sample")
    assert refused(lambda: sampler.GetPolicy(pb.GetPolicyRequest(name="bot"))).code() == grpc.StatusCode.PERMISSION_DENIED
    # Resolve is open to sample keys: the gateway resolves a sample's model with the caller's key.
    assert refused(lambda: sampler.Resolve(pb.ResolveRequest(ref="bot"))).code() == grpc.StatusCode.NOT_FOUND  # no revision yet


def test_roles_give_their_scopes_by_default(keys):
    admin = keys["admin"]
    defaults = {}
    for role in (pb.ROLE_MEMBER, pb.ROLE_SERVICE, pb.ROLE_ADMIN):
        created = admin.CreateApiKey(pb.CreateApiKeyRequest(tenant="acme", name=f"role-{role}", role=role))
        defaults[role] = list(created.info.scopes)
        assert list(Caller(keys["stub"], created.key).WhoAmI(pb.WhoAmIRequest()).scopes) == defaults[role]
    assert defaults == {
        pb.ROLE_MEMBER: ["read", "sample", "train", "publish"],
        pb.ROLE_SERVICE: ["read", "sample", "train", "publish"],
        pb.ROLE_ADMIN: ["read", "sample", "train", "publish", "admin"],
    }


# --- expiry --------------------------------------------------------------------------------------------------


def test_an_expired_key_is_refused_saying_when(keys):
    caller = keys["key"]("ci-job", "read", ttl_s=60)
    who = caller.WhoAmI(pb.WhoAmIRequest())
    expires = who.expires_at.ToDatetime(tzinfo=dt.UTC)
    assert dt.timedelta(seconds=55) < expires - auth.utcnow() <= dt.timedelta(seconds=60)
    keys["clock"].offset = dt.timedelta(seconds=61)  # the cached principal is refused too
    err = refused(lambda: caller.WhoAmI(pb.WhoAmIRequest()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired at" in err.details() and expires.isoformat(timespec="seconds") in err.details() and "'ci-job'" in err.details()


def test_expiry_by_timestamp_and_its_bad_values(keys):
    admin = keys["admin"]
    at = timestamp_pb2.Timestamp()
    at.FromDatetime(auth.utcnow() + dt.timedelta(hours=1))
    created = admin.CreateApiKey(pb.CreateApiKeyRequest(tenant="acme", name="hourly", expires_at=at))
    assert created.info.expires_at.seconds == at.seconds
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(auth.utcnow() - dt.timedelta(seconds=1))
    bad = [
        pb.CreateApiKeyRequest(tenant="acme", name="past", expires_at=past),
        pb.CreateApiKeyRequest(tenant="acme", name="both", expires_at=at, ttl_s=60),
        pb.CreateApiKeyRequest(tenant="acme", name="negative", ttl_s=-5),
        pb.CreateApiKeyRequest(tenant="acme", name="forever", ttl_s=2**62),
    ]
    for request in bad:
        assert refused(lambda r=request: admin.CreateApiKey(r)).code() == grpc.StatusCode.INVALID_ARGUMENT, request.name


# --- revocation ----------------------------------------------------------------------------------------------


def test_the_catalog_refuses_a_revoked_key_at_once(keys):
    caller = keys["key"]("laptop", "read")
    assert caller.WhoAmI(pb.WhoAmIRequest()).key_name == "laptop"  # now in the catalog's key cache (60 s)
    revoked = keys["admin"].RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name="laptop"))
    assert revoked.HasField("revoked_at") and revoked.name == "laptop"
    err = refused(lambda: caller.WhoAmI(pb.WhoAmIRequest()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked at" in err.details()
    again = keys["admin"].RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name="laptop"))
    assert again.revoked_at == revoked.revoked_at  # revoking twice changes nothing


def test_a_remote_authenticator_stops_accepting_a_revoked_key_within_its_ttl(keys):
    """What a gateway, engine or trainer does: ask the catalog, cache for ttl_s."""
    caller = keys["key"]("remote", "sample")
    remote = RemoteAuthenticator(channel(keys["address"]), ttl_s=1.0)
    assert remote.authenticate(caller.key).scopes == frozenset({Scope.SAMPLE})
    keys["admin"].RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name="remote"))
    revoked_at = time.monotonic()
    assert remote.authenticate(caller.key).key_name == "remote"  # still cached
    while True:
        try:
            remote.authenticate(caller.key)
        except MintError as err:
            assert "revoked" in err.message
            break
        assert time.monotonic() - revoked_at < 1.0 + 0.5, "the revoked key still works past the cache's TTL"
        time.sleep(0.05)


def test_who_revokes_and_lists_keys(keys):
    key = keys["key"]
    tenant_admin = key("acme-admin", "read", "admin")
    key("victim", "read")
    key("other", "read", tenant="globex")
    assert refused(lambda: key("plain", "read").RevokeApiKey(pb.RevokeApiKeyRequest(name="victim"))).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: tenant_admin.RevokeApiKey(pb.RevokeApiKeyRequest(tenant="globex", name="other"))).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: tenant_admin.ListApiKeys(pb.ListApiKeysRequest(tenant="globex"))).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: tenant_admin.RevokeApiKey(pb.RevokeApiKeyRequest(name="nobody"))).code() == grpc.StatusCode.NOT_FOUND
    assert tenant_admin.RevokeApiKey(pb.RevokeApiKeyRequest(name="victim")).HasField("revoked_at")
    assert keys["admin"].RevokeApiKey(pb.RevokeApiKeyRequest(tenant="globex", name="other")).HasField("revoked_at")  # global admin
    listed = {k.name: k for k in tenant_admin.ListApiKeys(pb.ListApiKeysRequest()).keys}
    assert sorted(listed) == ["acme-admin", "plain", "victim"]
    assert listed["victim"].HasField("revoked_at") and not listed["plain"].HasField("revoked_at")
    assert list(listed["acme-admin"].scopes) == ["read", "admin"] and listed["plain"].HasField("created_at")


def test_listing_pages_and_never_shows_a_secret(keys):
    secrets = [keys["key"](f"k{i:02d}", "read", ttl_s=3600).key for i in range(7)]
    admin = keys["admin"]
    names, token, pages = [], "", 0
    while True:
        page = admin.ListApiKeys(pb.ListApiKeysRequest(tenant="acme", page={"page_size": 3, "page_token": token}))
        pages += 1
        for info in page.keys:
            raw = info.SerializeToString()
            assert all(s.encode() not in raw and auth.parse_key(s)[1].encode() not in raw for s in secrets)
            names.append(info.name)
            assert info.HasField("expires_at")
        token = page.next_page_token
        if not token:
            break
    assert names == [f"k{i:02d}" for i in range(7)] and pages == 3
    assert {f.name for f in pb.ApiKey.DESCRIPTOR.fields}.isdisjoint({"key", "secret", "secret_hash"})
    hashes = [auth.hash_secret(auth.parse_key(s)[1]) for s in secrets]
    raw = admin.ListApiKeys(pb.ListApiKeysRequest(tenant="acme")).SerializeToString()
    assert not [h for h in hashes if h.encode() in raw]


# --- no escalation -------------------------------------------------------------------------------------------


def test_a_key_never_grants_more_than_it_holds(keys):
    key = keys["key"]
    lead = key("lead", "read", "sample", "admin", ttl_s=3600)
    denied = [
        pb.CreateApiKeyRequest(name="more", scopes=["publish"]),
        pb.CreateApiKeyRequest(name="svc", role=pb.ROLE_SERVICE, scopes=["read"]),
        pb.CreateApiKeyRequest(name="boss", role=pb.ROLE_ADMIN, scopes=["read"]),
        pb.CreateApiKeyRequest(tenant="globex", name="elsewhere", scopes=["read"]),
        pb.CreateApiKeyRequest(name="longer", scopes=["read"], ttl_s=7200),
    ]
    for request in denied:
        err = refused(lambda r=request: lead.CreateApiKey(r))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (request.name, err.details())
    assert "does not hold publish" in refused(lambda: lead.CreateApiKey(denied[0])).details()
    child = lead.CreateApiKey(pb.CreateApiKeyRequest(name="child"))  # the member role's scopes the lead holds, its expiry
    assert list(child.info.scopes) == ["read", "sample"] and child.info.tenant == "acme"
    assert child.info.expires_at == lead.WhoAmI(pb.WhoAmIRequest()).expires_at
    grandchild = lead.CreateApiKey(pb.CreateApiKeyRequest(name="deputy", scopes=["read", "admin"], ttl_s=60))
    assert list(grandchild.info.scopes) == ["read", "admin"]
    # A key without the admin scope creates no keys at all.
    plain = Caller(keys["stub"], child.key)
    assert refused(lambda: plain.CreateApiKey(pb.CreateApiKeyRequest(name="x", scopes=["read"]))).code() == grpc.StatusCode.PERMISSION_DENIED
    # Tenants, base models and the bulk path stay with global admin keys.
    assert refused(lambda: lead.CreateTenant(pb.CreateTenantRequest(name="mine"))).code() == grpc.StatusCode.PERMISSION_DENIED


# --- audit ---------------------------------------------------------------------------------------------------


def test_every_change_is_audited_with_the_key_name(keys):
    key, admin = keys["key"], keys["admin"]
    publisher = key("release-bot", "read", "publish")
    publisher.CreatePolicy(pb.CreatePolicyRequest(name="bot", base_model="tiny"))
    admin.RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name="release-bot"))
    events = admin.ListAuditEvents(pb.ListAuditEventsRequest()).events  # the admin acts for its own tenant: admin
    acme = list(Caller(keys["stub"], key("auditor", "read").key).ListAuditEvents(pb.ListAuditEventsRequest()).events)
    by_action = {(e.action, json.loads(e.details_json).get("name", "")): e for e in acme}
    created = by_action[("create_key", "release-bot")]
    bot_id = json.loads(created.details_json)["key_id"]
    assert created.key_name == "bootstrap-admin" and json.loads(created.details_json)["scopes"] == ["read", "publish"]
    policy = next(e for e in acme if e.action == "create_policy")
    assert policy.actor == f"key:{bot_id}" and policy.key_name == "release-bot"
    revoked = by_action[("revoke_key", "release-bot")]
    assert revoked.key_name == "bootstrap-admin" and json.loads(revoked.details_json)["key_id"] == bot_id
    assert all(e.key_name for e in acme) and all(e.key_name == "bootstrap-admin" for e in events if e.actor.startswith("key:"))


# --- bad input -----------------------------------------------------------------------------------------------


def test_bad_key_requests(keys):
    admin = keys["admin"]
    keys["key"]("taken", "read")
    admin.RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name="taken"))
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: [
            pb.CreateApiKeyRequest(tenant="acme", name="x", scopes=["write"]),
            pb.CreateApiKeyRequest(tenant="acme", name="x", scopes=["read", ""]),
            pb.CreateApiKeyRequest(tenant="acme", name=""),
            pb.CreateApiKeyRequest(tenant="acme", name="n" * 129),
            pb.CreateApiKeyRequest(tenant="acme", name="x", role=7),
        ],
        grpc.StatusCode.ALREADY_EXISTS: [pb.CreateApiKeyRequest(tenant="acme", name="taken", scopes=["read"])],  # revoked names stay taken
        grpc.StatusCode.NOT_FOUND: [pb.CreateApiKeyRequest(tenant="nobody", name="x")],
    }
    for code, requests in cases.items():
        for request in requests:
            err = refused(lambda r=request: admin.CreateApiKey(r))
            assert err.code() == code, (request, err.details())
    assert "unknown scope 'write'" in refused(lambda: admin.CreateApiKey(cases[grpc.StatusCode.INVALID_ARGUMENT][0])).details()
    assert refused(lambda: admin.ListApiKeys(pb.ListApiKeysRequest(tenant="acme", page={"page_token": "forged"}))).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: admin.RevokeApiKey(pb.RevokeApiKeyRequest(tenant="acme", name=""))).code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the CLI -------------------------------------------------------------------------------------------------


def test_mint_key_create_list_revoke(keys, capsys):
    common = ["--address", keys["address"], "--api-key", ADMIN_KEY, "--tenant", "acme"]
    assert mint_cli(["key", "create", "eval-runner", "--scopes", "read,sample", "--expires-in", "600", *common]) == 0
    out = capsys.readouterr().out
    new_key = out.strip().splitlines()[-1]
    assert "scopes read,sample" in out and Caller(keys["stub"], new_key).WhoAmI(pb.WhoAmIRequest()).key_name == "eval-runner"
    assert mint_cli(["key", "list", *common]) == 0
    listed = capsys.readouterr().out
    assert "eval-runner" in listed and auth.parse_key(new_key)[1] not in listed
    assert mint_cli(["key", "revoke", "eval-runner", *common]) == 0
    assert "revoked key acme/eval-runner" in capsys.readouterr().out
    assert refused(lambda: Caller(keys["stub"], new_key).WhoAmI(pb.WhoAmIRequest())).code() == grpc.StatusCode.UNAUTHENTICATED
    assert mint_cli(["key", "create", "bad", "--scopes", "write", *common]) == 1
    assert "unknown scope" in capsys.readouterr().err


# --- the migration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["postgres", "sqlite"])
def test_migration_gives_existing_keys_their_roles_scopes_and_unique_names(which, request, tmp_path):
    url = request.getfixturevalue("pg_url") if which == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (name, created_at) VALUES ('acme', CURRENT_TIMESTAMP)"))
            for key_id, name, role in [("a" * 12, "ci", "member"), ("b" * 12, "ci", "member"), ("c" * 12, "root", "admin"), ("d" * 12, "svc", "service")]:
                conn.execute(text("INSERT INTO api_keys (key_id, tenant_id, name, role, secret_hash, created_at) "
                                  "VALUES (:k, 1, :n, :r, :h, CURRENT_TIMESTAMP)"), {"k": key_id, "n": name, "r": role, "h": "0" * 64})
        upgrade(url)
        with engine.connect() as conn:
            rows = {r.key_id: (r.name, r.scopes, r.expires_at) for r in conn.execute(text("SELECT key_id, name, scopes, expires_at FROM api_keys"))}
    finally:
        engine.dispose()
    assert rows == {
        "a" * 12: ("ci", "read,sample,train,publish", None),
        "b" * 12: (f"ci~{'b' * 12}", "read,sample,train,publish", None),
        "c" * 12: ("root", "read,sample,train,publish,admin", None),
        "d" * 12: ("svc", "read,sample,train,publish", None),
    }
