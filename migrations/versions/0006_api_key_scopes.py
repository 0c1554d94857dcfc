"""api_keys: scopes, expiry, and names unique within a tenant (revocation already has revoked_at)

A key holds a set of scopes (mint/scopes.py), stored as their names joined by commas in the canonical
order. Existing keys keep what they could do: a member or service key holds every scope but admin, an
admin key all of them. Keys are revoked and listed by name, so names become unique per tenant; an existing
duplicate (only possible before this revision) keeps its name with "~<key_id>" appended, the first key of
each name keeping it as it was.

The unique index is an index rather than a table constraint, and the new columns are added in place, so
SQLite needs no table rebuild (which the audit_log view, joining api_keys, would refuse).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MEMBER_SCOPES = "read,sample,train,publish"
ALL_SCOPES = "read,sample,train,publish,admin"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("scopes", sa.String(64), nullable=False, server_default=MEMBER_SCOPES))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(f"UPDATE api_keys SET scopes = '{ALL_SCOPES}' WHERE role = 'admin'")
    if op.get_bind().dialect.name == "postgresql":  # SQLite cannot drop a column default; the store always sets it
        op.alter_column("api_keys", "scopes", server_default=None)
    op.execute(
        "UPDATE api_keys SET name = substr(name, 1, 115) || '~' || key_id "
        "WHERE id NOT IN (SELECT min(id) FROM api_keys GROUP BY tenant_id, name)"
    )
    op.create_index("uq_api_keys_tenant_name", "api_keys", ["tenant_id", "name"], unique=True)


def downgrade() -> None:
    # Names made unique by the upgrade stay as they are: nothing records which were renamed, and unique
    # names are valid before this revision too.
    op.drop_index("uq_api_keys_tenant_name", table_name="api_keys")
    op.drop_column("api_keys", "expires_at")
    op.drop_column("api_keys", "scopes")
