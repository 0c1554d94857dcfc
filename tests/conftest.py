"""Fixtures every test area shares: fresh Postgres databases, SQLite files, Redis prefixes."""

from __future__ import annotations

import os
import uuid

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# Triton reads this once, when kernels are defined: without a GPU the kernel tests run Triton's interpreter
# on CPU tensors, and another test area may define the kernels first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TEST_DATABASE_URL = os.environ.get("MINT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("MINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def create_database() -> str:
    """A new, empty Postgres database; returns its URL. Pair with drop_database."""
    name = f"mint_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url():
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request, tmp_path):
    """The same test on Postgres and on SQLite (the store's contract holds on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def redis_prefix():
    return f"mint-test:{uuid.uuid4().hex[:12]}:"
