"""Keyset pages and the one codec for their tokens.

A page token carries the sort key of the last row on its page. Several listings sort by catalog-wide row
ids (a tenant's revisions, its audit events, a policy's alias moves), and those ids grow with every
tenant's activity, so a token must not show them: tokens are sealed with the catalog's own key (kept in
`catalog_secrets`, shared by every catalog process on one database). Sealing is deterministic
authenticated encryption (SIV): the tag is an HMAC-SHA256 of the listing, its filters and the padded key,
and the key is XORed with SHAKE-256 of the tag. A token therefore decodes only for the listing and filters
it was issued for, and any token this catalog did not issue -- crafted, truncated, another listing's,
another database's -- is INVALID_ARGUMENT. The decoded key is then checked against the listing's key
schema (exact arity, each value's type and range) before it reaches SQL.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import json
import re
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from mint.errors import invalid
from services.catalog.store.tables import catalog_secrets

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
_VERSION = b"\x01"
_TAG_BYTES = 16
_PAD_BYTES = 32  # keys are padded to a multiple of this, so a token's length does not show an id's size
_MAX_TOKEN_CHARS = 512
_TOKEN = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_SECRET_NAME = "page_token_key"
NOT_ISSUED = "page_token is not one this server issued for this listing; pass next_page_token from the previous page, with the same filters"


def page_size(requested: int) -> int:
    if requested < 0:
        raise invalid(f"page_size must be >= 0, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class Field(enum.Enum):
    """The kind of one sort-key column, with the values it may hold."""

    ROW_ID = "row_id"  # a bigint identity: 1..2^63-1
    NUMBER = "number"  # a revision number: 1..2^31-1
    NAME = "name"  # a policy, base model or key name: 1..128 characters

    def holds(self, value: Any) -> bool:
        if self is Field.NAME:
            return isinstance(value, str) and 1 <= len(value) <= 128
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return 1 <= value <= (2**63 - 1 if self is Field.ROW_ID else 2**31 - 1)


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    """One paginated listing: its name (tokens are bound to it) and the schema of its sort key."""

    name: str
    key: tuple[Field, ...]


BASE_MODELS = Listing("base_models", (Field.NAME,))
POLICIES = Listing("policies", (Field.NAME,))
POLICY_REVISIONS = Listing("policy_revisions", (Field.NUMBER,))
TENANT_REVISIONS = Listing("tenant_revisions", (Field.ROW_ID,))
ALIAS_MOVES = Listing("alias_moves", (Field.ROW_ID,))
AUDIT_EVENTS = Listing("audit_events", (Field.ROW_ID,))
API_KEYS = Listing("api_keys", (Field.NAME,))


class PageTokens:
    """Seals and opens page tokens with one secret (see the module docstring)."""

    def __init__(self, secret: bytes):
        self._mac_key = hmac.new(secret, b"mint page token: authentication", hashlib.sha256).digest()
        self._stream_key = hmac.new(secret, b"mint page token: encryption", hashlib.sha256).digest()

    @classmethod
    def load(cls, db) -> PageTokens:
        """The catalog's tokens: its secret is made once per database, by whichever process opens it first."""
        insert = postgresql.insert if db.is_postgres else sqlite.insert
        with db.write() as conn:
            conn.execute(
                insert(catalog_secrets).values(name=_SECRET_NAME, value=secrets.token_hex(32)).on_conflict_do_nothing(index_elements=["name"])
            )
            value = conn.execute(select(catalog_secrets.c.value).where(catalog_secrets.c.name == _SECRET_NAME)).scalar_one()
        return cls(bytes.fromhex(value))

    def encode(self, listing: Listing, scope: tuple[Any, ...], key: tuple[Any, ...]) -> str:
        """The token for the page after the row whose sort key is `key`, in `listing` filtered by `scope`."""
        assert len(key) == len(listing.key) and all(f.holds(v) for f, v in zip(listing.key, key, strict=True)), (listing, key)
        plain = json.dumps(list(key), separators=(",", ":")).encode()
        plain += b" " * (-len(plain) % _PAD_BYTES)
        tag = self._tag(listing, scope, plain)
        return base64.urlsafe_b64encode(_VERSION + tag + self._crypt(tag, plain)).rstrip(b"=").decode()

    def decode(self, token: str, listing: Listing, scope: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The sort key `token` carries (None for the first page); INVALID_ARGUMENT for any token this
        catalog did not issue for `listing` and `scope`."""
        if not token:
            return None
        if len(token) > _MAX_TOKEN_CHARS or len(token) % 4 == 1 or not _TOKEN.fullmatch(token):
            raise invalid(NOT_ISSUED)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if len(raw) < 1 + _TAG_BYTES + _PAD_BYTES or raw[:1] != _VERSION:
            raise invalid(NOT_ISSUED)
        tag, sealed = raw[1 : 1 + _TAG_BYTES], raw[1 + _TAG_BYTES :]
        plain = self._crypt(tag, sealed)
        if not hmac.compare_digest(tag, self._tag(listing, scope, plain)):
            raise invalid(NOT_ISSUED)
        try:
            key = json.loads(plain)
        except ValueError:
            raise invalid(NOT_ISSUED) from None
        if not isinstance(key, list) or len(key) != len(listing.key) or not all(f.holds(v) for f, v in zip(listing.key, key, strict=True)):
            raise invalid(NOT_ISSUED)
        return tuple(key)

    def _tag(self, listing: Listing, scope: tuple[Any, ...], plain: bytes) -> bytes:
        bound = json.dumps([listing.name, list(scope)], separators=(",", ":")).encode()
        return hmac.new(self._mac_key, len(bound).to_bytes(4, "big") + bound + plain, hashlib.sha256).digest()[:_TAG_BYTES]

    def _crypt(self, tag: bytes, data: bytes) -> bytes:
        """`data` XOR a keystream drawn from the tag (its own inverse)."""
        stream = hashlib.shake_256(self._stream_key + tag).digest(len(data))
        return bytes(a ^ b for a, b in zip(data, stream, strict=True))
