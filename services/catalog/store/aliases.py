"""Aliases (`latest`, `prod`, ...) and their append-only history of moves. Rollback is a move."""

from __future__ import annotations

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from mint.errors import invalid, not_found, precondition
from mint.names import LATEST, check_alias
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import Alias, AliasMove, Page, utcnow
from services.catalog.store.pages import ALIAS_MOVES, PageTokens, page_size
from services.catalog.store.tables import alias_moves, aliases, policies, revisions, tenants


def move_alias(
    conn: Connection, *, policy_id: int, alias: str, to_number: int | None, action: str, actor: str, reason: str = ""
) -> int | None:
    """Point `alias` at `to_number` (None removes it) and append the move; returns the previous target."""
    previous = conn.execute(
        select(aliases.c.revision_number).where(and_(aliases.c.policy_id == policy_id, aliases.c.name == alias))
    ).scalar()
    now = utcnow()
    if to_number is None:
        conn.execute(delete(aliases).where(and_(aliases.c.policy_id == policy_id, aliases.c.name == alias)))
    elif previous is None:
        conn.execute(insert(aliases).values(policy_id=policy_id, name=alias, revision_number=to_number, updated_at=now))
    else:
        conn.execute(
            update(aliases)
            .where(and_(aliases.c.policy_id == policy_id, aliases.c.name == alias))
            .values(revision_number=to_number, updated_at=now)
        )
    conn.execute(
        insert(alias_moves).values(
            policy_id=policy_id,
            alias=alias,
            from_number=previous,
            to_number=to_number,
            action=action,
            actor=actor,
            reason=reason,
            at=now,
        )
    )
    return previous


def lock_policy(conn: Connection, tenant: str, policy: str) -> tuple[int, int, int]:
    """(policy id, tenant id, head number) with the policy row locked until the transaction ends."""
    query = (
        select(policies.c.id, policies.c.tenant_id, policies.c.head_number)
        .join(tenants, tenants.c.id == policies.c.tenant_id)
        .where(and_(tenants.c.name == tenant, policies.c.name == policy))
        .with_for_update(of=policies)
    )
    row = conn.execute(query).first()
    if row is None:
        raise not_found(f"policy {tenant}/{policy} not found")
    return row.id, row.tenant_id, row.head_number


class AliasStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens

    def set_alias(self, tenant: str, policy: str, alias: str, number: int, *, actor: str, reason: str = "") -> Alias:
        check_alias(alias)
        if alias == LATEST:
            raise invalid("'latest' moves by itself on publish and retract; set another alias such as 'prod'")
        with self.db.write() as conn:
            policy_id, tenant_id, head = lock_policy(conn, tenant, policy)
            _require_active(conn, policy_id, tenant, policy, number, head)
            previous = move_alias(conn, policy_id=policy_id, alias=alias, to_number=number, action="set", actor=actor, reason=reason)
            record_event(
                conn, tenant_id=tenant_id, actor=actor, action="set_alias", policy_id=policy_id, revision_number=number,
                details={"alias": alias, "from": previous, "to": number, "reason": reason},
            )
        return self.get(tenant, policy, alias)

    def rollback(self, tenant: str, policy: str, alias: str, to_number: int = 0, *, actor: str, reason: str = "") -> Alias:
        """Move `alias` to `to_number`, or (0) back to where it pointed before its last move."""
        check_alias(alias)
        if alias == LATEST:
            raise invalid("'latest' cannot be rolled back; retract the bad revision or roll back another alias")
        with self.db.write() as conn:
            policy_id, tenant_id, head = lock_policy(conn, tenant, policy)
            last = conn.execute(
                select(alias_moves.c.from_number, alias_moves.c.to_number)
                .where(and_(alias_moves.c.policy_id == policy_id, alias_moves.c.alias == alias))
                .order_by(alias_moves.c.id.desc())
                .limit(1)
            ).first()
            if last is None or last.to_number is None:
                raise not_found(f"{tenant}/{policy} has no alias {alias!r}")
            target = to_number or last.from_number
            if target is None:
                raise precondition(f"{tenant}/{policy}@{alias} has no earlier target to roll back to; pass a revision number")
            _require_active(conn, policy_id, tenant, policy, target, head)
            move_alias(conn, policy_id=policy_id, alias=alias, to_number=target, action="rollback", actor=actor, reason=reason)
            record_event(
                conn, tenant_id=tenant_id, actor=actor, action="rollback", policy_id=policy_id, revision_number=target,
                details={"alias": alias, "from": last.to_number, "to": target, "reason": reason},
            )
        return self.get(tenant, policy, alias)

    def get(self, tenant: str, policy: str, alias: str) -> Alias:
        for item in self.list(tenant, policy):
            if item.name == alias:
                return item
        raise not_found(f"{tenant}/{policy} has no alias {alias!r}")

    def list(self, tenant: str, policy: str) -> list[Alias]:
        query = (
            select(aliases.c.name, aliases.c.revision_number, aliases.c.updated_at, policies.c.id)
            .select_from(policies.join(tenants, tenants.c.id == policies.c.tenant_id).outerjoin(aliases, aliases.c.policy_id == policies.c.id))
            .where(and_(tenants.c.name == tenant, policies.c.name == policy))
            .order_by(aliases.c.name)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            raise not_found(f"policy {tenant}/{policy} not found")
        full = f"{tenant}/{policy}"
        return [Alias(policy=full, name=r.name, revision_number=r.revision_number, updated_at=r.updated_at) for r in rows if r.name]

    def history(self, tenant: str, policy: str, alias: str = "", *, page_token: str = "", limit: int = 0) -> Page[AliasMove]:
        """Newest move first."""
        size = page_size(limit)
        scope = (tenant, policy, alias)
        after = self.tokens.decode(page_token, ALIAS_MOVES, scope)
        with self.db.read() as conn:
            policy_id = conn.execute(
                select(policies.c.id).join(tenants, tenants.c.id == policies.c.tenant_id).where(and_(tenants.c.name == tenant, policies.c.name == policy))
            ).scalar()
            if policy_id is None:
                raise not_found(f"policy {tenant}/{policy} not found")
            query = select(alias_moves).where(alias_moves.c.policy_id == policy_id).order_by(alias_moves.c.id.desc()).limit(size + 1)
            if alias:
                query = query.where(alias_moves.c.alias == alias)
            if after is not None:
                query = query.where(alias_moves.c.id < after[0])
            rows = conn.execute(query).all()
        full = f"{tenant}/{policy}"
        moves = [
            AliasMove(
                id=r.id, policy=full, alias=r.alias, from_number=r.from_number, to_number=r.to_number,
                action=r.action, actor=r.actor, reason=r.reason, at=r.at,
            )
            for r in rows[:size]
        ]
        return Page(items=moves, next_token=self.tokens.encode(ALIAS_MOVES, scope, (moves[-1].id,)) if len(rows) > size else "")


def _require_active(conn: Connection, policy_id: int, tenant: str, policy: str, number: int, head: int) -> None:
    status = conn.execute(select(revisions.c.status).where(and_(revisions.c.policy_id == policy_id, revisions.c.number == number))).scalar()
    if status is None:
        raise not_found(f"{tenant}/{policy} has no revision {number} (revisions are 1..{head})" if head else f"{tenant}/{policy} has no revisions yet")
    if status != "active":
        raise precondition(f"{tenant}/{policy}@{number} is retracted and cannot be served")
