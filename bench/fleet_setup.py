"""Setting up fleet benchmarks: a scratch Postgres database and many distinct published adapters."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import random_adapter
from mint.models.config import ModelConfig
from mint.proto import catalog_pb2
from services.local_fleet import BASE_MODEL, TENANT, LocalFleet


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    server = os.environ.get("MINT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"mint_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def publish_distinct(fleet: LocalFleet, config: ModelConfig, count: int, *, rank: int, modules: tuple[str, ...], workers: int = 4) -> list[str]:
    """`count` policies each with one revision of its own distinct adapter, through the catalog's bulk
    path (UploadBlob per blob, then one ImportRevisions stream). Returns the revision refs."""
    started = time.perf_counter()

    def upload(i: int) -> str:
        weights = random_adapter(config, rank=rank, seed=i, modules=modules)
        return fleet.admin.upload_blob(BASE_MODEL, weights.config.to_json(), weights.to_safetensors()).sha256

    with ThreadPoolExecutor(workers) as pool:
        shas = list(pool.map(upload, range(count)))
    records = (
        catalog_pb2.RevisionRecord(
            policy=f"{TENANT}/sweep-{i:06d}", base_model=BASE_MODEL, number=1, sha256=sha, rank=rank, alpha=2 * rank,
            target_modules=list(modules), source="bench",
        )
        for i, sha in enumerate(shas)
    )
    fleet.admin.import_revisions(records)
    print(f"published {count:,} distinct adapters in {time.perf_counter() - started:.1f}s", flush=True)
    return [f"{TENANT}/sweep-{i:06d}@1" for i in range(count)]
