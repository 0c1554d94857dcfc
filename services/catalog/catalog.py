"""The catalog's operations with tenancy, validation and blob handling: what the servicer (and embedded
callers) invoke. Every method acts as `mint.auth.current_principal()`.

Tenancy: a member key sees only its own tenant; naming another tenant's policy answers NOT_FOUND, exactly
as a policy that does not exist would. Service and admin keys may name any tenant.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mint import auth
from mint.adapters import AdapterConfig, BaseShapes, Limits, validate_adapter
from mint.blobs import BlobStore, StagedBlob, receive
from mint.bus import EVERY_POLICY
from mint.errors import Code, MintError, invalid, not_found
from mint.names import PolicyName, RevisionRef, check_sha256
from mint.scopes import Scope
from mint.scopes import names as scope_names
from services.catalog.store import CatalogStore, ImportRecord, ImportResult, NewRevision
from services.catalog.store.entities import (
    Alias,
    AliasMove,
    ApiKey,
    AuditEvent,
    BaseModel,
    Page,
    Policy,
    Revision,
    Tenant,
    TenantLimits,
)
from services.catalog.store.revisions import check_revision_fields

MAX_KEY_TTL_S = 100 * 365 * 86400


class StoreAuthenticator:
    """Checks API keys against the catalog's own table, caching answers for a few seconds. A key revoked
    through this catalog's store is dropped from the cache at once; `now` is the clock expiry is read on."""

    def __init__(self, store: CatalogStore, ttl_s: float = 5.0, now: Callable[[], dt.datetime] = auth.utcnow):
        self._store = store
        self._cache = auth.KeyCache(self._lookup, ttl_s, now=now)
        store.tenants.revocation_listeners.append(self._cache.forget)

    def authenticate(self, api_key: str) -> auth.Principal:
        return self._cache.get(api_key)

    def _lookup(self, api_key: str) -> auth.Principal:
        key_id, secret = auth.parse_key(api_key)
        record = self._store.tenants.lookup_key(key_id)
        if record is None or not auth.secret_matches(secret, record.secret_hash):
            raise MintError(Code.UNAUTHENTICATED, "API key is unknown or revoked")
        if record.revoked:
            when = record.revoked_at.isoformat(timespec="seconds")
            raise MintError(Code.UNAUTHENTICATED, f"API key {record.name!r} ({key_id}) was revoked at {when}; ask an admin of tenant {record.tenant} for a new key")
        return auth.Principal(
            tenant=record.tenant, key_id=key_id, role=record.role, scopes=record.scopes, key_name=record.name, expires_at=record.expires_at,
        )


