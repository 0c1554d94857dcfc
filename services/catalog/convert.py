"""Catalog entities to protobuf messages (and the few inverse conversions servicers need).

No message carries a row id (the `id` fields of Tenant, BaseModel, Policy, Revision, AliasMove and
AuditEvent, and AdapterRef.revision_id, stay 0): ids are catalog-wide and grow with every tenant's
activity, so showing them would tell one tenant how busy the others are. A revision is named by its
address and its bytes by their sha256; the SQL audit views keep the ids for administrators.
"""

from __future__ import annotations

import datetime as dt
import json

from google.protobuf.timestamp_pb2 import Timestamp

from mint.auth import Principal, Role
from mint.errors import invalid
from mint.proto import catalog_pb2 as pb
from mint.scopes import names as scope_names
from services.catalog.store import ImportRecord
from services.catalog.store.entities import (
    LIMIT_FIELDS,
    Alias,
    AliasMove,
    ApiKey,
    AuditEvent,
    BaseModel,
    Policy,
    Revision,
    Tenant,
    TenantLimits,
)

_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
ROLE_TO_PB = {Role.MEMBER: pb.ROLE_MEMBER, Role.SERVICE: pb.ROLE_SERVICE, Role.ADMIN: pb.ROLE_ADMIN}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
STATUS_TO_PB = {"active": pb.REVISION_STATUS_ACTIVE, "retracted": pb.REVISION_STATUS_RETRACTED}


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone; MinT writes UTC
        value = value.replace(tzinfo=dt.UTC)
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def tenant_pb(t: Tenant) -> pb.Tenant:
    return pb.Tenant(name=t.name, created_at=timestamp(t.created_at))


def principal_pb(p: Principal) -> pb.Principal:
    return pb.Principal(
        tenant=p.tenant, key_id=p.key_id, role=ROLE_TO_PB[p.role], scopes=scope_names(p.scopes), key_name=p.key_name,
        expires_at=timestamp(p.expires_at),
    )


def api_key_pb(k: ApiKey) -> pb.ApiKey:
    """A key as listings show it: its secret's hash never leaves the catalog."""
    return pb.ApiKey(
        key_id=k.key_id, tenant=k.tenant, name=k.name, role=ROLE_TO_PB[k.role], scopes=scope_names(k.scopes),
        created_at=timestamp(k.created_at), expires_at=timestamp(k.expires_at), revoked_at=timestamp(k.revoked_at),
    )


def datetime_of(ts: Timestamp, field: str) -> dt.datetime:
    """A Timestamp as an aware UTC datetime; INVALID_ARGUMENT outside Timestamp's range (years 1-9999)."""
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise invalid(f"{field} is {ts.seconds}s {ts.nanos}ns, outside a Timestamp's range (0001-01-01 to 9999-12-31)")
    return ts.ToDatetime(tzinfo=dt.UTC)


def import_record(r: pb.RevisionRecord) -> ImportRecord:
    return ImportRecord(
        policy=r.policy,
        number=r.number,
        sha256=r.sha256,
        rank=r.rank,
        alpha=r.alpha,
        target_modules=tuple(r.target_modules),
        base_model=r.base_model,
        parent_number=r.parent_number or None,
        source=r.source or "import",
        created_at=datetime_of(r.created_at, "created_at") if r.HasField("created_at") else None,
    )


def base_model_pb(m: BaseModel) -> pb.BaseModel:
    return pb.BaseModel(
        name=m.name,
        architecture=m.architecture,
        config_json=json.dumps(m.config, sort_keys=True),
        weights_sha256=m.weights_sha256,
        module_shapes={k: pb.ModuleShape(in_features=v[0], out_features=v[1]) for k, v in m.module_shapes.items()},
        num_layers=m.num_layers,
        created_at=timestamp(m.created_at),
    )


def policy_pb(p: Policy) -> pb.Policy:
    return pb.Policy(
        tenant=p.tenant,
        name=p.name,
        full_name=p.full_name,
        base_model=p.base_model,
        description=p.description,
        head_number=p.head_number,
        created_at=timestamp(p.created_at),
        created_by=p.created_by,
    )


def revision_pb(r: Revision) -> pb.Revision:
    return pb.Revision(
        policy=r.full_policy,
        number=r.number,
        parent_number=r.parent_number or 0,
        address=r.address,
        sha256=r.sha256,
        size_bytes=r.size_bytes,
        rank=r.rank,
        alpha=r.alpha,
        use_rslora=r.use_rslora,
        target_modules=list(r.target_modules),
        format=r.format,
        status=STATUS_TO_PB[r.status],
        source=r.source,
        metrics=r.metrics,
        adapter_config_json=r.adapter_config.to_json(),
        base_model=r.base_model,
        created_by=r.created_by,
        created_at=timestamp(r.created_at),
        retracted_reason=r.retracted_reason or "",
    )


def alias_pb(a: Alias) -> pb.Alias:
    return pb.Alias(policy=a.policy, name=a.name, revision_number=a.revision_number, updated_at=timestamp(a.updated_at))


def alias_move_pb(m: AliasMove) -> pb.AliasMove:
    return pb.AliasMove(
        policy=m.policy,
        alias=m.alias,
        from_number=m.from_number or 0,
        to_number=m.to_number or 0,
        action=m.action,
        actor=m.actor,
        reason=m.reason,
        at=timestamp(m.at),
    )


def audit_event_pb(e: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        at=timestamp(e.at),
        tenant=e.tenant or "",
        actor=e.actor,
        action=e.action,
        policy=e.policy or "",
        revision_number=e.revision_number or 0,
        details_json=json.dumps(e.details, sort_keys=True, default=str),
        key_name=e.key_name or "",
    )


def tenant_limits_pb(limits: TenantLimits) -> pb.TenantLimits:
    message = pb.TenantLimits(tenant=limits.tenant, updated_by=limits.updated_by, updated_at=timestamp(limits.updated_at))
    for name in LIMIT_FIELDS:
        value = getattr(limits, name)
        if value is not None:
            setattr(message, name, value)
    if limits.usage is not None:
        message.usage.CopyFrom(
            pb.TenantUsage(stored_bytes=limits.usage.stored_bytes, revisions=limits.usage.revisions, policies=limits.usage.policies)
        )
    return message


def limit_values(message: pb.TenantLimits) -> dict[str, int | float]:
    """The limits present in a TenantLimits message, by name."""
    return {name: getattr(message, name) for name in LIMIT_FIELDS if message.HasField(name)}
