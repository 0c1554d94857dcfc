"""A normalized, deterministic text dump of the catalog schema on Postgres (tables, columns, constraints,
indexes, views, triggers), compared by a test with the committed `migrations/schema.sql`.

    python -m services.catalog.schema_dump postgresql+psycopg://postgres@127.0.0.1/scratch > migrations/schema.sql
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine, text

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


if __name__ == "__main__":
    sys.stdout.write(dump(sys.argv[1]))