class Catalog:
    def __init__(self, store: CatalogStore, blobs: BlobStore, limits: Limits = Limits()):
        self.store = store
        self.blobs = blobs
        self.limits = limits
        # Called with a policy's full name after anything that can change what its refs resolve to
        # (publish moves latest; alias moves; retraction): resolve caches listen here.
        self.policy_listeners: list[Callable[[str], None]] = []
        # Called with a tenant's name after its limits change: quota caches in the same process listen here.
        self.limit_listeners: list[Callable[[str], None]] = []

    def _changed(self, policy: str) -> None:
        for listener in self.policy_listeners:
            listener(policy)

    # --- identity and administration -------------------------------------------------------------

    def who_am_i(self) -> auth.Principal:
        return auth.current_principal()

    def create_tenant(self, name: str) -> Tenant:
        principal = auth.require_admin()
        return self.store.tenants.create_tenant(name, actor=principal.actor)

    def create_api_key(
        self, tenant: str, name: str, role: auth.Role, *, scopes: frozenset[Scope] | None = None, expires_at: dt.datetime | None = None,
        ttl_s: int | None = None,
    ) -> tuple[str, ApiKey]:
        """(key, its record). A key with the admin scope creates member keys in its own tenant; a global admin
        key (role admin) any key in any tenant. Either way the new key holds no scope its creator does not
        (`scopes` None: the role's scopes the creator holds) and expires no later than its creator (given
        neither `expires_at` nor `ttl_s`: when its creator does)."""
        principal = auth.require_scope(Scope.ADMIN)
        tenant = tenant or principal.tenant
        if principal.role is not auth.Role.ADMIN:
            if tenant != principal.tenant:
                raise MintError(Code.PERMISSION_DENIED, f"key {principal.key_label} of tenant {principal.tenant} cannot create keys of tenant {tenant}; only global admin keys can")
            if role is not auth.Role.MEMBER:
                raise MintError(Code.PERMISSION_DENIED, f"only global admin keys create {role.value} keys; key {principal.key_label} creates member keys")
        granted = role.scopes & principal.scopes if scopes is None else scopes
        beyond = granted - principal.scopes
        if beyond:
            raise MintError(
                Code.PERMISSION_DENIED,
                f"a key cannot grant more than its creator holds: key {principal.key_label} does not hold {', '.join(scope_names(beyond))}",
            )
        expires_at = _expiry(expires_at, ttl_s)
        if principal.expires_at is not None:
            if expires_at is None:
                expires_at = principal.expires_at
            elif expires_at > principal.expires_at:
                raise MintError(
                    Code.PERMISSION_DENIED,
                    f"a key cannot outlive its creator: key {principal.key_label} expires at {principal.expires_at.isoformat(timespec='seconds')}",
                )
        new, key = self.store.tenants.create_key(tenant, name, role, actor=principal.actor, scopes=granted, expires_at=expires_at)
        return new.key, key

    def revoke_api_key(self, tenant: str, name: str) -> ApiKey:
        """Revoke a key by name: admin-scope keys in their own tenant, global admin keys in any."""
        principal = self._key_admin(tenant)
        return self.store.tenants.revoke_key(tenant or principal.tenant, name, actor=principal.actor)

    def list_api_keys(self, tenant: str = "", page_token: str = "", limit: int = 0) -> Page[ApiKey]:
        principal = self._key_admin(tenant)
        return self.store.tenants.list_keys(tenant or principal.tenant, page_token=page_token, limit=limit)

    def _key_admin(self, tenant: str) -> auth.Principal:
        principal = auth.require_scope(Scope.ADMIN)
        if tenant and tenant != principal.tenant and principal.role is not auth.Role.ADMIN:
            raise MintError(Code.PERMISSION_DENIED, f"key {principal.key_label} of tenant {principal.tenant} manages only that tenant's keys, not {tenant}'s")
        return principal

    def set_tenant_limits(self, tenant: str, values: dict[str, int | float], clear: Iterable[str] = ()) -> TenantLimits:
        """Set some of `tenant`'s limits and clear others (global admin keys: a tenant does not raise its own)."""
        principal = auth.require_admin()
        limits = self.store.limits.set(tenant, dict(values), set(clear), actor=principal.actor)
        for listener in self.limit_listeners:
            listener(limits.tenant)
        return limits

    def get_tenant_limits(self, tenant: str = "", *, with_usage: bool = False) -> TenantLimits:
        """A tenant's limits: any key its own tenant's, service and admin keys any tenant's."""
        principal = auth.current_principal()
        tenant = tenant or principal.tenant
        if tenant != principal.tenant and not principal.privileged:
            raise MintError(Code.PERMISSION_DENIED, f"key {principal.key_label} of tenant {principal.tenant} reads only that tenant's limits, not {tenant}'s")
        return self.store.limits.get(tenant, with_usage=with_usage)

    def register_base_model(self, **fields: Any) -> BaseModel:
        principal = auth.require_admin()
        return self.store.base_models.register(**fields, actor=principal.actor)

    def get_base_model(self, name: str) -> BaseModel:
        auth.current_principal()
        return self.store.base_models.get(name)

    def list_base_models(self, page_token: str = "", limit: int = 0) -> Page[BaseModel]:
        auth.current_principal()
        return self.store.base_models.list(page_token=page_token, limit=limit)

    # --- policies ------------------------------------------------------------------------------------

    def create_policy(self, name: str, base_model: str, description: str = "") -> Policy:
        principal = auth.current_principal()
        policy = self._policy(name)
        return self.store.policies.create(policy.tenant, policy.name, base_model=base_model, description=description, actor=principal.actor)

    def get_policy(self, name: str) -> Policy:
        policy = self._policy(name)
        return self.store.policies.get(policy.tenant, policy.name)

    def list_policies(self, name_prefix: str = "", page_token: str = "", limit: int = 0) -> Page[Policy]:
        principal = auth.current_principal()
        return self.store.policies.list(principal.tenant, name_prefix=name_prefix, page_token=page_token, limit=limit)

    # --- revisions -----------------------------------------------------------------------------------

    def publish(
        self,
        policy_name: str,
        adapter_config_json: str,
        chunks: Iterable[bytes],
        *,
        parent_number: int | None = None,
        source: str = "upload",
        metrics: dict[str, float] | None = None,
        size_bytes: int = 0,
        sha256: str = "",
        idempotency_key: str = "",
    ) -> Revision:
        """Receive, hash and validate an adapter, store its blob, and record it as the next revision.

        Every field of the header is checked before a byte is received, and the bytes go into the blob store
        only inside the transaction that records them, once nothing can refuse the publish: a refused
        publish stores nothing."""
        principal = auth.current_principal()
        policy_ref = self._policy(policy_name)
        config = AdapterConfig.from_json(adapter_config_json)
        metrics = _check_metrics(metrics or {})
        source, key = source or "upload", idempotency_key or None
        check_revision_fields(source=source, idempotency_key=key)
        if sha256:
            check_sha256(sha256)
        if not 0 <= size_bytes <= self.limits.max_bytes:
            raise invalid(f"size_bytes must be 0 (not declared) or the adapter's size, at most {self.limits.max_bytes}; got {size_bytes}")
        policy = self.store.policies.get(policy_ref.tenant, policy_ref.name)
        # (Revisions are never deleted, so a parent within the head now still exists at commit.)
        if parent_number and not 1 <= parent_number <= policy.head_number:
            raise invalid(f"parent revision {parent_number} does not exist in {policy.full_name} (revisions are 1..{policy.head_number})")
        staged = self._receive_validated(chunks, self.store.base_models.get(policy.base_model), config, sha256)
        try:
            if size_bytes and staged.size != size_bytes:
                raise invalid(f"upload has {staged.size} bytes but the header declared {size_bytes}")
            new = NewRevision(
                tenant=policy.tenant,
                policy=policy.name,
                config=config,
                sha256=staged.sha256,
                size_bytes=staged.size,
                actor=principal.actor,
                parent_number=parent_number or None,
                source=source,
                metrics=metrics,
                idempotency_key=key,
            )
            revision = self.store.revisions.publish(new, store_blob=lambda: self.blobs.put(staged))
        finally:
            staged.discard()  # nothing left once put moved it into the store
        self._changed(revision.full_policy)
        return revision

    def _receive_validated(self, chunks: Iterable[bytes], base: BaseModel, config: AdapterConfig, sha256: str) -> StagedBlob:
        staged = receive(chunks, self.blobs.staging_dir(), max_bytes=self.limits.max_bytes, expected_sha256=sha256)
        try:
            validate_adapter(config, staged.path, BaseShapes(base.num_layers, base.module_shapes), self.limits)
        except BaseException:
            staged.discard()
            raise
        return staged

    def resolve(self, ref: str) -> Revision:
        return self.store.revisions.resolve(self._ref(ref))

    def get_revision(self, ref: str) -> Revision:
        return self.store.revisions.find(self._ref(ref))

    def list_revisions(self, policy: str = "", *, newest_first: bool = False, page_token: str = "", limit: int = 0) -> Page[Revision]:
        if not policy:
            principal = auth.current_principal()
            return self.store.revisions.list(principal.tenant, None, newest_first=newest_first, page_token=page_token, limit=limit)
        name = self._policy(policy)
        return self.store.revisions.list(name.tenant, name.name, newest_first=newest_first, page_token=page_token, limit=limit)

    def download_revision(self, ref: str) -> tuple[Revision, Iterator[bytes]]:
        revision = self.store.revisions.resolve(self._ref(ref))
        return revision, self.blobs.read_chunks(revision.sha256)

    def download_blob(self, sha256: str) -> Iterator[bytes]:
        """Blob bytes by hash, for MinT's own services (engines fill their caches this way)."""
        if not auth.current_principal().privileged:
            raise MintError(Code.PERMISSION_DENIED, "blobs are read by hash only by service keys; download a revision by reference instead")
        return self.blobs.read_chunks(check_sha256(sha256))

    def retract(self, ref: str, reason: str) -> Revision:
        principal = auth.current_principal()
        parsed = self._ref(ref)
        if parsed.number is None:
            raise invalid(f"retract needs a revision number (e.g. {parsed.policy}@3), got {ref!r}")
        revision = self.store.revisions.retract(parsed.policy.tenant, parsed.policy.name, parsed.number, reason=reason, actor=principal.actor)
        self._changed(revision.full_policy)
        return revision

    def record_metrics(self, ref: str, metrics: dict[str, float]) -> Revision:
        principal = auth.current_principal()
        return self.store.revisions.record_metrics(self._ref(ref), _check_metrics(metrics), actor=principal.actor)

    # --- aliases and audit ---------------------------------------------------------------------------

    def set_alias(self, policy: str, alias: str, number: int, reason: str = "") -> Alias:
        principal = auth.current_principal()
        name = self._policy(policy)
        moved = self.store.aliases.set_alias(name.tenant, name.name, alias, number, actor=principal.actor, reason=reason)
        self._changed(moved.policy)
        return moved

    def rollback(self, policy: str, alias: str, to_number: int = 0, reason: str = "") -> Alias:
        principal = auth.current_principal()
        name = self._policy(policy)
        moved = self.store.aliases.rollback(name.tenant, name.name, alias, to_number, actor=principal.actor, reason=reason)
        self._changed(moved.policy)
        return moved

    def list_aliases(self, policy: str) -> list[Alias]:
        name = self._policy(policy)
        return self.store.aliases.list(name.tenant, name.name)

    def alias_history(self, policy: str, alias: str = "", page_token: str = "", limit: int = 0) -> Page[AliasMove]:
        name = self._policy(policy)
        return self.store.aliases.history(name.tenant, name.name, alias, page_token=page_token, limit=limit)

    def list_audit_events(self, policy: str = "", action: str = "", page_token: str = "", limit: int = 0) -> Page[AuditEvent]:
        principal = auth.current_principal()
        tenant, policy_name = principal.tenant, None
        if policy:
            name = self._policy(policy)
            tenant, policy_name = name.tenant, name.name
        return self.store.audit.list_events(tenant, policy=policy_name, action=action or None, page_token=page_token, limit=limit)

    # --- bulk path (admin) ---------------------------------------------------------------------------

    def upload_blob(self, base_model: str, adapter_config_json: str, chunks: Iterable[bytes], sha256: str = "") -> tuple[str, int]:
        """Store a blob for the bulk path, validated against `base_model` and indexed with its config."""
        auth.require_admin()
        config = AdapterConfig.from_json(adapter_config_json)
        if sha256:
            check_sha256(sha256)
        staged = self._receive_validated(chunks, self.store.base_models.get(base_model), config, sha256)
        try:
            self.store.blob_index.record(staged.sha256, staged.size, config, store_bytes=lambda: self.blobs.put(staged))
        finally:
            staged.discard()
        return staged.sha256, staged.size

    def import_revisions(self, batches: Iterable[Iterable[ImportRecord]]) -> ImportResult:
        principal = auth.require_admin()
        result = self.store.bulk.import_records(batches, actor=principal.actor)
        self._changed(EVERY_POLICY)
        return result

    # --- names -----------------------------------------------------------------------------------------

    def _policy(self, text: str) -> PolicyName:
        return self._within_tenant(PolicyName.parse(text))

    def _ref(self, text: str) -> RevisionRef:
        ref = RevisionRef.parse(text)
        return ref.within(self._within_tenant(ref.policy).tenant)

    def _within_tenant(self, name: PolicyName) -> PolicyName:
        principal = auth.current_principal()
        if name.tenant is None:
            return name.within(principal.tenant)
        if name.tenant != principal.tenant and not principal.privileged:
            raise not_found(f"policy {name} not found")
        return name


def _expiry(expires_at: dt.datetime | None, ttl_s: int | None) -> dt.datetime | None:
    if expires_at is not None and ttl_s is not None:
        raise invalid("give a key expires_at or ttl_s, not both")
    if ttl_s is None:
        return expires_at
    if not 0 < ttl_s <= MAX_KEY_TTL_S:
        raise invalid(f"ttl_s must be 1..{MAX_KEY_TTL_S} seconds (100 years), got {ttl_s}")
    return auth.utcnow() + dt.timedelta(seconds=ttl_s)


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    for key, value in metrics.items():
        if not key or len(key) > 128:
            raise invalid(f"metric name {key[:80]!r} must have 1-128 characters")
        if not math.isfinite(value):
            raise invalid(f"metric {key!r} is {value}; metrics must be finite numbers")
    return dict(metrics)
