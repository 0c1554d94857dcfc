"""Policies: named lines of adapter revisions, owned by a tenant, bound to one base model."""

from __future__ import annotations

from sqlalchemy import and_, insert, select

from mint.errors import Code, MintError, invalid, not_found
from mint.names import check_name
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import Page, Policy, Usage, utcnow
from services.catalog.store.limits import enforce
from services.catalog.store.pages import POLICIES, PageTokens, page_size
from services.catalog.store.tables import base_models, policies, tenants

_COLUMNS = (policies, tenants.c.name.label("tenant_name"), base_models.c.name.label("base_name"))
_FROM = policies.join(tenants, tenants.c.id == policies.c.tenant_id).join(base_models, base_models.c.id == policies.c.base_model_id)


def _entity(row) -> Policy:
    return Policy(
        id=row.id,
        tenant_id=row.tenant_id,
        tenant=row.tenant_name,
        name=row.name,
        base_model=row.base_name,
        description=row.description,
        head_number=row.head_number,
        created_at=row.created_at,
        created_by=row.created_by,
    )


class PolicyStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens

    def create(self, tenant: str, name: str, *, base_model: str, description: str = "", actor: str) -> Policy:
        check_name("policy", name)
        if len(description) > 4096:
            raise invalid("policy description is limited to 4096 characters")
        with self.db.write() as conn:
            tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
            if tenant_id is None:
                raise not_found(f"tenant {tenant!r} not found")
            base_id = conn.execute(select(base_models.c.id).where(base_models.c.name == base_model)).scalar()
            if base_id is None:
                raise not_found(f"base model {base_model!r} is not registered")
            exists = conn.execute(select(policies.c.id).where(and_(policies.c.tenant_id == tenant_id, policies.c.name == name))).first()
            if exists:
                raise MintError(Code.ALREADY_EXISTS, f"policy {tenant}/{name} already exists")
            policy_id = conn.execute(
                insert(policies)
                .values(
                    tenant_id=tenant_id,
                    name=name,
                    base_model_id=base_id,
                    description=description,
                    head_number=0,
                    created_at=utcnow(),
                    created_by=actor,
                )
                .returning(policies.c.id)
            ).scalar_one()
            enforce(conn, tenant_id, tenant, Usage(policies=1), written=True)
            record_event(conn, tenant_id=tenant_id, actor=actor, action="create_policy", policy_id=policy_id, details={"base_model": base_model})
        return self.get(tenant, name)

    def get(self, tenant: str, name: str) -> Policy:
        with self.db.read() as conn:
            row = conn.execute(select(*_COLUMNS).select_from(_FROM).where(and_(tenants.c.name == tenant, policies.c.name == name))).first()
        if row is None:
            raise not_found(f"policy {tenant}/{name} not found")
        return _entity(row)

    def list(self, tenant: str, *, name_prefix: str = "", page_token: str = "", limit: int = 0) -> Page[Policy]:
        size = page_size(limit)
        scope = (tenant, name_prefix)
        after = self.tokens.decode(page_token, POLICIES, scope)
        query = select(*_COLUMNS).select_from(_FROM).where(tenants.c.name == tenant).order_by(policies.c.name).limit(size + 1)
        if name_prefix:
            query = query.where(policies.c.name.startswith(name_prefix, autoescape=True))
        if after is not None:
            query = query.where(policies.c.name > after[0])
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [_entity(r) for r in rows[:size]]
        return Page(items=items, next_token=self.tokens.encode(POLICIES, scope, (items[-1].name,)) if len(rows) > size else "")
