"""The job store as the releases before migrations created it (metadata.create_all): jobs, job_events, datasets,
dataset_versions, with their indexes and constraints.

These definitions are frozen: they are what those releases wrote, whatever store.py says today. A database those
releases wrote (tables, no alembic_version) is adopted onto this revision with them (migrations.adopt).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("command", sa.String(16), nullable=False),
    sa.Column("recipe", sa.String(64), nullable=False, index=True),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("data", sa.Text),
    sa.Column("dataset", sa.String(64)),
    sa.Column("dataset_version", sa.Integer),  # added by ALTER TABLE in stores older still
    sa.Column("nproc", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(32), nullable=False),
    sa.Column("run_dir", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("stop", sa.String(16)),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("pid", sa.Integer),
    sa.Column("devices", sa.String(64)),
    sa.Column("events_read", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Index("ix_jobs_state_id", "state", "id"),
)

sa.Table(
    "job_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "seq"),
)

sa.Table(
    "datasets", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("recipe", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("classes", sa.Text, nullable=False),
    sa.Column("images", sa.Integer, nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

sa.Table(
    "dataset_versions", metadata,  # added by create_all in stores older still
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("parent", sa.Integer, nullable=False),
    sa.Column("changes", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("classes", sa.Text, nullable=False),
    sa.Column("images", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("note", sa.Text),
    sa.UniqueConstraint("dataset_id", "version"),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
