"""The job store's schema, revision by revision (Alembic: versions/), and bringing a database to the newest one.

`to_head(engine)` is what Store() calls, under a lock on the database itself, so that of several services starting
at once on one database exactly one migrates and the others find it done: PostgreSQL, a session-level advisory
lock on the migration's connection; SQLite, BEGIN IMMEDIATE (the database's write lock, which also makes the DDL
one transaction: a migration cut short leaves the store as it was). Every step runs in that one transaction.

  - an empty database: upgraded from nothing;
  - a store of the releases before migrations (its tables, no alembic_version): adopted, that is, brought to
    revision 0001 as those releases did (missing tables created, missing nullable columns added), stamped 0001,
    then upgraded;
  - a store at a revision this code does not know: written by a newer trainer, refused in one line.

No alembic.ini: the config is built here, its script_location this folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from trainer.errors import BadInput

HERE = Path(__file__).resolve().parent
FIRST = "0001"  # the schema of the releases before migrations
LOCK_KEY = 0x7472_6169_6E65_72  # pg_advisory_lock's key for migrating a trainer store ("trainer" in ASCII)
STORE_TABLES = {"jobs", "job_events", "datasets", "dataset_versions"}


def config(connection: Connection | None = None, url: str | None = None):
    """Alembic's config for the store's scripts; it migrates `connection` (or, for a developer's command, `url`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_current_head()


def first_revision_tables():
    """Revision 0001's tables: the schema of the releases before migrations, frozen."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_revision(FIRST).module.metadata


def to_head(engine: Engine, shown_url: str) -> str | None:
    """The database brought to the newest revision; what was done, in words (None: it was there already)."""
    with locked(engine) as connection:
        done = migrate(connection, shown_url)
        connection.commit()
    return done


@contextlib.contextmanager
def locked(engine: Engine):
    """A connection that alone may migrate the database until the block ends, in a transaction."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            connection.commit()  # the lock belongs to the session, not to this transaction
            try:
                yield connection
            finally:
                try:
                    connection.rollback()  # after a failure: the unlock cannot run in an aborted transaction
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                    connection.commit()
                except Exception:  # the connection broke: closing the session is what frees the lock
                    connection.invalidate()
    elif engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            isolation = raw.isolation_level
            raw.isolation_level = None  # the driver's own BEGINs off: this one is ours
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits out the busy timeout for another migrator
                yield connection
            finally:
                if raw.in_transaction:
                    raw.rollback()
                raw.isolation_level = isolation
    else:  # another database: no lock known here
        with engine.connect() as connection:
            yield connection


def migrate(connection: Connection, shown_url: str) -> str | None:
    """Upgrade to head on `connection`, inside its transaction; what was done, in words (None: nothing)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    cfg = config(connection)
    scripts = ScriptDirectory.from_config(cfg)
    newest = scripts.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    if current == newest:
        return None
    if current is not None:
        try:
            scripts.get_revision(current)
        except CommandError:
            raise BadInput(f"the job store at {shown_url} was written by a newer trainer (revision {current}); "
                           f"upgrade trainer to open it") from None
        done = f"upgraded from revision {current} to {newest}"
    elif STORE_TABLES & set(inspect(connection).get_table_names()):
        added = adopt(connection, first_revision_tables())
        command.stamp(cfg, FIRST)
        done = f"a store of a release before migrations{' (' + ', '.join(added) + ' added)' if added else ''}, " \
               f"upgraded to revision {newest}"
    else:
        done = f"created at revision {newest}"
    command.upgrade(cfg, "head")
    return done


def adopt(connection: Connection, first) -> list[str]:
    """A store written before migrations brought to revision 0001 (`first`: its tables) as those releases did:
    the tables it lacks created, and ALTER TABLE ADD COLUMN for each nullable column an existing table lacks
    (a store older still); the "table.column" names added."""
    first.create_all(connection)  # only the tables that are missing
    added = []
    quote = connection.dialect.identifier_preparer.quote
    for table in first.sorted_tables:
        have = {c["name"] for c in inspect(connection).get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable or column.primary_key:
                raise BadInput(f"the job store's table {table.name} lacks the column {column.name}, which cannot be "
                               f"added to its rows (it is not nullable): it was not written by trainer")
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"))
            added.append(f"{table.name}.{column.name}")
    return added
