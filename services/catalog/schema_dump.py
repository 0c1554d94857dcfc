"""A normalized, deterministic text dump of the catalog schema on Postgres (tables, columns, constraints,
indexes, views, triggers), compared by a test with the committed `migrations/schema.sql`.

    python -m services.catalog.schema_dump > migrations/schema.sql     # migrates a scratch database
    python -m services.catalog.schema_dump URL                         # dumps an existing database
"""

from __future__ import annotations

import os
import sys
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

_QUERIES = {
    "column": """
        SELECT table_name || '.' || column_name || ' ' || data_type
               || CASE WHEN character_maximum_length IS NOT NULL THEN '(' || character_maximum_length || ')' ELSE '' END
               || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
               || CASE WHEN column_default IS NOT NULL THEN ' DEFAULT ' || column_default ELSE '' END
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'alembic_version'
        ORDER BY table_name, ordinal_position""",
    "constraint": """
        SELECT c.conrelid::regclass || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> 'alembic_version' ORDER BY 1""",
    "index": """
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY indexname""",
    "view": """
        SELECT viewname || ' AS ' || regexp_replace(pg_get_viewdef(viewname::regclass, true), '\\s+', ' ', 'g')
        FROM pg_views WHERE schemaname = 'public' ORDER BY viewname""",
    "trigger": """
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY t.tgname""",
}


def dump(url: str) -> str:
    engine = create_engine(url)
    lines = ["-- catalog schema after all migrations; regenerate with python -m services.catalog.schema_dump URL"]
    try:
        with engine.connect() as conn:
            for kind, query in _QUERIES.items():
                lines += [f"{kind} {row[0].strip()}" for row in conn.execute(text(query))]
    finally:
        engine.dispose()
    return "\n".join(lines) + "\n"


def dump_fresh(server_url: str) -> str:
    """Migrate a scratch database on `server_url`'s server, dump it, drop it."""
    from services.catalog.migrate import upgrade

    name = f"mint_schema_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        return dump(url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.stdout.write(dump(sys.argv[1]))
    else:
        sys.stdout.write(dump_fresh(os.environ.get("MINT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")))
