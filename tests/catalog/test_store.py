"""The catalog store's contract, run on Postgres and on SQLite."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import text

from mint.adapters import AdapterConfig
from mint.auth import Role
from mint.errors import Code, MintError
from mint.names import RevisionRef
from services.catalog.store import CatalogStore, ImportRecord, NewRevision
from services.catalog.store.blob_index import insert_blob
from tests.factories import TINY_LAYERS, TINY_SHAPES

ACTOR = "key:test00000000"
CONFIG = AdapterConfig(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj"))


@pytest.fixture
def store(db_url):
    store = CatalogStore.open(db_url)
    store.tenants.create_tenant("acme", actor=ACTOR)
    store.tenants.create_tenant("globex", actor=ACTOR)
    store.base_models.register(
        name="tiny", architecture="llama", config={}, weights_sha256="0" * 64,
        module_shapes=TINY_SHAPES, num_layers=TINY_LAYERS, actor=ACTOR,
    )
    yield store
    store.close()


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def publish(store: CatalogStore, policy: str = "bot", i: int = 0, **kw):
    return store.revisions.publish(NewRevision(tenant="acme", policy=policy, config=CONFIG, sha256=sha(i), size_bytes=100 + i, actor=ACTOR, **kw))


def ref(text_: str) -> RevisionRef:
    return RevisionRef.parse(text_)


def error_code(fn, *args, **kwargs) -> Code:
    with pytest.raises(MintError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_tenants_and_keys(store):
    assert error_code(store.tenants.create_tenant, "acme", actor=ACTOR) is Code.ALREADY_EXISTS
    assert error_code(store.tenants.create_tenant, "Bad Name", actor=ACTOR) is Code.INVALID_ARGUMENT
    new, key = store.tenants.create_key("acme", "ci", Role.MEMBER, actor=ACTOR)
    found = store.tenants.lookup_key(new.key_id)
    assert found is not None and found.tenant == "acme" and found.role is Role.MEMBER
    assert found.secret_hash == new.secret_hash != new.key
    assert store.tenants.lookup_key("000000000000") is None
    assert error_code(store.tenants.create_key, "nobody", "x", Role.MEMBER, actor=ACTOR) is Code.NOT_FOUND


def test_base_model_registration_is_idempotent_but_not_overwritable(store):
    again = store.base_models.register(
        name="tiny", architecture="llama", config={}, weights_sha256="0" * 64, module_shapes=TINY_SHAPES, num_layers=TINY_LAYERS, actor=ACTOR
    )
    assert again.name == "tiny" and again.module_shapes == TINY_SHAPES
    assert error_code(
        store.base_models.register, name="tiny", architecture="llama", config={}, weights_sha256="1" * 64,
        module_shapes=TINY_SHAPES, num_layers=TINY_LAYERS, actor=ACTOR,
    ) is Code.ALREADY_EXISTS
    assert error_code(
        store.base_models.register, name="x", architecture="llama", config={}, weights_sha256="1" * 64,
        module_shapes={"bogus_proj": (1, 1)}, num_layers=1, actor=ACTOR,
    ) is Code.INVALID_ARGUMENT


def test_policies_keyset_pages_cover_everything_once(store):
    for i in range(23):
        store.policies.create("acme", f"p{i:02d}", base_model="tiny", actor=ACTOR)
    store.policies.create("globex", "other", base_model="tiny", actor=ACTOR)
    seen, token = [], ""
    while True:
        page = store.policies.list("acme", page_token=token, limit=10)
        seen += [p.name for p in page.items]
        if not page.next_token:
            break
        token = page.next_token
    assert seen == sorted(f"p{i:02d}" for i in range(23))
    assert [p.name for p in store.policies.list("acme", name_prefix="p1").items] == [f"p1{i}" for i in range(10)]
    assert error_code(store.policies.create, "acme", "p00", base_model="tiny", actor=ACTOR) is Code.ALREADY_EXISTS
    assert error_code(store.policies.create, "acme", "new", base_model="missing", actor=ACTOR) is Code.NOT_FOUND
    assert error_code(store.policies.list, "acme", page_token="not-a-token") is Code.INVALID_ARGUMENT


def test_publish_numbers_densely_and_moves_latest(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    revs = [publish(store, i=i, parent_number=i or None) for i in range(3)]
    assert [r.number for r in revs] == [1, 2, 3]
    assert revs[2].parent_number == 2 and revs[2].target_modules == ("q_proj", "v_proj")
    assert store.revisions.resolve(ref("acme/bot")).number == 3
    assert store.revisions.resolve(ref("acme/bot@latest")).number == 3
    assert store.revisions.resolve(ref("acme/bot@1")).sha256 == sha(0)
    assert store.policies.get("acme", "bot").head_number == 3
    assert error_code(publish, store, i=9, parent_number=7) is Code.INVALID_ARGUMENT
    assert store.policies.get("acme", "bot").head_number == 3  # the failed publish gave its number back
    assert error_code(publish, store, policy="ghost") is Code.NOT_FOUND


def test_resolve_explains_what_is_missing(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    with pytest.raises(MintError, match="no revisions yet"):
        store.revisions.resolve(ref("acme/bot"))
    publish(store)
    with pytest.raises(MintError, match=r"no revision 5 \(revisions are 1..1\)"):
        store.revisions.resolve(ref("acme/bot@5"))
    with pytest.raises(MintError, match="no alias 'prod'"):
        store.revisions.resolve(ref("acme/bot@prod"))
    with pytest.raises(MintError, match="policy acme/nope not found"):
        store.revisions.resolve(ref("acme/nope@1"))


def test_aliases_set_rollback_and_history(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    for i in range(3):
        publish(store, i=i)
    store.aliases.set_alias("acme", "bot", "prod", 1, actor=ACTOR)
    store.aliases.set_alias("acme", "bot", "prod", 3, actor=ACTOR, reason="ship")
    assert store.revisions.resolve(ref("acme/bot@prod")).number == 3
    rolled = store.aliases.rollback("acme", "bot", "prod", actor=ACTOR, reason="regression")
    assert rolled.revision_number == 1
    assert store.aliases.rollback("acme", "bot", "prod", 2, actor=ACTOR).revision_number == 2
    moves = store.aliases.history("acme", "bot", "prod").items
    assert [(m.from_number, m.to_number, m.action) for m in moves] == [(1, 2, "rollback"), (3, 1, "rollback"), (1, 3, "set"), (None, 1, "set")]
    assert {a.name: a.revision_number for a in store.aliases.list("acme", "bot")} == {"latest": 3, "prod": 2}
    assert error_code(store.aliases.set_alias, "acme", "bot", "latest", 1, actor=ACTOR) is Code.INVALID_ARGUMENT
    assert error_code(store.aliases.set_alias, "acme", "bot", "7up", 1, actor=ACTOR) is Code.INVALID_ARGUMENT
    assert error_code(store.aliases.set_alias, "acme", "bot", "prod", 9, actor=ACTOR) is Code.NOT_FOUND
    assert error_code(store.aliases.rollback, "acme", "bot", "staging", actor=ACTOR) is Code.NOT_FOUND


def test_retract_makes_a_revision_unservable_everywhere(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    for i in range(3):
        publish(store, i=i)
    store.aliases.set_alias("acme", "bot", "prod", 3, actor=ACTOR)
    retracted = store.revisions.retract("acme", "bot", 3, reason="leaks secrets", actor=ACTOR)
    assert retracted.status == "retracted" and retracted.retracted_reason == "leaks secrets"
    assert store.revisions.resolve(ref("acme/bot")).number == 2  # latest fell back
    for name in ("acme/bot@3", "acme/bot@prod"):
        with pytest.raises(MintError, match="retracted") as info:
            store.revisions.resolve(ref(name))
        assert info.value.code is Code.FAILED_PRECONDITION
    assert store.revisions.find(ref("acme/bot@3")).status == "retracted"
    assert error_code(store.aliases.set_alias, "acme", "bot", "canary", 3, actor=ACTOR) is Code.FAILED_PRECONDITION
    for number in (1, 2):
        store.revisions.retract("acme", "bot", number, reason="bad", actor=ACTOR)
    assert error_code(store.revisions.resolve, ref("acme/bot")) is Code.FAILED_PRECONDITION
    assert publish(store, i=7).number == 4  # numbers never reuse a retracted one
    assert error_code(store.revisions.retract, "acme", "bot", 4, reason="", actor=ACTOR) is Code.INVALID_ARGUMENT


def test_metrics_merge_into_the_revision(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    publish(store, metrics={"loss": 1.5})
    updated = store.revisions.record_metrics(ref("acme/bot@1"), {"accuracy": 0.75}, actor=ACTOR)
    assert updated.metrics == {"loss": 1.5, "accuracy": 0.75}


def test_revision_listings_are_keyset_paginated(store):
    for name in ("a", "b"):
        store.policies.create("acme", name, base_model="tiny", actor=ACTOR)
    for i in range(7):
        publish(store, policy="a", i=i)
        publish(store, policy="b", i=100 + i)
    numbers, token = [], ""
    while True:
        page = store.revisions.list("acme", "a", newest_first=True, page_token=token, limit=3)
        numbers += [r.number for r in page.items]
        token = page.next_token
        if not token:
            break
    assert numbers == [7, 6, 5, 4, 3, 2, 1]
    everything, token = [], ""
    while True:
        page = store.revisions.list("acme", None, page_token=token, limit=4)
        everything += [r.address for r in page.items]
        token = page.next_token
        if not token:
            break
    assert len(everything) == 14 == len(set(everything))
    assert store.revisions.list("globex", None).items == []
    assert error_code(store.revisions.list, "acme", "ghost") is Code.NOT_FOUND


def test_audit_log_records_every_change_and_is_append_only(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    publish(store)
    store.aliases.set_alias("acme", "bot", "prod", 1, actor=ACTOR)
    events = store.audit.list_events("acme").items
    assert [e.action for e in events][:3] == ["set_alias", "publish", "create_policy"]
    assert events[1].policy == "acme/bot" and events[1].revision_number == 1
    assert [e.action for e in store.audit.list_events("acme", action="publish").items] == ["publish"]
    statements = ["UPDATE audit_events SET action = 'x'", "DELETE FROM alias_moves", "DELETE FROM audit_events", "UPDATE alias_moves SET reason = 'x'"]
    if store.db.is_postgres:  # SQLite has no TRUNCATE
        statements += ["TRUNCATE audit_events", "TRUNCATE alias_moves", "TRUNCATE audit_events, alias_moves", "TRUNCATE policies CASCADE"]
    for statement in statements:
        with pytest.raises(MintError, match="append-only") as info, store.db.write() as conn:
            conn.execute(text(statement))
        assert info.value.code is Code.FAILED_PRECONDITION, statement
    assert len(store.audit.list_events("acme").items) == len(events)
    assert [m.to_number for m in store.aliases.history("acme", "bot", "prod").items] == [1]


def test_audit_views_answer_plain_sql(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    publish(store, i=0)
    publish(store, i=1, parent_number=1)
    store.aliases.set_alias("acme", "bot", "prod", 2, actor=ACTOR)
    with store.db.read() as conn:
        heads = conn.execute(text("SELECT policy, latest_number, head_number FROM policy_heads")).all()
        assert [tuple(r) for r in heads] == [("acme/bot", 2, 2)]
        prod = conn.execute(text("SELECT to_number FROM alias_history WHERE policy = 'acme/bot' AND alias = 'prod' AND until IS NULL")).scalar()
        assert prod == 2
        lineage = conn.execute(text("SELECT number, parent_number FROM revision_lineage ORDER BY number")).all()
        assert [tuple(r) for r in lineage] == [(1, None), (2, 1)]
        actions = conn.execute(text("SELECT action FROM audit_log WHERE policy = 'acme/bot' ORDER BY id")).scalars().all()
        assert actions == ["create_policy", "publish", "publish", "set_alias"]


IMPORTED = AdapterConfig(r=4, lora_alpha=8, target_modules=("q_proj",))


def _blobs(store, n: int, config: AdapterConfig = IMPORTED, first: int = 1000) -> list[str]:
    shas = [sha(first + i) for i in range(n)]
    with store.db.write() as conn:
        for s in shas:
            insert_blob(conn, store.db.dialect, s, 4096, config)
    return shas


def test_bulk_import_creates_policies_and_continues_heads(store):
    shas = _blobs(store, 3)
    (wider,) = _blobs(store, 1, AdapterConfig(r=8, lora_alpha=16, target_modules=("q_proj", "k_proj"), use_rslora=True), first=2000)
    store.policies.create("acme", "existing", base_model="tiny", actor=ACTOR)
    publish(store, policy="existing", i=0)
    records = [
        ImportRecord(policy=f"acme/p{p}", number=n, sha256=shas[n % 3], rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny")
        for p in range(5) for n in range(1, 4)
    ] + [ImportRecord(policy="acme/existing", number=n, sha256=wider, rank=8, alpha=16, target_modules=("q_proj", "k_proj")) for n in (2, 3)]
    result = store.bulk.import_records([records[:7], records[7:]], actor=ACTOR)
    assert (result.revisions, result.policies_created) == (17, 5)
    assert store.revisions.resolve(ref("acme/p3")).number == 3
    got = store.revisions.resolve(ref("acme/existing"))
    assert (got.number, got.rank, got.size_bytes, got.adapter_config.r) == (3, 8, 4096, 8)
    assert got.target_modules == ("q_proj", "k_proj") and got.use_rslora  # rsLoRA as the blob was validated with
    assert store.policies.get("acme", "p4").head_number == 3
    assert store.audit.list_events("acme", action="bulk_import").items[0].details["revisions"] == 17


@pytest.mark.parametrize(
    "records, code",
    [
        ([("acme/x", 1), ("acme/x", 3)], Code.INVALID_ARGUMENT),  # gap
        ([("acme/x", 1), ("acme/x", 1)], Code.INVALID_ARGUMENT),  # repeat
        ([("acme/x", 2)], Code.INVALID_ARGUMENT),  # does not continue head 0
        ([("nobody/x", 1)], Code.NOT_FOUND),  # unknown tenant
        ([("x", 1)], Code.INVALID_ARGUMENT),  # no tenant
    ],
)
def test_bulk_import_is_all_or_nothing(store, records, code):
    (blob,) = _blobs(store, 1)
    batch = [ImportRecord(policy="acme/fine", number=1, sha256=blob, rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny")]
    batch += [ImportRecord(policy=p, number=n, sha256=blob, rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny") for p, n in records]
    assert error_code(store.bulk.import_records, [batch], actor=ACTOR) is code
    assert error_code(store.policies.get, "acme", "fine") is Code.NOT_FOUND


def test_bulk_import_rejects_unknown_blobs(store):
    (blob,) = _blobs(store, 1)
    fine = ImportRecord(policy="acme/x", number=1, sha256=blob, rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny")
    record = fine._replace(number=2, sha256=sha(5))
    with pytest.raises(MintError, match=r"record 1 \(acme/x@2\): blob .* was not uploaded"):
        store.bulk.import_records([[fine, record]], actor=ACTOR)


def test_publishing_an_idempotency_key_twice_returns_the_first_revision(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    first = publish(store, i=1, idempotency_key="step-10")
    again = publish(store, i=2, idempotency_key="step-10")
    other = publish(store, i=3, idempotency_key="step-20")
    assert (first.number, again.number, again.sha256, other.number) == (1, 1, sha(1), 2)
    assert store.policies.get("acme", "bot").head_number == 2


def test_the_lineage_query_in_docs_audit_md_walks_the_parent_chain(store):
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    publish(store, i=0)
    publish(store, i=1, parent_number=1)
    publish(store, i=2)  # a fresh start: no parent
    publish(store, i=3, parent_number=2)
    query = """
        WITH RECURSIVE chain AS (
            SELECT policy_id, policy, number, parent_number, 0 AS depth
            FROM revision_lineage WHERE policy = 'acme/bot' AND number = 4
          UNION ALL
            SELECT r.policy_id, r.policy, r.number, r.parent_number, c.depth + 1
            FROM revision_lineage r JOIN chain c ON r.policy_id = c.policy_id AND r.number = c.parent_number
        )
        SELECT depth, number FROM chain ORDER BY depth
    """
    with store.db.read() as conn:
        assert [tuple(r) for r in conn.execute(text(query))] == [(0, 4), (1, 2), (2, 1)]


@pytest.fixture
def pg_store(pg_url):
    store = CatalogStore.open(pg_url)
    store.tenants.create_tenant("acme", actor=ACTOR)
    store.base_models.register(
        name="tiny", architecture="llama", config={}, weights_sha256="0" * 64, module_shapes=TINY_SHAPES, num_layers=TINY_LAYERS, actor=ACTOR,
    )
    store.policies.create("acme", "bot", base_model="tiny", actor=ACTOR)
    publish(store, i=0)
    yield store
    store.close()


NUL_WRITES = {
    "policy description": lambda s: s.policies.create("acme", "other", base_model="tiny", description="a\0b", actor=ACTOR),
    "revision source": lambda s: publish(s, i=1, source="trainer\0"),
    "idempotency key": lambda s: publish(s, i=1, idempotency_key="step\0"),
    "metric name (jsonb)": lambda s: publish(s, i=1, metrics={"loss\0": 1.0}),
    "metric name recorded later": lambda s: s.revisions.record_metrics(ref("acme/bot@1"), {"acc\0": 1.0}, actor=ACTOR),
    "alias reason": lambda s: s.aliases.set_alias("acme", "bot", "prod", 1, actor=ACTOR, reason="\0"),
    "retract reason": lambda s: s.revisions.retract("acme", "bot", 1, reason="leak\0", actor=ACTOR),
    "key name": lambda s: s.tenants.create_key("acme", "ci\0", Role.MEMBER, actor=ACTOR),
    "actor": lambda s: s.policies.create("acme", "other", base_model="tiny", actor="key:\0"),
    "bulk source (COPY)": lambda s: s.bulk.import_records(
        [[ImportRecord(policy="acme/bot", number=2, sha256=sha(0), rank=4, alpha=8, target_modules=("q_proj", "v_proj"), source="s\0")]],
        actor=ACTOR,
    ),
    "lookup by a NUL key id": lambda s: s.tenants.lookup_key("00000000000\0"),
}


@pytest.mark.parametrize("case", sorted(NUL_WRITES))
def test_values_postgres_refuses_are_invalid_argument_not_internal(pg_store, case):
    """The servers refuse NUL characters in requests; a path that bypasses them still gets INVALID_ARGUMENT."""
    assert error_code(NUL_WRITES[case], pg_store) is Code.INVALID_ARGUMENT
    assert pg_store.revisions.resolve(ref("acme/bot")).number == 1 and pg_store.policies.get("acme", "bot").head_number == 1


_NOW = dt.datetime.now(dt.UTC)
BAD_RECORDS = {
    "rank unlike the blob's": ({"rank": 8, "alpha": 16}, Code.INVALID_ARGUMENT, "rank 8"),
    "alpha unlike the blob's": ({"alpha": 16}, Code.INVALID_ARGUMENT, "alpha 16"),
    "target_modules unlike the blob's": ({"target_modules": ("q_proj", "v_proj")}, Code.INVALID_ARGUMENT, "v_proj"),
    "absurd alpha": ({"alpha": 1e300}, Code.INVALID_ARGUMENT, "1e+300"),
    "nan alpha": ({"alpha": float("nan")}, Code.INVALID_ARGUMENT, "nan"),
    "rank 0": ({"rank": 0}, Code.INVALID_ARGUMENT, "rank"),
    "unknown module": ({"target_modules": ("lm_head",)}, Code.INVALID_ARGUMENT, "lm_head"),
    "number past int32": ({"number": 2**31}, Code.INVALID_ARGUMENT, "number"),
    "malformed sha256": ({"sha256": "ab"}, Code.INVALID_ARGUMENT, "sha256"),
    "blob not uploaded": ({"sha256": "f" * 64}, Code.NOT_FOUND, "was not uploaded"),
    "over-long source": ({"source": "s" * 257}, Code.INVALID_ARGUMENT, "source"),
    "created_at without a zone": ({"created_at": dt.datetime(2024, 1, 1)}, Code.INVALID_ARGUMENT, "created_at"),
    "created_at before 1970": ({"created_at": dt.datetime(1969, 12, 31, tzinfo=dt.UTC)}, Code.INVALID_ARGUMENT, "created_at"),
    "created_at in the year 1": ({"created_at": dt.datetime.min.replace(tzinfo=dt.UTC)}, Code.INVALID_ARGUMENT, "created_at"),
    "created_at in the year 9999": ({"created_at": dt.datetime.max.replace(tzinfo=dt.UTC)}, Code.INVALID_ARGUMENT, "created_at"),
    "created_at tomorrow": ({"created_at": _NOW + dt.timedelta(days=1)}, Code.INVALID_ARGUMENT, "created_at"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bulk_records_are_checked_against_themselves_and_their_blobs_and_named_by_index(store, case):
    changes, code, named = BAD_RECORDS[case]
    (blob,) = _blobs(store, 1)
    good = ImportRecord(policy="acme/fine", number=1, sha256=blob, rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny")
    records = [good, good._replace(number=2, created_at=_NOW - dt.timedelta(days=30)), good._replace(**{"number": 3, **changes})]
    with pytest.raises(MintError) as info:
        store.bulk.import_records([records[:1], records[1:]], actor=ACTOR)
    assert info.value.code is code, info.value
    assert info.value.message.startswith("record 2") and named in info.value.message, info.value.message
    assert error_code(store.policies.get, "acme", "fine") is Code.NOT_FOUND
    store.bulk.import_records([records[:2]], actor=ACTOR)  # the good ones alone land, created_at kept
    assert store.revisions.find(ref("acme/fine@2")).created_at.replace(tzinfo=dt.UTC) == records[1].created_at


def test_a_blob_indexed_without_its_config_must_be_uploaded_again(store):
    (blob,) = _blobs(store, 1)
    with store.db.write() as conn:
        conn.execute(text("UPDATE blobs SET rank = NULL, alpha = NULL, use_rslora = NULL, target_modules = NULL"))
    record = ImportRecord(policy="acme/x", number=1, sha256=blob, rank=4, alpha=8, target_modules=("q_proj",), base_model="tiny")
    with pytest.raises(MintError, match="upload it again") as info:
        store.bulk.import_records([[record]], actor=ACTOR)
    assert info.value.code is Code.FAILED_PRECONDITION
    store.blob_index.record(blob, 4096, IMPORTED, store_bytes=lambda: None)
    assert store.bulk.import_records([[record]], actor=ACTOR).revisions == 1


def test_page_tokens_are_checked_against_their_listings_key_schema(store):
    """A token sealed with this catalog's key but holding another schema's key (as a token from another
    version of a listing would) is refused like any other."""
    from services.catalog.store.pages import TENANT_REVISIONS, Field, Listing

    tokens = store.revisions.tokens
    scope = ("acme", "", False)
    for fields, key in [((Field.NAME,), ("x",)), ((Field.ROW_ID, Field.ROW_ID), (1, 2))]:
        forged = tokens.encode(Listing(TENANT_REVISIONS.name, fields), scope, key)
        with pytest.raises(MintError, match="not one this server issued"):
            store.revisions.list("acme", None, page_token=forged)
    assert tokens.decode(tokens.encode(TENANT_REVISIONS, scope, (2**63 - 1,)), TENANT_REVISIONS, scope) == (2**63 - 1,)
