"""Names of tenants, policies, aliases and revision references, parsed in one place.

    acme/support-bot@prod     an alias            acme/support-bot@7   revision 7
    acme/support-bot          @latest             support-bot@prod     within the caller's own tenant
    mint://acme/support-bot@7 the same, as an address

The grammar is ASCII and exact: names are 1-64 of a-z 0-9 . _ - (starting with a letter or digit; aliases
with a letter), a revision number is 1..2147483647 in ASCII digits without sign, spaces or leading zeros.
Nothing else parses: not other scripts' digits (`@３`, `@١`, `@²`), not look-alike letters, not a trailing
newline (patterns are matched whole, never with `$`, which also matches before a final newline).
"""

from __future__ import annotations

import dataclasses
import re

from mint.errors import invalid

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", re.ASCII)
_ALIAS = re.compile(r"[a-z][a-z0-9._-]{0,63}", re.ASCII)
_NUMBER = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
_BASE_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
MAX_REVISION_NUMBER = 2**31 - 1
LATEST = "latest"
SCHEME = "mint://"


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise invalid(
            f"{kind} name {str(value)[:80]!r} is invalid: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def check_alias(value: str) -> str:
    if not isinstance(value, str) or not _ALIAS.fullmatch(value):
        raise invalid(f"alias {str(value)[:80]!r} is invalid: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter")
    return value


def check_base_model_name(value: str) -> str:
    if not isinstance(value, str) or not _BASE_MODEL.fullmatch(value):
        raise invalid(f"base model name {str(value)[:80]!r} is invalid: 1-128 characters of letters, digits, '.', '_', '/', '-'")
    return value


def check_sha256(value: str, what: str = "sha256") -> str:
    """A content address: 64 lowercase hex characters."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise invalid(f"{what} must be 64 lowercase hex characters, got {str(value)[:80]!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyName:
    tenant: str | None  # None: the caller's own tenant
    name: str

    @classmethod
    def parse(cls, text: str) -> PolicyName:
        if not text:
            raise invalid("a policy name is required")
        tenant, sep, name = text.removeprefix(SCHEME).rpartition("/")
        if sep and not tenant:
            raise invalid(f"policy name {text[:80]!r} has an empty tenant")
        if "/" in tenant:
            raise invalid(f"policy name {text[:80]!r} has too many '/'; use tenant/policy")
        return cls(tenant=check_name("tenant", tenant) if sep else None, name=check_name("policy", name))

    def within(self, tenant: str) -> PolicyName:
        return PolicyName(tenant=self.tenant or tenant, name=self.name)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.name}" if self.tenant else self.name


@dataclasses.dataclass(frozen=True, slots=True)
class RevisionRef:
    policy: PolicyName
    number: int | None = None  # exactly one of number / alias is set
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> RevisionRef:
        if not text:
            raise invalid("a revision reference is required, e.g. acme/bot@prod, acme/bot@7 or acme/bot")
        head, sep, selector = text.partition("@")
        policy = PolicyName.parse(head)
        if not sep:
            return cls(policy=policy, alias=LATEST)
        if _NUMBER.fullmatch(selector) and int(selector) <= MAX_REVISION_NUMBER:
            return cls(policy=policy, number=int(selector))
        if selector and selector[0] in "0123456789":
            raise invalid(
                f"revision number {selector[:80]!r} is invalid: write 1..{MAX_REVISION_NUMBER} in ASCII digits, without leading zeros"
            )
        return cls(policy=policy, alias=check_alias(selector))

    def within(self, tenant: str) -> RevisionRef:
        return dataclasses.replace(self, policy=self.policy.within(tenant))

    def __str__(self) -> str:
        return f"{self.policy}@{self.number if self.number is not None else self.alias}"


def address(tenant: str, policy: str, number: int) -> str:
    return f"{SCHEME}{tenant}/{policy}@{number}"
