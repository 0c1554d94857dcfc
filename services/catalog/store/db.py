"""The catalog's database handle: engine setup per dialect, transaction scopes, error translation.

Stores never leak SQLAlchemy or driver errors: `write()` and `read()` translate them into `MintError` with
the right code. A value the database refuses (a NUL character in a text column, a number past a column's
range, an over-long string) is the client's INVALID_ARGUMENT, whichever path brought it there: the servers'
request checks refuse such values first, and this is the net under every path that bypasses them. Postgres is what services use; SQLite (one process) is the embedded default, with writers
serialized by BEGIN IMMEDIATE so that two publishers cannot interleave.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from mint.errors import Code, MintError

log = logging.getLogger(__name__)


class Database:
    def __init__(self, url: str, *, pool_size: int = 16):
        self.url = url
        if url.startswith("sqlite"):
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
            _configure_sqlite(self.engine)
        else:
            # No pre-ping: it doubles the round trips of every read. A connection the server dropped fails its
            # query with UNAVAILABLE once, and SQLAlchemy then replaces the pool's stale connections.
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
        self.dialect = self.engine.dialect.name
        # Single-statement reads need no transaction: skipping BEGIN/ROLLBACK saves two round trips.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._writer = self.engine.execution_options(mint_immediate=True)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with self._translated(), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; each statement sees committed data."""
        with self._translated(), self._autocommit.connect() as conn:
            yield conn

    def raw_connection(self):
        """A DBAPI connection for bulk paths (COPY); the caller commits and closes it."""
        return self.engine.raw_connection()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        dbapi = self.engine.dialect.dbapi  # the driver's own errors reach here from raw cursors (COPY)
        try:
            yield
        except MintError:
            raise
        except IntegrityError as err:
            raise _integrity_error(err.orig) from None
        except OperationalError as err:
            raise _unavailable(err) from None
        except DataError as err:
            raise _refused_value(err.orig) from None
        except DBAPIError as err:
            if err.connection_invalidated:
                raise MintError(Code.UNAVAILABLE, "the catalog lost its database connection; retry") from None
            log.exception("database error")
            raise MintError(Code.INTERNAL, "catalog database error; see the catalog log") from None
        except dbapi.IntegrityError as err:
            raise _integrity_error(err) from None
        except dbapi.OperationalError as err:
            raise _unavailable(err) from None
        except dbapi.DataError as err:
            raise _refused_value(err) from None
        except OverflowError as err:  # sqlite3 binding an int past 64 bits raises this, not a DB-API error
            raise _refused_value(err) from None
        except dbapi.Error:
            log.exception("database error")
            raise MintError(Code.INTERNAL, "catalog database error; see the catalog log") from None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get("mint_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _unavailable(err: Exception) -> MintError:
    log.warning("database unavailable: %s", err)
    return MintError(Code.UNAVAILABLE, "the catalog database is unavailable; retry later")


def _refused_value(err: Exception) -> MintError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
    return MintError(Code.INVALID_ARGUMENT, f"the catalog database refused a value: {reason}")


def _integrity_error(err: Exception) -> MintError:
    text = str(err).lower()
    if "unique" in text or "duplicate" in text:
        return MintError(Code.ALREADY_EXISTS, "that already exists (a concurrent request may have created it)")
    if "foreign key" in text:
        return MintError(Code.FAILED_PRECONDITION, "a referenced object does not exist")
    if "append-only" in text:
        return MintError(Code.FAILED_PRECONDITION, "the audit log and alias history are append-only")
    return MintError(Code.INVALID_ARGUMENT, f"rejected by a catalog constraint: {(str(err).splitlines() or [''])[0][:200]}")
