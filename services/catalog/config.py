"""Catalog configuration. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses
import os

from mint.adapters import Limits
from mint.limits import RequestLimits


@dataclasses.dataclass(kw_only=True, slots=True)
class CatalogConfig:
    database_url: str = "sqlite:///.mint/catalog.db"
    blob_dir: str = ".mint/blobs"
    address: str = "127.0.0.1:0"
    admin_key: str = ""          # ensured to exist at start (bootstraps a deployment)
    admin_tenant: str = "admin"
    redis_url: str = ""          # where policy-change notices go, for gateways' resolve caches
    max_rank: int = 256
    max_adapter_bytes: int = 2 * 1024**3
    max_workers: int = 64
    migrate: bool = True
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)  # mint.limits

    @property
    def limits(self) -> Limits:
        return Limits(max_rank=self.max_rank, max_bytes=self.max_adapter_bytes)

    @classmethod
    def from_env(cls, **overrides) -> CatalogConfig:
        env = os.environ
        names = {
            "database_url": "MINT_DATABASE_URL",
            "blob_dir": "MINT_BLOB_DIR",
            "address": "MINT_CATALOG_ADDRESS",
            "admin_key": "MINT_ADMIN_KEY",
            "admin_tenant": "MINT_ADMIN_TENANT",
            "redis_url": "MINT_REDIS_URL",
        }
        values = {field: env[var] for field, var in names.items() if var in env}
        values.setdefault("address", "0.0.0.0:50051")
        values["request_limits"] = RequestLimits.from_env(env)
        return cls(**{**values, **overrides})
