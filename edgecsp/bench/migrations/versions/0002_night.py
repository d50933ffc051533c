"""Fleet nights: runs.night names the night a run belongs to (one run per device per night), so a
restarted head finds the jobs that night already finished and runs only the others.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("edgecsp_runs", sa.Column("night", sa.String(128), nullable=True))
    op.create_index("ix_edgecsp_runs_night", "edgecsp_runs", ["night"])
