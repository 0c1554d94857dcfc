"""audit views (audit_log, policy_heads, alias_history, revision_lineage) and append-only guards

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = {
    "audit_log": """
        SELECT e.id, e.at, t.name AS tenant, e.actor, k.name AS key_name, e.action,
               pt.name || '/' || p.name AS policy, e.revision_number, e.details
        FROM audit_events e
        LEFT JOIN tenants t ON t.id = e.tenant_id
        LEFT JOIN policies p ON p.id = e.policy_id
        LEFT JOIN tenants pt ON pt.id = p.tenant_id
        LEFT JOIN api_keys k ON e.actor = 'key:' || k.key_id
    """,
    "policy_heads": """
        SELECT p.id AS policy_id, t.name AS tenant, t.name || '/' || p.name AS policy, b.name AS base_model,
               p.head_number, l.revision_number AS latest_number, r.sha256 AS latest_sha256,
               r.created_at AS latest_created_at, p.created_at
        FROM policies p
        JOIN tenants t ON t.id = p.tenant_id
        JOIN base_models b ON b.id = p.base_model_id
        LEFT JOIN aliases l ON l.policy_id = p.id AND l.name = 'latest'
        LEFT JOIN revisions r ON r.policy_id = p.id AND r.number = l.revision_number
    """,
    "alias_history": """
        SELECT m.id, m.policy_id, t.name AS tenant, t.name || '/' || p.name AS policy, m.alias,
               m.from_number, m.to_number, m.action, m.actor, m.reason, m.at AS since,
               lead(m.at) OVER (PARTITION BY m.policy_id, m.alias ORDER BY m.id) AS until
        FROM alias_moves m
        JOIN policies p ON p.id = m.policy_id
        JOIN tenants t ON t.id = p.tenant_id
    """,
    "revision_lineage": """
        SELECT r.policy_id, t.name AS tenant, t.name || '/' || p.name AS policy, r.number, r.parent_number,
               r.sha256, r.status, r.source, r.created_by, r.created_at
        FROM revisions r
        JOIN policies p ON p.id = r.policy_id
        JOIN tenants t ON t.id = p.tenant_id
    """,
}
APPEND_ONLY = ("audit_events", "alias_moves")


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body.strip()}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION mint_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END
            $$
            """
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION mint_append_only()"
            )
    else:
        for table in APPEND_ONLY:
            for event in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP FUNCTION mint_append_only()")
    else:
        for table in APPEND_ONLY:
            for event in ("update", "delete"):
                op.execute(f"DROP TRIGGER {table}_no_{event}")
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
