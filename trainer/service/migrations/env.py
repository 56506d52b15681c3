"""Alembic's entry for the job store: it migrates the connection the store hands it (Store() takes the migration
lock on it first; trainer/service/migrations/__init__.py), or, for a developer's `alembic` command, the
database at the config's sqlalchemy.url."""

from alembic import context
from sqlalchemy import create_engine

from trainer.service.store import metadata


def run(config) -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic revision --autogenerate` and the like, on a scratch database
        with create_engine(config.get_main_option("sqlalchemy.url")).connect() as connection:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
    else:  # the store's connection, in the transaction it opened: it commits once, at head
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()


if getattr(context, "config", None) is not None:  # run by Alembic; imported otherwise (walk_packages), nothing
    run(context.config)
