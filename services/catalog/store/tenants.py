"""Tenants and their API keys (stored as key id + sha256 of the secret)."""

from __future__ import annotations

from sqlalchemy import insert, select

from mint.auth import NewKey, Role, generate_key, hash_secret, parse_key
from mint.errors import Code, MintError, not_found
from mint.names import check_name
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import ApiKey, Tenant, utcnow
from services.catalog.store.tables import api_keys, tenants


class TenantStore:
    def __init__(self, db: Database):
        self.db = db

    def create_tenant(self, name: str, *, actor: str) -> Tenant:
        check_name("tenant", name)
        with self.db.write() as conn:
            if conn.execute(select(tenants.c.id).where(tenants.c.name == name)).first():
                raise MintError(Code.ALREADY_EXISTS, f"tenant {name!r} already exists")
            now = utcnow()
            tenant_id = conn.execute(insert(tenants).values(name=name, created_at=now).returning(tenants.c.id)).scalar_one()
            record_event(conn, tenant_id=tenant_id, actor=actor, action="create_tenant", details={"tenant": name})
        return Tenant(id=tenant_id, name=name, created_at=now)

    def get_tenant(self, name: str) -> Tenant:
        with self.db.read() as conn:
            row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
        if row is None:
            raise not_found(f"tenant {name!r} not found")
        return Tenant(id=row.id, name=row.name, created_at=row.created_at)

    def create_key(self, tenant: str, name: str, role: Role, *, actor: str) -> tuple[NewKey, ApiKey]:
        if not name or len(name) > 128:
            raise MintError(Code.INVALID_ARGUMENT, "an API key needs a name of 1-128 characters")
        new = generate_key()
        with self.db.write() as conn:
            tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
            if tenant_id is None:
                raise not_found(f"tenant {tenant!r} not found")
            conn.execute(
                insert(api_keys).values(
                    key_id=new.key_id,
                    tenant_id=tenant_id,
                    name=name,
                    role=role.value,
                    secret_hash=new.secret_hash,
                    created_at=utcnow(),
                )
            )
            record_event(
                conn, tenant_id=tenant_id, actor=actor, action="create_key", details={"key_id": new.key_id, "name": name, "role": role.value}
            )
        return new, ApiKey(key_id=new.key_id, tenant=tenant, name=name, role=role, secret_hash=new.secret_hash, revoked=False)

    def ensure_key(self, key: str, *, tenant: str, role: Role, name: str) -> None:
        """Make `key` valid for `tenant` (creating the tenant if needed): how a deployment bootstraps its
        first admin key from configuration. Idempotent."""
        key_id, secret = parse_key(key)
        existing = self.lookup_key(key_id)
        if existing is not None:
            if existing.secret_hash != hash_secret(secret) or existing.tenant != tenant:
                raise MintError(Code.ALREADY_EXISTS, f"key id {key_id} is already taken by another key")
            return
        with self.db.write() as conn:
            tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
            if tenant_id is None:
                check_name("tenant", tenant)
                tenant_id = conn.execute(insert(tenants).values(name=tenant, created_at=utcnow()).returning(tenants.c.id)).scalar_one()
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id, tenant_id=tenant_id, name=name, role=role.value, secret_hash=hash_secret(secret), created_at=utcnow()
                )
            )
            record_event(conn, tenant_id=tenant_id, actor="config", action="create_key", details={"key_id": key_id, "name": name, "role": role.value})

    def lookup_key(self, key_id: str) -> ApiKey | None:
        query = (
            select(api_keys.c.key_id, api_keys.c.name, api_keys.c.role, api_keys.c.secret_hash, api_keys.c.revoked_at, tenants.c.name.label("tenant"))
            .join(tenants, tenants.c.id == api_keys.c.tenant_id)
            .where(api_keys.c.key_id == key_id)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return ApiKey(
            key_id=row.key_id,
            tenant=row.tenant,
            name=row.name,
            role=Role(row.role),
            secret_hash=row.secret_hash,
            revoked=row.revoked_at is not None,
        )
