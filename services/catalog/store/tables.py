"""The catalog's tables as SQLAlchemy Core objects, for queries. The schema itself is owned by the
Alembic migrations in `migrations/`; a test checks that these definitions match them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# SQLite only autoincrements INTEGER PRIMARY KEY; Postgres gets bigint identities.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", Timestamp, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key_id", String(12), nullable=False, unique=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
    Column("scopes", String(64), nullable=False),  # scope names, comma-separated, in mint.scopes.Scope order
    Column("expires_at", Timestamp, nullable=True),
    CheckConstraint("role IN ('member', 'service', 'admin')", name="ck_api_keys_role"),
    Index("uq_api_keys_tenant_name", "tenant_id", "name", unique=True),
)

base_models = Table(
    "base_models",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("architecture", String(64), nullable=False),
    Column("config", Json, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("module_shapes", Json, nullable=False),
    Column("num_layers", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("base_model_id", Id, ForeignKey("base_models.id"), nullable=False),
    Column("description", Text, nullable=False),
    Column("head_number", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(64), nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_policies_tenant_name"),
)

# A blob's adapter config is the one its bytes were validated with; bulk import records must match it.
# NULL only for blobs stored before the catalog recorded configs and not uploaded again since.
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("rank", Integer, nullable=True),
    Column("alpha", Float, nullable=True),
    Column("use_rslora", Boolean, nullable=True),
    Column("target_modules", String(128), nullable=True),
)

# Revisions carry no foreign keys: they are written only by the store's publish and bulk paths, which
# check every reference (set-wise, for bulk), and per-row FK triggers would double a 10^6-row import.
revisions = Table(
    "revisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, nullable=False),
    Column("policy_id", Id, nullable=False),
    Column("number", Integer, nullable=False),
    Column("parent_number", Integer, nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("alpha", Float, nullable=False),
    Column("use_rslora", Boolean, nullable=False),
    Column("target_modules", String(128), nullable=False),  # comma-separated, in LORA_MODULES order
    Column("format", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("source", String(256), nullable=False),
    Column("metrics", Json, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("retracted_at", Timestamp, nullable=True),
    Column("retracted_reason", Text, nullable=True),
    Column("idempotency_key", String(128), nullable=True),
    UniqueConstraint("policy_id", "number", name="uq_revisions_policy_number"),
    CheckConstraint("number >= 1", name="ck_revisions_number"),
    CheckConstraint("status IN ('active', 'retracted')", name="ck_revisions_status"),
    Index("ix_revisions_tenant_id", "tenant_id", "id"),
    Index("ix_revisions_idempotency", "policy_id", "idempotency_key", unique=True),
)

aliases = Table(
    "aliases",
    metadata,
    Column("policy_id", Id, ForeignKey("policies.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("revision_number", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    ForeignKeyConstraint(
        ["policy_id", "revision_number"], ["revisions.policy_id", "revisions.number"], name="fk_aliases_revision"
    ),
)

alias_moves = Table(
    "alias_moves",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("policy_id", Id, ForeignKey("policies.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("from_number", Integer, nullable=True),
    Column("to_number", Integer, nullable=True),
    Column("action", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Timestamp, nullable=False),
    Index("ix_alias_moves_policy_alias", "policy_id", "alias", "id"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", Timestamp, nullable=False),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=True),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("policy_id", Id, ForeignKey("policies.id"), nullable=True),
    Column("revision_number", Integer, nullable=True),
    Column("details", Json, nullable=False),
    Index("ix_audit_events_tenant", "tenant_id", "id"),
    Index("ix_audit_events_policy", "policy_id", "id"),
)

# Secrets the catalog makes for itself, once per database (services.catalog.store.pages: the page-token key).
catalog_secrets = Table(
    "catalog_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# A tenant's quotas (services.catalog.store.limits); a NULL column, or no row, is no limit.
tenant_limits = Table(
    "tenant_limits",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), primary_key=True),
    Column("max_stored_bytes", BigInteger, nullable=True),
    Column("max_revisions", BigInteger, nullable=True),
    Column("max_policies", BigInteger, nullable=True),
    Column("requests_per_second", Float, nullable=True),
    Column("burst", Integer, nullable=True),
    Column("max_concurrent_sequences", Integer, nullable=True),
    Column("max_concurrent_sessions", Integer, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(64), nullable=False),
    CheckConstraint(
        "max_stored_bytes >= 0 AND max_revisions >= 0 AND max_policies >= 0 AND requests_per_second > 0 AND burst >= 1 "
        "AND max_concurrent_sequences >= 0 AND max_concurrent_sessions >= 0",
        name="ck_tenant_limits_ranges",
    ),
)
