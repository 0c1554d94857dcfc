"""The catalog store: one `Database` and one store per aggregate. Entities leave it, rows never do."""

from __future__ import annotations

from services.catalog.store.aliases import AliasStore
from services.catalog.store.audit import AuditStore
from services.catalog.store.base_models import BaseModelStore
from services.catalog.store.bulk import BulkImporter, ImportRecord, ImportResult
from services.catalog.store.db import Database
from services.catalog.store.policies import PolicyStore
from services.catalog.store.revisions import NewRevision, RevisionStore
from services.catalog.store.tenants import TenantStore


class CatalogStore:
    def __init__(self, db: Database):
        self.db = db
        self.tenants = TenantStore(db)
        self.base_models = BaseModelStore(db)
        self.policies = PolicyStore(db)
        self.revisions = RevisionStore(db)
        self.aliases = AliasStore(db)
        self.audit = AuditStore(db)
        self.bulk = BulkImporter(db)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> CatalogStore:
        if migrate:
            from services.catalog.migrate import upgrade

            upgrade(url)
        return cls(Database(url))

    def close(self) -> None:
        self.db.dispose()


__all__ = ["CatalogStore", "Database", "ImportRecord", "ImportResult", "NewRevision"]
