"""Tenant quotas: the tenant_limits rows (set by admins, audited) and the storage checks every path that
stores runs inside its own transaction.

`enforce` locks the tenant's limits row (Postgres: FOR UPDATE; SQLite serializes writers already), then
counts what the tenant stores: two publishers of one tenant are serialized on that row, so together they
cannot pass a limit. Every storing path takes the row last, after its policy rows, so lock order is the
same everywhere. A tenant without limits has no row and takes no lock.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from mint.errors import invalid, not_found
from services.catalog.store.audit import record_event
from services.catalog.store.db import Database
from services.catalog.store.entities import LIMIT_FIELDS, TenantLimits, Usage, utcnow
from services.catalog.store.tables import policies, revisions, tenant_limits, tenants
from services.scheduler.quotas import QuotaExceeded

_MAX = {"burst": 2**31 - 1, "max_concurrent_sequences": 2**31 - 1, "max_concurrent_sessions": 2**31 - 1}
_STORAGE = {"max_stored_bytes": "stored_bytes", "max_revisions": "revisions", "max_policies": "policies"}
_NOUN = {"stored_bytes": "bytes", "revisions": "revisions", "policies": "policies"}


def check_limit(name: str, value: Any) -> int | float:
    """A limit's value as stored: INVALID_ARGUMENT naming the limit and the valid range."""
    if name not in LIMIT_FIELDS:
        raise invalid(f"unknown limit {name[:40]!r}; limits are {', '.join(LIMIT_FIELDS)}")
    if name == "requests_per_second":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1e9:
            raise invalid(f"requests_per_second must be a number in (0, 1e9], got {value!r}")
        return float(value)
    low, high = (1 if name == "burst" else 0), _MAX.get(name, 2**63 - 1)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{name} must be a whole number in {low}..{high}, got {value!r}")
    return value


def usage(conn: Connection, tenant_id: int) -> Usage:
    stored, count = conn.execute(
        select(func.coalesce(func.sum(revisions.c.size_bytes), 0), func.count()).where(revisions.c.tenant_id == tenant_id)
    ).one()
    owned = conn.execute(select(func.count()).select_from(policies).where(policies.c.tenant_id == tenant_id)).scalar_one()
    return Usage(stored_bytes=int(stored), revisions=int(count), policies=int(owned))


def enforce(conn: Connection, tenant_id: int, tenant: str, adding: Usage, *, written: bool = False) -> None:
    """QuotaExceeded when what `tenant` stores plus `adding` passes one of its storage limits. `written`: the
    caller's transaction already holds `adding` (so the count includes it)."""
    row = conn.execute(select(tenant_limits).where(tenant_limits.c.tenant_id == tenant_id).with_for_update()).first()
    if row is None or all(getattr(row, limit) is None for limit in _STORAGE):
        return
    now = usage(conn, tenant_id)
    if written:
        now = Usage(**{k: getattr(now, k) - getattr(adding, k) for k in _NOUN})
    for limit, measure in _STORAGE.items():
        value, more = getattr(row, limit), getattr(adding, measure)
        if value is None or not more or getattr(now, measure) + more <= value:
            continue
        noun = _NOUN[measure]
        raise QuotaExceeded(
            f"tenant {tenant} has {getattr(now, measure)} {noun}; {more} more would pass its limit ({limit}={value}). "
            f"Retry once an admin raises it (mint limits set {tenant} --{limit.replace('_', '-')} N)"
            + ("" if measure == "policies" else "; retracting revisions does not free their storage"),
            tenant=tenant, limit=limit, retry_after_s=None,
        )


class LimitStore:
    def __init__(self, db: Database):
        self.db = db

    def get(self, tenant: str, *, with_usage: bool = False) -> TenantLimits:
        with self.db.read() as conn:
            tenant_id = _tenant_id(conn, tenant)
            row = conn.execute(select(tenant_limits).where(tenant_limits.c.tenant_id == tenant_id)).first()
            used = usage(conn, tenant_id) if with_usage else None
        return _entity(tenant, row, used)

    def set(self, tenant: str, values: dict[str, Any], clear: set[str], *, actor: str) -> TenantLimits:
        """Set the limits in `values`, remove those in `clear` (no limit), keep the others; audited."""
        checked = {name: check_limit(name, value) for name, value in values.items()}
        unknown = sorted(set(clear) - set(LIMIT_FIELDS))
        if unknown:
            raise invalid(f"unknown limit {unknown[0][:40]!r}; limits are {', '.join(LIMIT_FIELDS)}")
        both = sorted(set(checked) & clear)
        if both:
            raise invalid(f"limit {both[0]} is both set and cleared; do one")
        if not checked and not clear:
            raise invalid(f"name at least one limit to set or clear; limits are {', '.join(LIMIT_FIELDS)}")
        changes: dict[str, Any] = {**checked, **{name: None for name in clear}}
        with self.db.write() as conn:
            tenant_id = _tenant_id(conn, tenant)
            stamp = {"updated_at": utcnow(), "updated_by": actor}
            exists = conn.execute(select(tenant_limits.c.tenant_id).where(tenant_limits.c.tenant_id == tenant_id).with_for_update()).first()
            if exists is None:
                conn.execute(insert(tenant_limits).values(tenant_id=tenant_id, **changes, **stamp))
            else:
                conn.execute(update(tenant_limits).where(tenant_limits.c.tenant_id == tenant_id).values(**changes, **stamp))
            record_event(conn, tenant_id=tenant_id, actor=actor, action="set_limits", details=changes)
            row = conn.execute(select(tenant_limits).where(tenant_limits.c.tenant_id == tenant_id)).one()
        return _entity(tenant, row, None)


def _tenant_id(conn: Connection, tenant: str) -> int:
    tenant_id = conn.execute(select(tenants.c.id).where(tenants.c.name == tenant)).scalar()
    if tenant_id is None:
        raise not_found(f"tenant {tenant!r} not found")
    return tenant_id


def _entity(tenant: str, row, used: Usage | None) -> TenantLimits:
    if row is None:
        return TenantLimits(tenant=tenant, usage=used)
    at = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.UTC)  # SQLite keeps no zone
    return TenantLimits(tenant=tenant, usage=used, updated_by=row.updated_by, updated_at=at, **{name: getattr(row, name) for name in LIMIT_FIELDS})
