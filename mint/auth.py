"""API keys and the principal a request acts as.

A key reads `mint_<key_id>_<secret>`. Only `key_id` and sha256(secret) are stored; the secret is shown
once, at creation. Keys are random 256-bit secrets, so a fast hash is the right one (nothing to stretch).

Every authenticated call runs with a `Principal` in a context variable, set by the server wrapper in
`mint.server` before the handler runs. MinT's own services (role `service`) and admins may act for any
tenant by naming it in the `x-mint-tenant` header; members act only within their own tenant. A service
key that does work a member asked for (a trainer publishing that member's revision) names the member's key
in `x-mint-on-behalf-of`, so the audit log records who asked, not which service carried it out.

A key holds scopes (`mint.scopes`: read, sample, train, publish, admin), may expire, and may be revoked;
`KeyCache` refuses an expired key on every use, and serves a revoked one for at most its TTL.

Each of these headers may appear at most once: a call that repeats one is refused, since two values leave
it ambiguous which one the caller meant (and which one a proxy in between checked).
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from mint.errors import Code, MintError
from mint.scopes import ALL, NON_ADMIN, Scope

AUTH_HEADER = "authorization"
TENANT_HEADER = "x-mint-tenant"
ON_BEHALF_HEADER = "x-mint-on-behalf-of"
KEY_PREFIX = "mint_"
_KEY_ID = re.compile(r"[0-9a-f]{12}")


class Role(enum.Enum):
    MEMBER = "member"
    SERVICE = "service"
    ADMIN = "admin"

    @property
    def scopes(self) -> frozenset[Scope]:
        """What a key of this role holds unless it was given fewer: everything but admin, or all (admin)."""
        return ALL if self is Role.ADMIN else NON_ADMIN


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    role: Role
    on_behalf_of: str | None = None  # the key id a service key acts for (see `for_key`)
    scopes: frozenset[Scope] | None = None  # None: the role's (`Role.scopes`)
    key_name: str = ""
    expires_at: dt.datetime | None = None  # None: never

    def __post_init__(self) -> None:
        if self.scopes is None:
            object.__setattr__(self, "scopes", self.role.scopes)

    @property
    def privileged(self) -> bool:
        return self.role in (Role.SERVICE, Role.ADMIN)

    @property
    def key_label(self) -> str:
        """How messages name the key: its name and id."""
        return f"{self.key_name!r} ({self.key_id})" if self.key_name else self.key_id

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def check_unexpired(self, now: dt.datetime) -> None:
        if self.expires_at is not None and now >= self.expires_at:
            raise MintError(
                Code.UNAUTHENTICATED,
                f"API key {self.key_label} expired at {self.expires_at.isoformat(timespec='seconds')}; ask an admin of tenant "
                f"{self.tenant} for a new key",
            )

    @property
    def actor(self) -> str:
        """Who the audit log names: the key that asked for the change."""
        return f"key:{self.on_behalf_of or self.key_id}"

    def for_key(self, key_id: str) -> Principal:
        """A service key doing work that the key `key_id` asked for (service keys only)."""
        if self.role is not Role.SERVICE:
            raise MintError(Code.PERMISSION_DENIED, f"only service keys act on behalf of other keys, not a {self.role.value} key")
        if not _KEY_ID.fullmatch(key_id):
            raise MintError(Code.INVALID_ARGUMENT, f"{ON_BEHALF_HEADER} must be a key id (12 hex digits), got {key_id[:40]!r}")
        return dataclasses.replace(self, on_behalf_of=key_id)

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
    if not sep or not _KEY_ID.fullmatch(key_id) or not secret:
        raise MintError(Code.UNAUTHENTICATED, "malformed API key")
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def _header(metadata: Sequence[tuple[str, str | bytes]] | None, name: str) -> str | None:
    values = [value for key, value in metadata or () if key == name]
    if len(values) > 1:
        raise MintError(Code.UNAUTHENTICATED, f"the call carries {len(values)} {name!r} headers; send exactly one")
    if values and not isinstance(values[0], str):
        raise MintError(Code.UNAUTHENTICATED, f"the {name!r} header must be text")
    return values[0] if values else None


def key_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    value = _header(metadata, AUTH_HEADER)
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else value.strip()


def tenant_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    return _header(metadata, TENANT_HEADER)


def on_behalf_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    return _header(metadata, ON_BEHALF_HEADER)


def call_metadata(api_key: str | None, tenant: str | None = None, on_behalf_of: str | None = None) -> tuple[tuple[str, str], ...]:
    """Outgoing metadata for a call made with `api_key`, optionally acting for `tenant` and on behalf of
    the key `on_behalf_of` (a key id; service keys only)."""
    md: list[tuple[str, str]] = []
    if api_key:
        md.append((AUTH_HEADER, f"Bearer {api_key}"))
    if tenant:
        md.append((TENANT_HEADER, tenant))
    if on_behalf_of:
        md.append((ON_BEHALF_HEADER, on_behalf_of))
    return tuple(md)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeyCache:
    """Principals of recently seen keys, for `ttl_s` seconds: a revoked key stops working within that time.
    An expired key is refused on every use, cached or not (`now` is the wall clock expiry is read on)."""

    def __init__(
        self, lookup: Callable[[str], Principal], ttl_s: float, max_entries: int = 10_000, now: Callable[[], dt.datetime] = utcnow,
    ):
        self._lookup = lookup
        self._ttl = ttl_s
        self._max = max_entries
        self._now = now
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, api_key: str) -> Principal:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(api_key)
        if hit is not None and now - hit[0] < self._ttl:
            principal = hit[1]
        else:
            principal = self._lookup(api_key)
            with self._lock:
                if len(self._entries) >= self._max:
                    self._entries.clear()
                self._entries[api_key] = (now, principal)
        principal.check_unexpired(self._now())
        return principal

    def forget(self, key_id: str) -> None:
        """Drop the key `key_id` (revoked here), so that its next use is looked up again."""
        with self._lock:
            for api_key in [k for k, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[api_key]


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
    """The caller, a global admin: an admin-role key holding the admin scope."""
    principal = current_principal()
    if principal.role is not Role.ADMIN or not principal.has(Scope.ADMIN):
        raise MintError(Code.PERMISSION_DENIED, f"this call needs an admin key (role admin, scope admin); key {principal.key_label} is not one")
    return principal


def require_scope(scope: Scope) -> Principal:
    """The caller, holding `scope` (for in-process callers, which no interceptor checked)."""
    principal = current_principal()
    if not principal.has(scope):
        raise MintError(Code.PERMISSION_DENIED, f"this call needs the {scope.value!r} scope; key {principal.key_label} does not hold it")
    return principal
