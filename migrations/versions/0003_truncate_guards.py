"""append-only guards refuse TRUNCATE too (Postgres) on the audit log and the alias history

Row triggers (0002) refuse UPDATE and DELETE, but TRUNCATE fires no row triggers: it needs a statement
trigger of its own. SQLite has no TRUNCATE; its `DELETE FROM t` without WHERE (its truncate optimization)
still fires 0002's row triggers, because SQLite turns that optimization off for tables with triggers.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_events", "alias_moves")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in APPEND_ONLY:
        # mint_append_only() (0002) raises for any event; it names the table through TG_TABLE_NAME.
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION mint_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
