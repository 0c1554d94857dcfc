"""Adapter revisions: publish (dense numbers under a per-policy lock), resolve, list, retract, metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from mint.adapters import AdapterConfig
from mint.errors import invalid, not_found, precondition
from mint.names import LATEST, RevisionRef
from services.catalog.store.aliases import lock_policy, move_alias
from services.catalog.store.audit import record_event
from services.catalog.store.blob_index import insert_blob
from services.catalog.store.db import Database
from services.catalog.store.entities import Page, Revision, Usage, utcnow
from services.catalog.store.limits import enforce
from services.catalog.store.pages import POLICY_REVISIONS, TENANT_REVISIONS, PageTokens, page_size
from services.catalog.store.tables import aliases, base_models, policies, revisions, tenants

FORMAT = "peft-lora"

_COLUMNS = (
    revisions,
    tenants.c.name.label("tenant_name"),
    policies.c.name.label("policy_name"),
    base_models.c.name.label("base_name"),
)
_FROM = (
    revisions.join(policies, policies.c.id == revisions.c.policy_id)
    .join(tenants, tenants.c.id == policies.c.tenant_id)
    .join(base_models, base_models.c.id == policies.c.base_model_id)
)
_BY_NUMBER = (
    select(*_COLUMNS)
    .select_from(_FROM)
    .where(tenants.c.name == bindparam("tenant"), policies.c.name == bindparam("policy"), revisions.c.number == bindparam("number"))
)
_BY_ALIAS = (
    select(*_COLUMNS)
    .select_from(_FROM.join(aliases, and_(aliases.c.policy_id == policies.c.id, aliases.c.revision_number == revisions.c.number)))
    .where(tenants.c.name == bindparam("tenant"), policies.c.name == bindparam("policy"), aliases.c.name == bindparam("alias"))
)


def _entity(row) -> Revision:
    return Revision(
        id=row.id,
        tenant=row.tenant_name,
        policy=row.policy_name,
        number=row.number,
        parent_number=row.parent_number,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        rank=row.rank,
        alpha=row.alpha,
        use_rslora=row.use_rslora,
        target_modules=tuple(row.target_modules.split(",")),
        format=row.format,
        status=row.status,
        source=row.source,
        metrics=dict(row.metrics),
        base_model=row.base_name,
        created_by=row.created_by,
        created_at=row.created_at,
        retracted_reason=row.retracted_reason,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class NewRevision:
    tenant: str
    policy: str
    config: AdapterConfig
    sha256: str
    size_bytes: int
    actor: str
    parent_number: int | None = None
    source: str = "upload"
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None


MAX_SOURCE_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 128


def check_revision_fields(*, source: str, idempotency_key: str | None = None) -> None:
    """The checks on a new revision's own text fields, for every path that makes revisions: a publish runs
    them before it receives a byte, the bulk path on each record."""
    if len(source) > MAX_SOURCE_CHARS:
        raise invalid(f"source is {len(source)} characters; the limit is {MAX_SOURCE_CHARS}")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise invalid(f"idempotency_key is {len(idempotency_key)} characters; it must have 1-{MAX_IDEMPOTENCY_KEY_CHARS}")


class RevisionStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens

    def publish(self, new: NewRevision, *, store_blob: Callable[[], None] | None = None) -> Revision:
        """Allocate the policy's next number and record the revision, its blob, `latest` and the audit
        event in one transaction. The policy row lock serializes concurrent publishers: no gaps, no
        duplicates, and a rolled-back publish gives its number back.

        `store_blob` (which puts the bytes in the blob store) is called inside the transaction once every
        check has passed and the publish is not a replay of an earlier one: a refused publish stores no
        bytes, and the rows never commit before their bytes are in place. (Only the database failing after
        that point leaves the bytes behind, unindexed, for a retry to reuse.)"""
        check_revision_fields(source=new.source, idempotency_key=new.idempotency_key)
        with self.db.write() as conn:
            policy_id, tenant_id, head = lock_policy(conn, new.tenant, new.policy)
            if new.idempotency_key is not None:
                done = conn.execute(
                    select(revisions.c.number).where(
                        and_(revisions.c.policy_id == policy_id, revisions.c.idempotency_key == new.idempotency_key)
                    )
                ).scalar()
                if done is not None:  # published before (a retry): the first revision stands
                    return _entity(conn.execute(_BY_NUMBER, {"tenant": new.tenant, "policy": new.policy, "number": done}).one())
            number = head + 1
            if new.parent_number is not None:
                parent = conn.execute(
                    select(revisions.c.id).where(and_(revisions.c.policy_id == policy_id, revisions.c.number == new.parent_number))
                ).first()
                if parent is None:
                    raise invalid(f"parent revision {new.parent_number} does not exist in {new.tenant}/{new.policy}")
            enforce(conn, tenant_id, new.tenant, Usage(stored_bytes=new.size_bytes, revisions=1))
            if store_blob is not None:
                store_blob()
            conn.execute(update(policies).where(policies.c.id == policy_id).values(head_number=number))
            insert_blob(conn, self.db.dialect, new.sha256, new.size_bytes, new.config)
            conn.execute(
                insert(revisions).values(
                    tenant_id=tenant_id,
                    policy_id=policy_id,
                    number=number,
                    parent_number=new.parent_number,
                    sha256=new.sha256,
                    size_bytes=new.size_bytes,
                    rank=new.config.r,
                    alpha=float(new.config.lora_alpha),
                    use_rslora=new.config.use_rslora,
                    target_modules=",".join(new.config.target_modules),
                    format=FORMAT,
                    status="active",
                    source=new.source,
                    metrics=dict(new.metrics),
                    created_by=new.actor,
                    created_at=utcnow(),
                    idempotency_key=new.idempotency_key,
                )
            )
            move_alias(conn, policy_id=policy_id, alias=LATEST, to_number=number, action="publish", actor=new.actor)
            record_event(
                conn,
                tenant_id=tenant_id,
                actor=new.actor,
                action="publish",
                policy_id=policy_id,
                revision_number=number,
                details={"sha256": new.sha256, "size_bytes": new.size_bytes, "rank": new.config.r, "source": new.source},
            )
            return _entity(conn.execute(_BY_NUMBER, {"tenant": new.tenant, "policy": new.policy, "number": number}).one())

    def resolve(self, ref: RevisionRef) -> Revision:
        """The revision `ref` names, which must be servable (not retracted). One indexed query."""
        revision = self.find(ref)
        if not revision.active:
            raise precondition(
                f"{ref} resolves to {revision.address}, which was retracted"
                + (f" ({revision.retracted_reason})" if revision.retracted_reason else "")
                + "; move the alias to another revision"
            )
        return revision

    def find(self, ref: RevisionRef) -> Revision:
        """Like resolve, but retracted revisions are returned too (for inspection and audits)."""
        tenant, policy = ref.policy.tenant, ref.policy.name
        with self.db.read() as conn:
            if ref.number is not None:
                row = conn.execute(_BY_NUMBER, {"tenant": tenant, "policy": policy, "number": ref.number}).first()
            else:
                row = conn.execute(_BY_ALIAS, {"tenant": tenant, "policy": policy, "alias": ref.alias}).first()
            if row is None:
                raise self._explain_missing(conn, ref)
        return _entity(row)

    def _explain_missing(self, conn: Connection, ref: RevisionRef) -> Exception:
        tenant, policy = ref.policy.tenant, ref.policy.name
        head = conn.execute(
            select(policies.c.head_number).join(tenants, tenants.c.id == policies.c.tenant_id).where(and_(tenants.c.name == tenant, policies.c.name == policy))
        ).scalar()
        if head is None:
            return not_found(f"policy {tenant}/{policy} not found")
        if head == 0:
            return not_found(f"{tenant}/{policy} has no revisions yet")
        if ref.number is not None:
            return not_found(f"{tenant}/{policy} has no revision {ref.number} (revisions are 1..{head})")
        if ref.alias == LATEST:
            return precondition(f"every revision of {tenant}/{policy} is retracted; nothing is servable")
        return not_found(f"{tenant}/{policy} has no alias {ref.alias!r}")

    def list(
        self, tenant: str, policy: str | None = None, *, newest_first: bool = False, page_token: str = "", limit: int = 0
    ) -> Page[Revision]:
        """One policy's revisions by number, or (policy None) every revision of the tenant by id."""
        size = page_size(limit)
        listing, scope = (TENANT_REVISIONS if policy is None else POLICY_REVISIONS), (tenant, policy or "", newest_first)
        after = self.tokens.decode(page_token, listing, scope)
        query = select(*_COLUMNS).select_from(_FROM).limit(size + 1)
        if policy is None:
            key, key_of = revisions.c.id, (lambda r: r.id)
            with self.db.read() as conn:
                tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
            query = query.where(revisions.c.tenant_id == tenant_id)
        else:
            key, key_of = revisions.c.number, (lambda r: r.number)
            query = query.where(tenants.c.name == tenant, policies.c.name == policy)
        query = query.order_by(key.desc() if newest_first else key)
        if after is not None:
            query = query.where(key < after[0] if newest_first else key > after[0])
        with self.db.read() as conn:
            rows = conn.execute(query).all()
            if not rows and policy is not None and after is None:
                exists = conn.execute(
                    select(policies.c.id).join(tenants, tenants.c.id == policies.c.tenant_id).where(and_(tenants.c.name == tenant, policies.c.name == policy))
                ).first()
                if exists is None:
                    raise not_found(f"policy {tenant}/{policy} not found")
        items = [_entity(r) for r in rows[:size]]
        return Page(items=items, next_token=self.tokens.encode(listing, scope, (key_of(items[-1]),)) if len(rows) > size else "")

    def retract(self, tenant: str, policy: str, number: int, *, reason: str, actor: str) -> Revision:
        """Mark a revision unservable. `latest` falls back to the newest active revision; other aliases
        keep pointing at it (and fail to resolve) until someone moves them, so nothing changes silently."""
        if not reason:
            raise invalid("retracting a revision needs a reason")
        with self.db.write() as conn:
            policy_id, tenant_id, head = lock_policy(conn, tenant, policy)
            status = conn.execute(
                select(revisions.c.status).where(and_(revisions.c.policy_id == policy_id, revisions.c.number == number))
            ).scalar()
            if status is None:
                raise not_found(f"{tenant}/{policy} has no revision {number}")
            if status == "active":
                conn.execute(
                    update(revisions)
                    .where(and_(revisions.c.policy_id == policy_id, revisions.c.number == number))
                    .values(status="retracted", retracted_at=utcnow(), retracted_reason=reason)
                )
                latest = conn.execute(
                    select(aliases.c.revision_number).where(and_(aliases.c.policy_id == policy_id, aliases.c.name == LATEST))
                ).scalar()
                if latest == number:
                    fallback = conn.execute(
                        select(func.max(revisions.c.number)).where(and_(revisions.c.policy_id == policy_id, revisions.c.status == "active"))
                    ).scalar()
                    move_alias(conn, policy_id=policy_id, alias=LATEST, to_number=fallback, action="retract", actor=actor, reason=reason)
                record_event(
                    conn, tenant_id=tenant_id, actor=actor, action="retract", policy_id=policy_id, revision_number=number,
                    details={"reason": reason},
                )
            return _entity(conn.execute(_BY_NUMBER, {"tenant": tenant, "policy": policy, "number": number}).one())

    def record_metrics(self, ref: RevisionRef, metrics: dict[str, float], *, actor: str) -> Revision:
        """Attach evaluation results to the revision they measured (merged into its metrics)."""
        if not metrics:
            raise invalid("no metrics given")
        revision = self.find(ref)
        with self.db.write() as conn:
            policy_id, tenant_id, _ = lock_policy(conn, revision.tenant, revision.policy)
            current: dict[str, Any] = conn.execute(select(revisions.c.metrics).where(revisions.c.id == revision.id)).scalar_one()
            conn.execute(update(revisions).where(revisions.c.id == revision.id).values(metrics={**current, **metrics}))
            record_event(
                conn, tenant_id=tenant_id, actor=actor, action="record_metrics", policy_id=policy_id,
                revision_number=revision.number, details={"metrics": metrics},
            )
            return _entity(conn.execute(_BY_NUMBER, {"tenant": revision.tenant, "policy": revision.policy, "number": revision.number}).one())
