"""Tenants and their API keys (stored as key id + sha256 of the secret, with scopes, expiry and revocation)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from sqlalchemy import insert, select, update

from mint.auth import NewKey, Role, generate_key, hash_secret, parse_key
from mint.errors import Code, MintError, invalid, not_found
from mint.names import check_name
from mint.scopes import Scope
from mint.scopes import names as scope_names
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import ApiKey, Page, Tenant, utcnow
from services.catalog.store.pages import API_KEYS, PageTokens, page_size
from services.catalog.store.tables import api_keys, tenants


class TenantStore:
    def __init__(self, db: Database, tokens: PageTokens):
        self.db = db
        self.tokens = tokens
        # Called with a key's id once its revocation is committed: authenticators drop it from their caches.
        self.revocation_listeners: list[Callable[[str], None]] = []

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

    def create_key(
        self, tenant: str, name: str, role: Role, *, actor: str, scopes: frozenset[Scope] | None = None, expires_at: dt.datetime | None = None,
    ) -> tuple[NewKey, ApiKey]:
        """A new key (`scopes` None: the role's). ALREADY_EXISTS when the tenant has a key of that name,
        revoked keys included: names are how keys are revoked and how the audit log reads."""
        check_key_name(name)
        scopes = role.scopes if scopes is None else scopes
        if not scopes:
            raise invalid(f"API key {name!r} needs at least one scope; scopes are {', '.join(s.value for s in Scope)}")
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise invalid(f"expires_at {expires_at.isoformat(timespec='seconds')} is not in the future")
        new = generate_key()
        with self.db.write() as conn:
            tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
            if tenant_id is None:
                raise not_found(f"tenant {tenant!r} not found")
            if conn.execute(select(api_keys.c.id).where(api_keys.c.tenant_id == tenant_id, api_keys.c.name == name)).first():
                raise MintError(Code.ALREADY_EXISTS, f"tenant {tenant} already has a key named {name!r} (names stay taken after revocation)")
            conn.execute(
                insert(api_keys).values(
                    key_id=new.key_id,
                    tenant_id=tenant_id,
                    name=name,
                    role=role.value,
                    secret_hash=new.secret_hash,
                    created_at=now,
                    scopes=_scopes_text(scopes),
                    expires_at=expires_at,
                )
            )
            details = {"key_id": new.key_id, "name": name, "role": role.value, "scopes": scope_names(scopes)}
            if expires_at is not None:
                details["expires_at"] = expires_at.isoformat()
            record_event(conn, tenant_id=tenant_id, actor=actor, action="create_key", details=details)
        key = ApiKey(
            key_id=new.key_id, tenant=tenant, name=name, role=role, secret_hash=new.secret_hash, scopes=frozenset(scopes),
            created_at=now, expires_at=expires_at, revoked_at=None,
        )
        return new, key

    def revoke_key(self, tenant: str, name: str, *, actor: str) -> ApiKey:
        """Revoke the key `name` of `tenant` (again: a no-op returning it). Listeners hear its id once the
        revocation is committed."""
        check_key_name(name)
        with self.db.write() as conn:
            row = conn.execute(_KEY_QUERY.where(tenants.c.name == tenant, api_keys.c.name == name)).first()
            if row is None:
                raise not_found(f"tenant {tenant!r} has no key named {name!r}")
            key = _api_key(row)
            if key.revoked:
                return key
            now = utcnow()
            conn.execute(update(api_keys).where(api_keys.c.key_id == key.key_id).values(revoked_at=now))
            tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar_one()
            record_event(conn, tenant_id=tenant_id, actor=actor, action="revoke_key", details={"key_id": key.key_id, "name": name})
        for listener in self.revocation_listeners:
            listener(key.key_id)
        return dataclasses.replace(key, revoked_at=now)

    def list_keys(self, tenant: str, *, page_token: str = "", limit: int = 0) -> Page[ApiKey]:
        """The tenant's keys by name, revoked and expired ones included."""
        self.get_tenant(tenant)
        size = page_size(limit)
        after = self.tokens.decode(page_token, API_KEYS, (tenant,))
        query = _KEY_QUERY.where(tenants.c.name == tenant).order_by(api_keys.c.name).limit(size + 1)
        if after is not None:
            query = query.where(api_keys.c.name > after[0])
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        keys = [_api_key(row) for row in rows[:size]]
        return Page(items=keys, next_token=self.tokens.encode(API_KEYS, (tenant,), (keys[-1].name,)) if len(rows) > size else "")

    def ensure_key(self, key: str, *, tenant: str, role: Role, name: str) -> None:
        """Make `key` valid for `tenant` (creating the tenant if needed): how a deployment bootstraps its
        first admin key from configuration. Idempotent. When the tenant already has a key named `name` (an
        earlier bootstrap key), this one is named `name-<key_id>`."""
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
            if conn.execute(select(api_keys.c.id).where(api_keys.c.tenant_id == tenant_id, api_keys.c.name == name)).first():
                name = f"{name}-{key_id}"
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id, tenant_id=tenant_id, name=name, role=role.value, secret_hash=hash_secret(secret), created_at=utcnow(),
                    scopes=_scopes_text(role.scopes),
                )
            )
            details = {"key_id": key_id, "name": name, "role": role.value, "scopes": scope_names(role.scopes)}
            record_event(conn, tenant_id=tenant_id, actor="config", action="create_key", details=details)

    def lookup_key(self, key_id: str) -> ApiKey | None:
        with self.db.read() as conn:
            row = conn.execute(_KEY_QUERY.where(api_keys.c.key_id == key_id)).first()
        return None if row is None else _api_key(row)


_KEY_QUERY = select(
    api_keys.c.key_id, api_keys.c.name, api_keys.c.role, api_keys.c.secret_hash, api_keys.c.scopes, api_keys.c.created_at,
    api_keys.c.expires_at, api_keys.c.revoked_at, tenants.c.name.label("tenant"),
).join(tenants, tenants.c.id == api_keys.c.tenant_id)


def check_key_name(name: str) -> None:
    if not name or len(name) > 128 or not name.isprintable():
        raise invalid(f"an API key needs a name of 1-128 printable characters, got {name[:40]!r}")


def _scopes_text(scopes: frozenset[Scope]) -> str:
    return ",".join(scope_names(scopes))


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value  # SQLite keeps no zone


def _api_key(row) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        tenant=row.tenant,
        name=row.name,
        role=Role(row.role),
        secret_hash=row.secret_hash,
        scopes=frozenset(Scope(name) for name in row.scopes.split(",") if name),
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at),
    )
