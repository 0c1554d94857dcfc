"""Alembic environment for the catalog. The database URL comes from, in order: a connection passed by
`services.catalog.migrate` in `config.attributes`, `-x url=...` on the alembic command line, or
MINT_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("MINT_DATABASE_URL")
    if not url:
        raise SystemExit("set MINT_DATABASE_URL or pass -x url=postgresql+psycopg://...")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
