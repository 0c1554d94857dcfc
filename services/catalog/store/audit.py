"""The append-only audit log: written inside the transaction of the change it records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, insert, literal, select
from sqlalchemy.engine import Connection

from mint.errors import not_found
from services.catalog.store.db import Database
from services.catalog.store.entities import AuditEvent, Page, utcnow
from services.catalog.store.pages import AUDIT_EVENTS, PageTokens, page_size
from services.catalog.store.tables import api_keys, audit_events, policies, tenants


def record_event(
    conn: Connection,
    *,
    tenant_id: int | None,
    actor: str,
    action: str,
    policy_id: int | None = None,
    revision_number: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(audit_events).values(
            at=utcnow(),
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            policy_id=policy_id,
            revision_number=revision_number,
            details=details or {},
        )
    )


class AuditStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens

    def list_events(
        self, tenant: str, *, policy: str | None = None, action: str | None = None, page_token: str = "", limit: int = 0
    ) -> Page[AuditEvent]:
        """Newest first, keyset-paginated on the event id."""
        size = page_size(limit)
        scope = (tenant, policy or "", action or "")
        after = self.tokens.decode(page_token, AUDIT_EVENTS, scope)
        pt = tenants.alias("pt")
        query = (
            select(
                audit_events,
                tenants.c.name.label("tenant_name"),
                policies.c.name.label("policy_name"),
                pt.c.name.label("policy_tenant"),
                api_keys.c.name.label("key_name"),
            )
            .join(tenants, tenants.c.id == audit_events.c.tenant_id)
            .outerjoin(policies, policies.c.id == audit_events.c.policy_id)
            .outerjoin(pt, pt.c.id == policies.c.tenant_id)
            # Actors name keys as key:<key_id>; a key's name never changes, so the join reads it as it was.
            .outerjoin(api_keys, audit_events.c.actor == literal("key:") + api_keys.c.key_id)
            .where(tenants.c.name == tenant)
            .order_by(audit_events.c.id.desc())
            .limit(size + 1)
        )
        with self.db.read() as conn:
            if policy is not None:
                policy_id = conn.execute(
                    select(policies.c.id).join(tenants, tenants.c.id == policies.c.tenant_id).where(and_(tenants.c.name == tenant, policies.c.name == policy))
                ).scalar()
                if policy_id is None:
                    raise not_found(f"policy {tenant}/{policy} not found")
                query = query.where(audit_events.c.policy_id == policy_id)
            if action:
                query = query.where(audit_events.c.action == action)
            if after is not None:
                query = query.where(audit_events.c.id < after[0])
            rows = conn.execute(query).all()
        events = [
            AuditEvent(
                id=row.id,
                at=row.at,
                tenant=row.tenant_name,
                actor=row.actor,
                action=row.action,
                policy=f"{row.policy_tenant}/{row.policy_name}" if row.policy_name else None,
                revision_number=row.revision_number,
                details=row.details,
                key_name=row.key_name,
            )
            for row in rows[:size]
        ]
        return Page(items=events, next_token=self.tokens.encode(AUDIT_EVENTS, scope, (events[-1].id,)) if len(rows) > size else "")
