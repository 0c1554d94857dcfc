"""Plain entities the catalog store returns. Rows become these before they leave the store."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Generic, TypeVar

from mint.adapters import AdapterConfig
from mint.auth import Role
from mint.scopes import Scope

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    role: Role
    secret_hash: str
    scopes: frozenset[Scope]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclasses.dataclass(frozen=True, slots=True)
class BaseModel:
    id: int
    name: str
    architecture: str
    config: dict[str, Any]
    weights_sha256: str
    module_shapes: dict[str, tuple[int, int]]
    num_layers: int
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    id: int
    tenant_id: int
    tenant: str
    name: str
    base_model: str
    description: str
    head_number: int
    created_at: dt.datetime
    created_by: str

    @property
    def full_name(self) -> str:
        return f"{self.tenant}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Revision:
    id: int
    tenant: str
    policy: str
    number: int
    parent_number: int | None
    sha256: str
    size_bytes: int
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    format: str
    status: str
    source: str
    metrics: dict[str, float]
    base_model: str
    created_by: str
    created_at: dt.datetime
    retracted_reason: str | None

    @property
    def full_policy(self) -> str:
        return f"{self.tenant}/{self.policy}"

    @property
    def address(self) -> str:
        return f"{self.tenant}/{self.policy}@{self.number}"

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def adapter_config(self) -> AdapterConfig:
        """The PEFT config, rebuilt from the columns that determine what the adapter computes."""
        return AdapterConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            base_model_name_or_path=self.base_model,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Alias:
    policy: str
    name: str
    revision_number: int
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class AliasMove:
    id: int
    policy: str
    alias: str
    from_number: int | None
    to_number: int | None
    action: str
    actor: str
    reason: str
    at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: dt.datetime
    tenant: str | None
    actor: str
    action: str
    policy: str | None
    revision_number: int | None
    details: dict[str, Any]
    key_name: str | None = None  # the name of the key `actor` names, when it names one


LIMIT_FIELDS = (
    "max_stored_bytes", "max_revisions", "max_policies", "requests_per_second", "burst", "max_concurrent_sequences",
    "max_concurrent_sessions",
)


@dataclasses.dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's quotas (None: no limit) and, when asked for, what it uses of the ones the catalog counts."""

    tenant: str
    max_stored_bytes: int | None = None
    max_revisions: int | None = None
    max_policies: int | None = None
    requests_per_second: float | None = None
    burst: int | None = None
    max_concurrent_sequences: int | None = None
    max_concurrent_sessions: int | None = None
    updated_at: dt.datetime | None = None
    updated_by: str = ""
    usage: Usage | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    stored_bytes: int = 0
    revisions: int = 0
    policies: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str  # empty on the last page


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
