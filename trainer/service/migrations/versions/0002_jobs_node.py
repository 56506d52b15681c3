"""jobs.node: the machine the job's current or last attempt runs on (the host for the local backend, the Ray
node for the Ray backend).

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
    op.add_column("jobs", sa.Column("node", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:  # SQLite: a copy of the table without it
        jobs.drop_column("node")
