"""API keys and the principal a request acts as.

A key reads `mint_<key_id>_<secret>`. Only `key_id` and sha256(secret) are stored; the secret is shown
once, at creation. Keys are random 256-bit secrets, so a fast hash is the right one (nothing to stretch).

Every authenticated call runs with a `Principal` in a context variable, set by the server wrapper in
`mint.server` before the handler runs. MinT's own services (role `service`) and admins may act for any
tenant by naming it in the `x-mint-tenant` header; members act only within their own tenant.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from mint.errors import Code, MintError

AUTH_HEADER = "authorization"
TENANT_HEADER = "x-mint-tenant"
KEY_PREFIX = "mint_"


class Role(enum.Enum):
    MEMBER = "member"
    SERVICE = "service"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    role: Role

    @property
    def privileged(self) -> bool:
        return self.role in (Role.SERVICE, Role.ADMIN)

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"

    def acting_as(self, tenant: str) -> Principal:
        """The same key acting for another tenant (privileged keys only)."""
        if tenant == self.tenant:
            return self
        if not self.privileged:
            raise MintError(Code.PERMISSION_DENIED, f"a {self.role.value} key cannot act for tenant {tenant!r}")
        return dataclasses.replace(self, tenant=tenant)


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    key_id: str
    secret_hash: str


def generate_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key=f"{KEY_PREFIX}{key_id}_{secret}", key_id=key_id, secret_hash=hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(key: str) -> tuple[str, str]:
    """Split a key into (key_id, secret); UNAUTHENTICATED when it is not shaped like a MinT key."""
    if not key.startswith(KEY_PREFIX):
        raise MintError(Code.UNAUTHENTICATED, "API key must start with 'mint_'")
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or not secret:
        raise MintError(Code.UNAUTHENTICATED, "malformed API key")
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def key_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if name == AUTH_HEADER and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else value.strip()
    return None


def tenant_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if name == TENANT_HEADER and isinstance(value, str):
            return value
    return None


def call_metadata(api_key: str | None, tenant: str | None = None) -> tuple[tuple[str, str], ...]:
    """Outgoing metadata for a call made with `api_key`, optionally acting for `tenant`."""
    md: list[tuple[str, str]] = []
    if api_key:
        md.append((AUTH_HEADER, f"Bearer {api_key}"))
    if tenant:
        md.append((TENANT_HEADER, tenant))
    return tuple(md)


class KeyCache:
    """Principals of recently seen keys, for `ttl_s` seconds: a revoked key stops working within that time."""

    def __init__(self, lookup: Callable[[str], Principal], ttl_s: float, max_entries: int = 10_000):
        self._lookup = lookup
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, api_key: str) -> Principal:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(api_key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        principal = self._lookup(api_key)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[api_key] = (now, principal)
        return principal


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("mint_principal", default=None)


def current_principal() -> Principal:
    principal = _current.get()
    if principal is None:
        raise MintError(Code.UNAUTHENTICATED, "this call needs an API key (authorization: Bearer mint_...)")
    return principal


@contextmanager
def acting(principal: Principal | None) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def require_admin() -> Principal:
    principal = current_principal()
    if principal.role is not Role.ADMIN:
        raise MintError(Code.PERMISSION_DENIED, "this call needs an admin key")
    return principal
