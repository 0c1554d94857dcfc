"""blobs record the adapter config they were validated with (rank, alpha, use_rslora, target modules)

The bulk import path names blobs by hash and states each record's rank, alpha and target modules; the
blob's own config, checked against its bytes when it was uploaded, is what those must match. Existing
blobs take the config of the first revision that uses them; a blob no revision uses keeps NULLs until it
is uploaded again (an import naming it says so).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ("rank", "alpha", "use_rslora", "target_modules")


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("rank", sa.Integer, nullable=True))
        batch.add_column(sa.Column("alpha", sa.Float, nullable=True))
        batch.add_column(sa.Column("use_rslora", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("target_modules", sa.String(128), nullable=True))
    # One pass over revisions (a window, not a subquery per blob: revisions has no index on sha256).
    op.execute(
        "UPDATE blobs SET rank = r.rank, alpha = r.alpha, use_rslora = r.use_rslora, target_modules = r.target_modules "
        "FROM (SELECT sha256, rank, alpha, use_rslora, target_modules, row_number() OVER (PARTITION BY sha256 ORDER BY id) AS k "
        "FROM revisions) r WHERE r.k = 1 AND r.sha256 = blobs.sha256"
    )


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
