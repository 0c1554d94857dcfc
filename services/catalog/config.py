"""Catalog configuration: the fleet's shared fields (mint.config; it publishes policy-change notices under
`redis_prefix`) and the catalog's own. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses

from mint.adapters import Limits
from mint.config import FleetConfig, env_field


@dataclasses.dataclass(kw_only=True, slots=True)
class CatalogConfig(FleetConfig):
    database_url: str = env_field("MINT_DATABASE_URL", "sqlite:///.mint/catalog.db")
    blob_dir: str = env_field("MINT_BLOB_DIR", ".mint/blobs")
    address: str = env_field("MINT_CATALOG_ADDRESS", "0.0.0.0:50051")
    admin_key: str = env_field("MINT_ADMIN_KEY", "")  # ensured to exist at start (bootstraps a deployment)
    admin_tenant: str = env_field("MINT_ADMIN_TENANT", "admin")
    max_rank: int = env_field("MINT_MAX_RANK", 256)
    max_adapter_bytes: int = env_field("MINT_MAX_ADAPTER_BYTES", 2 * 1024**3)
    max_workers: int = env_field("MINT_CATALOG_WORKERS", 64)
    migrate: bool = env_field("MINT_MIGRATE", True)

    @property
    def limits(self) -> Limits:
        return Limits(max_rank=self.max_rank, max_bytes=self.max_adapter_bytes)
