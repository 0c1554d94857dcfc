"""The blob index: which content-addressed blobs the catalog holds, their sizes, and the adapter config
each was validated with (what bulk import records must match)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mint.adapters import AdapterConfig
from mint.errors import Code, MintError
from services.catalog.store.db import Database
from services.catalog.store.entities import utcnow
from services.catalog.store.tables import blobs


def insert_blob(conn: Connection, dialect: str, sha256: str, size_bytes: int, config: AdapterConfig) -> None:
    """Index a blob (in the caller's transaction); a blob indexed before configs were recorded gets this one."""
    columns = {
        "rank": config.r,
        "alpha": float(config.lora_alpha),
        "use_rslora": config.use_rslora,
        "target_modules": ",".join(config.target_modules),
    }
    stmt = (postgresql.insert(blobs) if dialect == "postgresql" else sqlite.insert(blobs)).values(
        sha256=sha256, size_bytes=size_bytes, created_at=utcnow(), **columns
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["sha256"], set_={name: stmt.excluded[name] for name in columns}, where=blobs.c.rank.is_(None)
        )
    )


class BlobIndex:
    def __init__(self, db: Database):
        self.db = db

    def record(self, sha256: str, size_bytes: int, config: AdapterConfig, *, store_bytes: Callable[[], None]) -> None:
        """Index an uploaded blob, calling `store_bytes` (which puts its bytes in the blob store) inside the
        transaction once nothing can refuse the upload any more: a refused upload stores nothing, and the
        row never commits before its bytes are in place."""
        with self.db.write() as conn:
            row = conn.execute(
                select(blobs.c.alpha, blobs.c.use_rslora).where(blobs.c.sha256 == sha256).with_for_update()
            ).first()
            # Rank and target modules follow from the bytes (validated against the config); alpha and rsLoRA do not.
            if row is not None and row.alpha is not None and (row.alpha, row.use_rslora) != (float(config.lora_alpha), config.use_rslora):
                raise MintError(
                    Code.ALREADY_EXISTS,
                    f"blob {sha256} is already stored with lora_alpha={row.alpha:g}, use_rslora={str(row.use_rslora).lower()}; "
                    "import it with that config, or publish a revision to use these bytes with another",
                )
            store_bytes()
            insert_blob(conn, self.db.dialect, sha256, size_bytes, config)
