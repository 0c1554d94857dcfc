"""Names of tenants, policies, aliases and revision references, parsed in one place.

    acme/support-bot@prod     an alias            acme/support-bot@7   revision 7
    acme/support-bot          @latest             support-bot@prod     within the caller's own tenant
    mint://acme/support-bot@7 the same, as an address
"""

from __future__ import annotations

import dataclasses
import re

from mint.errors import invalid

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
LATEST = "latest"
SCHEME = "mint://"


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid(
            f"{kind} name {value[:80]!r} is invalid: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    return value


def check_alias(value: str) -> str:
    if not _ALIAS.match(value or ""):
        raise invalid(f"alias {value[:80]!r} is invalid: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter")
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
        if selector.isdigit():
            number = int(selector)
            if not 1 <= number < 2**31:
                raise invalid(f"revision number {selector!r} must be between 1 and {2**31 - 1}")
            return cls(policy=policy, number=number)
        return cls(policy=policy, alias=check_alias(selector))

    def within(self, tenant: str) -> RevisionRef:
        return dataclasses.replace(self, policy=self.policy.within(tenant))

    def __str__(self) -> str:
        return f"{self.policy}@{self.number if self.number is not None else self.alias}"


def address(tenant: str, policy: str, number: int) -> str:
    return f"{SCHEME}{tenant}/{policy}@{number}"
