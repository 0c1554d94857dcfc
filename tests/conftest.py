"""Fixtures every test area shares: fresh Postgres databases, SQLite files, Redis prefixes; and the check
that fails any test during which a server answered INTERNAL or UNKNOWN or logged an unhandled error."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

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


# --- no server errors ---------------------------------------------------------------------------------
# MinT's servers log every INTERNAL answer and every unhandled exception at ERROR (mint.server), and
# grpcio logs the failures it turns into UNKNOWN the same way, so an ERROR record from any logger means a
# client saw, or could have seen, a status no client should ever see. Processes a test starts write their
# logs to files; `assert_clean_logs` reads those.


class _ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_errors(request):
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("server_errors") is None:
        lines = [f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[0].__name__}: {r.exc_info[1]})" if r.exc_info else "") for r in handler.records]
        pytest.fail("servers logged errors during this test (a client saw or could see INTERNAL/UNKNOWN):\n" + "\n".join(lines[:20]))


_SERVER_ERROR = re.compile(r"^Traceback \(most recent call last\)|answered (INTERNAL|UNKNOWN)|unhandled error in|Exception calling application", re.M)


def assert_clean_logs(paths) -> None:
    """Fail when a service process's log (stderr) shows an unhandled error or an INTERNAL/UNKNOWN answer."""
    for path in map(Path, paths):
        text = path.read_text(errors="replace") if path.is_file() else ""
        match = _SERVER_ERROR.search(text)
        if match:
            start = max(0, match.start() - 200)
            pytest.fail(f"{path.name} logged a server error:\n{text[start : match.start() + 2000]}")
