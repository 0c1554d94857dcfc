"""initial schema: tenants, keys, base models, policies, blobs, revisions, aliases, alias moves, audit events

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(12), nullable=False, unique=True),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.CheckConstraint("role IN ('member', 'service', 'admin')", name="ck_api_keys_role"),
    )
    op.create_table(
        "base_models",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("config", Json, nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("module_shapes", Json, nullable=False),
        sa.Column("num_layers", sa.Integer, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "policies",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("base_model_id", Id, sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("head_number", sa.Integer, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_policies_tenant_name"),
    )
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "revisions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        # No foreign keys on purpose: see services/catalog/store/tables.py.
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("policy_id", Id, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("parent_number", sa.Integer, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("use_rslora", sa.Boolean, nullable=False),
        sa.Column("target_modules", sa.String(128), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("metrics", Json, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("retracted_at", Timestamp, nullable=True),
        sa.Column("retracted_reason", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.UniqueConstraint("policy_id", "number", name="uq_revisions_policy_number"),
        sa.CheckConstraint("number >= 1", name="ck_revisions_number"),
        sa.CheckConstraint("status IN ('active', 'retracted')", name="ck_revisions_status"),
    )
    op.create_index("ix_revisions_tenant_id", "revisions", ["tenant_id", "id"])
    # NULL keys never collide, so only keyed publishes are constrained.
    op.create_index("ix_revisions_idempotency", "revisions", ["policy_id", "idempotency_key"], unique=True)
    op.create_table(
        "aliases",
        sa.Column("policy_id", Id, sa.ForeignKey("policies.id"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("revision_number", sa.Integer, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["policy_id", "revision_number"], ["revisions.policy_id", "revisions.number"], name="fk_aliases_revision"
        ),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("policy_id", Id, sa.ForeignKey("policies.id"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_number", sa.Integer, nullable=True),
        sa.Column("to_number", sa.Integer, nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", Timestamp, nullable=False),
    )
    op.create_index("ix_alias_moves_policy_alias", "alias_moves", ["policy_id", "alias", "id"])
    op.create_table(
        "audit_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("policy_id", Id, sa.ForeignKey("policies.id"), nullable=True),
        sa.Column("revision_number", sa.Integer, nullable=True),
        sa.Column("details", Json, nullable=False),
    )
    op.create_index("ix_audit_events_tenant", "audit_events", ["tenant_id", "id"])
    op.create_index("ix_audit_events_policy", "audit_events", ["policy_id", "id"])


def downgrade() -> None:
    for table in ("audit_events", "alias_moves", "aliases", "revisions", "blobs", "policies", "base_models", "api_keys", "tenants"):
        op.drop_table(table)
