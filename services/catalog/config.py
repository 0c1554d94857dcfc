"""Catalog configuration. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses
import os

from mint.adapters import Limits


@dataclasses.dataclass(kw_only=True, slots=True)
class CatalogConfig:
    database_url: str = "sqlite:///.mint/catalog.db"
    blob_dir: str = ".mint/blobs"
    address: str = "127.0.0.1:0"
    admin_key: str = ""          # ensured to exist at start (bootstraps a deployment)
    admin_tenant: str = "admin"
    max_rank: int = 256
    max_adapter_bytes: int = 2 * 1024**3
    max_workers: int = 64
    migrate: bool = True

    @property
    def limits(self) -> Limits:
        return Limits(max_rank=self.max_rank, max_bytes=self.max_adapter_bytes)

    @classmethod
    def from_env(cls, **overrides) -> CatalogConfig:
        env = os.environ
        values = dict(
            database_url=env.get("MINT_DATABASE_URL", cls.database_url),
            blob_dir=env.get("MINT_BLOB_DIR", cls.blob_dir),
            address=env.get("MINT_CATALOG_ADDRESS", "0.0.0.0:50051"),
            admin_key=env.get("MINT_ADMIN_KEY", ""),
            admin_tenant=env.get("MINT_ADMIN_TENANT", cls.admin_tenant),
        )
        values.update(overrides)
        return cls(**values)
