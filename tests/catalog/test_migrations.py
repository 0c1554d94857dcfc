"""Migrations on a fresh Postgres database: the result matches the committed schema dump and the store's
table definitions, and every migration downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.catalog.migrate import MIGRATIONS_DIR, downgrade, upgrade
from services.catalog.schema_dump import dump
from services.catalog.store.tables import metadata

SCHEMA_FILE = MIGRATIONS_DIR / "schema.sql"


def test_migrated_schema_matches_the_committed_dump(pg_url):
    upgrade(pg_url)
    assert dump(pg_url) == SCHEMA_FILE.read_text(), (
        "schema drifted: regenerate with python -m services.catalog.schema_dump URL > migrations/schema.sql"
    )


def test_store_tables_match_the_migrations(pg_url):
    upgrade(pg_url)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_up_again(pg_url, sqlite_url):
    for url in (pg_url, sqlite_url):
        upgrade(url)
        downgrade(url, "base")
        engine = create_engine(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        engine.dispose()
        upgrade(url)


def test_every_migration_file_has_a_slug_and_a_downgrade():
    for path in sorted(Path(MIGRATIONS_DIR, "versions").glob("*.py")):
        number, _, slug = path.stem.partition("_")
        assert number.isdigit() and slug, path.name
        assert "def downgrade()" in path.read_text(), path.name
