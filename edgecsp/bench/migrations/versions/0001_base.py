"""The history schema as edgecsp wrote it before migrations (tables created where missing).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database from before migrations already holds these tables: create only what is missing.
    meta = sa.MetaData()
    sa.Table("edgecsp_meta", meta, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))
    sa.Table(
        "edgecsp_runs", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("suite", sa.String(255)),
        sa.Column("device", sa.String(255), nullable=False, index=True),
        sa.Column("hostname", sa.String(255)),
        sa.Column("edgecsp_version", sa.String(32)),
        sa.Column("status", sa.String(32)),
        sa.Column("info", sa.Text),
    )
    sa.Table(
        "edgecsp_results", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("edgecsp_runs.id"), nullable=False, index=True),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("device", sa.String(255), nullable=False, index=True),
        sa.Column("job", sa.String(255), nullable=False, index=True),
        sa.Column("model", sa.String(255)), sa.Column("target", sa.String(64)), sa.Column("precision", sa.String(16)),
        sa.Column("scenario", sa.String(16)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fps", sa.Float), sa.Column("latency_p50_ms", sa.Float), sa.Column("latency_p99_ms", sa.Float),
        sa.Column("ap", sa.Float), sa.Column("ap50", sa.Float), sa.Column("peak_rss_mb", sa.Float),
        sa.Column("achieved_gbs", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("details", sa.Text),
    )
    meta.create_all(op.get_bind(), checkfirst=True)
