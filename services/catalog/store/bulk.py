"""Bulk import of revision records that reference already-uploaded blobs (catalog migrations, backfills).

Records stream into a temporary staging table (COPY on Postgres, executemany on SQLite); then set-based
SQL checks them all (tenants, base models, blobs, dense numbering that continues each policy's head),
creates missing policies, inserts the revisions, advances heads and `latest`, and writes one audit event,
all in one transaction: every record lands or none does.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

from mint.adapters import AdapterConfig
from mint.errors import MintError, invalid, not_found, precondition
from mint.names import MAX_REVISION_NUMBER, PolicyName, check_sha256
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import Usage, utcnow
from services.catalog.store.limits import enforce
from services.catalog.store.revisions import FORMAT, check_revision_fields

_STAGING_COLUMNS = (
    "ordinal", "tenant", "policy", "base_model", "number", "parent_number", "sha256", "rank", "alpha", "target_modules", "source",
    "created_at",
)
_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_LABEL = "s.ordinal || ' (' || s.tenant || '/' || s.policy || '@' || s.number || ')' AS label"  # as _record_label
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
CLOCK_SKEW = dt.timedelta(hours=1)  # how far past the catalog's clock an imported created_at may be


class ImportRecord(NamedTuple):
    """One revision to import (a tuple: a million of them must be cheap to make)."""

    policy: str  # tenant/policy
    number: int
    sha256: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str = ""  # needed only when the policy does not exist yet
    parent_number: int | None = None
    source: str = "import"
    created_at: dt.datetime | None = None  # timezone-aware; when the revision was first made elsewhere


@dataclasses.dataclass(frozen=True, slots=True)
class ImportResult:
    revisions: int
    policies_created: int


class _RowEncoder:
    """Turns records into staging rows, validating each on its own; per-policy and per-config work is cached.
    What needs the database (tenants, blobs and their configs, numbering) is checked set-wise after staging."""

    def __init__(self) -> None:
        self._policies: dict[str, tuple[str, str]] = {}
        self._configs: dict[tuple[int, float, tuple[str, ...]], str] = {}
        self._latest = utcnow() + CLOCK_SKEW

    def row(self, ordinal: int, r: ImportRecord) -> tuple[Any, ...]:
        names = self._policies.get(r.policy)
        if names is None:
            parsed = PolicyName.parse(r.policy)
            if parsed.tenant is None:
                raise invalid(f"bulk records must name tenant/policy, got {r.policy!r}")
            names = self._policies[r.policy] = (parsed.tenant, parsed.name)
        config_key = (r.rank, r.alpha, r.target_modules)
        modules = self._configs.get(config_key)
        if modules is None:  # the same checks as any adapter config: rank, alpha and scale ranges, module names
            config = AdapterConfig(r=r.rank, lora_alpha=r.alpha, target_modules=r.target_modules)
            modules = self._configs[config_key] = ",".join(config.target_modules)
        if not 1 <= r.number <= MAX_REVISION_NUMBER or (r.parent_number is not None and not 1 <= r.parent_number < r.number):
            raise invalid(f"number {r.number} must be in 1..{MAX_REVISION_NUMBER} and a parent an earlier revision (got {r.parent_number})")
        check_sha256(r.sha256)
        check_revision_fields(source=r.source)
        if r.created_at is not None and not (
            r.created_at.tzinfo is not None and EARLIEST <= r.created_at <= self._latest
        ):
            raise invalid(
                f"created_at {r.created_at.isoformat()} must be a UTC time from {EARLIEST.date()} to no later than "
                f"{CLOCK_SKEW} past the catalog's clock"
            )
        return (ordinal, names[0], names[1], r.base_model, r.number, r.parent_number, r.sha256, r.rank, r.alpha, modules, r.source, r.created_at)


def _rows(batches: Iterable[Iterable[ImportRecord]]) -> Iterator[tuple[Any, ...]]:
    """Staging rows; a fault in a record, found while it is read or checked, names its place in the stream."""
    encoder = _RowEncoder()
    ordinal = 0
    for batch in batches:  # a fault in the stream itself (not in a record) passes through as it is
        records = iter(batch)
        while True:
            record = None
            try:
                record = next(records, None)
                if record is None:
                    break
                row = encoder.row(ordinal, record)
            except MintError as err:
                raise MintError(err.code, f"{_record_label(ordinal, record)}: {err.message}") from None
            yield row
            ordinal += 1


def _record_label(ordinal: int, record: ImportRecord | None) -> str:
    """How errors name a record: its index in the stream (from 0), and what it says it is when it says."""
    if record is None:
        return f"record {ordinal}"
    return f"record {ordinal} ({str(record.policy)[:80]}@{record.number})"


def _copy_line(row: tuple[Any, ...]) -> str:
    """One line of COPY text format; free-text fields are escaped, names were validated."""
    ordinal, tenant, policy, base, number, parent, sha, rank, alpha, modules, source, created = row
    parent = _NULL if parent is None else parent
    created = _NULL if created is None else created.isoformat()
    base, source = base.translate(_COPY_ESCAPES), source.translate(_COPY_ESCAPES)
    return f"{ordinal}\t{tenant}\t{policy}\t{base}\t{number}\t{parent}\t{sha}\t{rank}\t{alpha!r}\t{modules}\t{source}\t{created}\n"


def _batched(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


class BulkImporter:
    def __init__(self, db: Database):
        self.db = db

    def import_records(self, batches: Iterable[Iterable[ImportRecord]], *, actor: str) -> ImportResult:
        with self.db.write() as conn:
            staged = self._stage(conn, _rows(batches))
            if staged == 0:
                raise invalid("the import stream held no records")
            return self._apply(conn, staged, actor)

    def _stage(self, conn: Connection, rows: Iterable[tuple[Any, ...]]) -> int:
        pg = self.db.is_postgres
        conn.exec_driver_sql(
            "CREATE TEMP TABLE import_staging (ordinal bigint, tenant text, policy text, base_model text, number integer, "
            "parent_number integer, sha256 text, rank integer, alpha double precision, target_modules text, "
            f"source text, created_at {'timestamptz' if pg else 'timestamp'})" + (" ON COMMIT DROP" if pg else "")
        )
        count = 0
        if pg:
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY import_staging ({', '.join(_STAGING_COLUMNS)}) FROM STDIN") as copy:
                for batch in _batched(rows, 10_000):
                    copy.write("".join(map(_copy_line, batch)))
                    count += len(batch)
            cursor.close()
        else:
            insert_sql = f"INSERT INTO import_staging VALUES ({', '.join('?' * len(_STAGING_COLUMNS))})"
            for batch in _batched(rows, 10_000):
                conn.exec_driver_sql(insert_sql, batch)
                count += len(batch)
        return count

    def _apply(self, conn: Connection, staged: int, actor: str) -> ImportResult:
        pg = self.db.is_postgres
        jsonb = "::jsonb" if pg else ""
        now = utcnow()
        one = conn.execute
        bad = one(
            text(
                f"SELECT {_LABEL}, s.tenant FROM import_staging s LEFT JOIN tenants t ON t.name = s.tenant "
                "WHERE t.id IS NULL ORDER BY s.ordinal LIMIT 1"
            )
        ).first()
        if bad is not None:
            raise not_found(f"record {bad.label}: tenant {bad.tenant!r} does not exist")
        # Each record must describe its blob as the blob's own config (validated against its bytes on upload) does.
        bad = one(
            text(
                f"SELECT {_LABEL}, s.sha256, s.rank, s.alpha, s.target_modules, b.sha256 AS found, b.rank AS blob_rank, "
                "b.alpha AS blob_alpha, b.target_modules AS blob_modules "
                "FROM import_staging s LEFT JOIN blobs b ON b.sha256 = s.sha256 "
                "WHERE b.sha256 IS NULL OR b.rank IS NULL OR s.rank <> b.rank OR s.alpha <> b.alpha OR s.target_modules <> b.target_modules "
                "ORDER BY s.ordinal LIMIT 1"
            )
        ).first()
        if bad is not None and bad.found is None:
            raise not_found(f"record {bad.label}: blob {bad.sha256} was not uploaded")
        if bad is not None and bad.blob_rank is None:
            raise precondition(f"record {bad.label}: blob {bad.sha256} was stored before the catalog recorded configs; upload it again")
        if bad is not None:
            raise invalid(
                f"record {bad.label} says rank {bad.rank}, alpha {bad.alpha:g}, target_modules {bad.target_modules.split(',')} "
                f"but blob {bad.sha256} holds an adapter with rank {bad.blob_rank}, alpha {bad.blob_alpha:g}, "
                f"target_modules {bad.blob_modules.split(',')}"
            )
        # Policies that do not exist yet are created, which needs a registered base model.
        new_policies = one(
            text(
                "SELECT s.tenant, s.policy, max(s.base_model) AS base_model, min(s.base_model) AS base_min "
                "FROM import_staging s JOIN tenants t ON t.name = s.tenant "
                "LEFT JOIN policies p ON p.tenant_id = t.id AND p.name = s.policy "
                "WHERE p.id IS NULL GROUP BY s.tenant, s.policy"
            )
        ).all()
        for row in new_policies:
            if not row.base_model or row.base_model != row.base_min:
                raise invalid(f"policy {row.tenant}/{row.policy} does not exist; its records must all name one base_model to create it")
        if new_policies:
            unknown = one(
                text(
                    "SELECT DISTINCT s.base_model FROM import_staging s LEFT JOIN base_models b ON b.name = s.base_model "
                    "WHERE s.base_model <> '' AND b.id IS NULL LIMIT 1"
                )
            ).scalar()
            if unknown:
                raise not_found(f"bulk import names base model {unknown!r}, which is not registered")
            one(
                text(
                    "INSERT INTO policies (tenant_id, name, base_model_id, description, head_number, created_at, created_by) "
                    "SELECT t.id, s.policy, b.id, '', 0, :now, :actor "
                    "FROM (SELECT tenant, policy, max(base_model) AS base_model FROM import_staging GROUP BY tenant, policy) s "
                    "JOIN tenants t ON t.name = s.tenant JOIN base_models b ON b.name = s.base_model "
                    "WHERE NOT EXISTS (SELECT 1 FROM policies p WHERE p.tenant_id = t.id AND p.name = s.policy)"
                ),
                {"now": now, "actor": actor},
            )
        if pg:  # lock the batch's policies (in id order: no deadlocks) before reading their heads
            one(
                text(
                    "SELECT p.id FROM policies p JOIN tenants t ON t.id = p.tenant_id "
                    "WHERE (t.name, p.name) IN (SELECT tenant, policy FROM import_staging) ORDER BY p.id FOR UPDATE OF p"
                )
            )
        one(
            text(
                "CREATE TEMP TABLE import_heads AS "
                "SELECT p.id AS policy_id, p.tenant_id, count(*) AS n, count(DISTINCT s.number) AS distinct_n, "
                "min(s.number) AS lo, max(s.number) AS hi, min(p.name) AS policy, min(s.tenant) AS tenant "
                "FROM import_staging s JOIN tenants t ON t.name = s.tenant "
                "JOIN policies p ON p.tenant_id = t.id AND p.name = s.policy "
                "GROUP BY p.id, p.tenant_id"
            )
        )
        bad = one(
            text(
                "SELECT h.tenant, h.policy, p.head_number AS head, h.lo, h.hi, h.n, h.distinct_n "
                "FROM import_heads h JOIN policies p ON p.id = h.policy_id "
                "WHERE h.lo <> p.head_number + 1 OR h.hi <> p.head_number + h.n OR h.distinct_n <> h.n LIMIT 1"
            )
        ).first()
        if bad is not None:
            raise invalid(
                f"records for {bad.tenant}/{bad.policy} must number {bad.head + 1}..{bad.head + bad.n} without gaps "
                f"or repeats (its head is {bad.head}); got {bad.lo}..{bad.hi} with {bad.distinct_n} distinct of {bad.n}"
            )
        one(
            text(
                "INSERT INTO revisions (tenant_id, policy_id, number, parent_number, sha256, size_bytes, rank, alpha, "
                "use_rslora, target_modules, format, status, source, metrics, created_by, created_at) "
                "SELECT h.tenant_id, h.policy_id, s.number, s.parent_number, s.sha256, b.size_bytes, s.rank, s.alpha, "
                f"b.use_rslora, s.target_modules, :format, 'active', s.source, '{{}}'{jsonb}, :actor, COALESCE(s.created_at, :now) "
                "FROM import_staging s JOIN tenants t ON t.name = s.tenant "
                "JOIN import_heads h ON h.tenant_id = t.id AND h.policy = s.policy "
                "JOIN blobs b ON b.sha256 = s.sha256"
            ),
            {"format": FORMAT, "actor": actor, "now": now},
        )
        # The storage limits of the import's tenants that have any, on their counts with this import's rows
        # (limits rows locked after the policy rows, in id order, as every storing path does).
        created_by_tenant = collections.Counter(row.tenant for row in new_policies)
        if one(text("SELECT 1 FROM import_heads h JOIN tenant_limits l ON l.tenant_id = h.tenant_id LIMIT 1")).first():
            added = one(
                text(
                    "SELECT h.tenant_id, min(h.tenant) AS tenant, count(*) AS revisions, sum(b.size_bytes) AS stored_bytes "
                    "FROM import_staging s JOIN tenants t ON t.name = s.tenant "
                    "JOIN import_heads h ON h.tenant_id = t.id AND h.policy = s.policy "
                    "JOIN tenant_limits l ON l.tenant_id = h.tenant_id "
                    "JOIN blobs b ON b.sha256 = s.sha256 GROUP BY h.tenant_id ORDER BY h.tenant_id"
                )
            ).all()
            for row in added:
                adding = Usage(stored_bytes=int(row.stored_bytes), revisions=int(row.revisions), policies=created_by_tenant[row.tenant])
                enforce(conn, row.tenant_id, row.tenant, adding, written=True)
        # A join, not a correlated subquery: the temp table has no index, so the subquery scanned all of it once
        # per policy (importing 100,000 new policies, that statement alone had run 4 minutes when it was stopped).
        one(text("UPDATE policies SET head_number = h.hi FROM import_heads h WHERE h.policy_id = policies.id"))
        one(
            text(
                "INSERT INTO alias_moves (policy_id, alias, from_number, to_number, action, actor, reason, at) "
                "SELECT h.policy_id, 'latest', a.revision_number, h.hi, 'import', :actor, '', :now "
                "FROM import_heads h LEFT JOIN aliases a ON a.policy_id = h.policy_id AND a.name = 'latest'"
            ),
            {"actor": actor, "now": now},
        )
        one(
            text(
                "INSERT INTO aliases (policy_id, name, revision_number, updated_at) "
                "SELECT policy_id, 'latest', hi, :now FROM import_heads WHERE true "
                "ON CONFLICT (policy_id, name) DO UPDATE SET revision_number = excluded.revision_number, updated_at = excluded.updated_at"
            ),
            {"now": now},
        )
        # Each tenant's event counts only its own share: one import may span tenants, who must not see each other.
        shares = one(text("SELECT tenant_id, min(tenant) AS tenant, count(*) AS policies, sum(n) AS revisions FROM import_heads GROUP BY tenant_id")).all()
        one(text("DROP TABLE import_heads"))
        if not pg:
            one(text("DROP TABLE import_staging"))
        for share in shares:
            details = {"revisions": int(share.revisions), "policies": share.policies, "policies_created": created_by_tenant[share.tenant]}
            record_event(conn, tenant_id=share.tenant_id, actor=actor, action="bulk_import", details=details)
        return ImportResult(revisions=staged, policies_created=len(new_policies))
