"""The catalog store: one `Database` and one store per aggregate. Entities leave it, rows never do."""

from __future__ import annotations

from services.catalog.store.aliases import AliasStore
from services.catalog.store.audit import AuditStore
from services.catalog.store.base_models import BaseModelStore
from services.catalog.store.blob_index import BlobIndex
from services.catalog.store.bulk import BulkImporter, ImportRecord, ImportResult
from services.catalog.store.db import Database
from services.catalog.store.limits import LimitStore
from services.catalog.store.pages import PageTokens
from services.catalog.store.policies import PolicyStore
from services.catalog.store.revisions import NewRevision, RevisionStore
from services.catalog.store.tenants import TenantStore


class CatalogStore:
    def __init__(self, db: Database):
        self.db = db
        tokens = PageTokens.load(db)
        self.tenants = TenantStore(db, tokens)
        self.blob_index = BlobIndex(db)
        self.base_models = BaseModelStore(db, tokens)
        self.policies = PolicyStore(db, tokens)
        self.revisions = RevisionStore(db, tokens)
        self.aliases = AliasStore(db, tokens)
        self.audit = AuditStore(db, tokens)
        self.bulk = BulkImporter(db)
        self.limits = LimitStore(db)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> CatalogStore:
        if migrate:
            from services.catalog.migrate import upgrade

            upgrade(url)
        return cls(Database(url))

    def close(self) -> None:
        self.db.dispose()


__all__ = ["CatalogStore", "Database", "ImportRecord", "ImportResult", "NewRevision"]
