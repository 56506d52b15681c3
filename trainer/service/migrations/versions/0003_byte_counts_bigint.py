"""Byte counts as 64-bit integers: datasets.bytes (an upload may be up to 4 GiB, --max-upload-mb) and
jobs.events_read (a long job's event log passes 2 GiB). PostgreSQL's INTEGER stops at 2^31 - 1; SQLite's is
64-bit already, so it is left as it is there.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (("datasets", "bytes"), ("jobs", "events_read"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column in COLUMNS:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column in COLUMNS:
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
