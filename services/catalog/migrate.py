"""Run the catalog's Alembic migrations programmatically (services call this on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Several services may start at once against one database: migrate one at a time.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7244652)")
            command.upgrade(_config(conn), revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.downgrade(_config(conn), revision)
    finally:
        engine.dispose()
