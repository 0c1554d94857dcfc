"""catalog_secrets: secrets the catalog makes for itself once per database (the page-token key)

Page tokens are sealed with a key every catalog process on one database shares (see
services/catalog/store/pages.py); the first process to open the database writes it here.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("catalog_secrets")
