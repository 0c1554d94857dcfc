"""tenant_limits: each tenant's quotas, and the tenant_quotas view of them beside what the tenant uses

One row per tenant that has any limit; a NULL column (or no row) is no limit. The catalog enforces
max_stored_bytes, max_revisions and max_policies inside the transactions that store; the gateway and the
trainer read the rest (requests per second with its burst, concurrent sampling sequences, concurrent
training sessions) through GetTenantLimits and enforce them with the scheduler library's limiter.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

TENANT_QUOTAS = """
    SELECT t.name AS tenant,
           l.max_stored_bytes, (SELECT coalesce(sum(r.size_bytes), 0) FROM revisions r WHERE r.tenant_id = t.id) AS stored_bytes,
           l.max_revisions, (SELECT count(*) FROM revisions r WHERE r.tenant_id = t.id) AS revisions,
           l.max_policies, (SELECT count(*) FROM policies p WHERE p.tenant_id = t.id) AS policies,
           l.requests_per_second, l.burst, l.max_concurrent_sequences, l.max_concurrent_sessions,
           l.updated_at, l.updated_by
    FROM tenants t
    LEFT JOIN tenant_limits l ON l.tenant_id = t.id
"""


def upgrade() -> None:
    op.create_table(
        "tenant_limits",
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_revisions", sa.BigInteger(), nullable=True),
        sa.Column("max_policies", sa.BigInteger(), nullable=True),
        sa.Column("requests_per_second", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("max_concurrent_sequences", sa.Integer(), nullable=True),
        sa.Column("max_concurrent_sessions", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.CheckConstraint(
            "max_stored_bytes >= 0 AND max_revisions >= 0 AND max_policies >= 0 AND requests_per_second > 0 AND burst >= 1 "
            "AND max_concurrent_sequences >= 0 AND max_concurrent_sessions >= 0",
            name="ck_tenant_limits_ranges",
        ),
    )
    op.execute(f"CREATE VIEW tenant_quotas AS {TENANT_QUOTAS.strip()}")


def downgrade() -> None:
    op.execute("DROP VIEW tenant_quotas")
    op.drop_table("tenant_limits")
