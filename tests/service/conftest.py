"""The store the service tests run on. A test that takes `store_url` (or a module fixture that takes
`module_store_url`) runs twice: on SQLite, and on PostgreSQL in a database of its own, on the server that
TRAINER_TEST_POSTGRES names (an admin URL: a role that may CREATE DATABASE). Without it the PostgreSQL runs are
skipped, saying so; under CI=true they fail instead, so CI never passes without them."""

from __future__ import annotations

import contextlib
import os

import pytest
import sqlalchemy
from helpers import postgres_database

POSTGRES = "TRAINER_TEST_POSTGRES"
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    url = os.environ.get(POSTGRES)
    if not url:
        why = (f"{POSTGRES} is not set: the PostgreSQL URL of a role that may CREATE DATABASE, e.g. "
               f"postgresql://postgres:PASSWORD@127.0.0.1:5432/postgres (.ci/run starts one)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the PostgreSQL tests, but {why}", pytrace=False)
        pytest.skip(why)
    try:
        sqlalchemy.engine.make_url(url)
        parsed = True
    except sqlalchemy.exc.ArgumentError:
        parsed = False
    if not parsed:  # seen in CI: a tool's chatter captured with the URL; say so, not 26 bare parse errors
        first = url.splitlines()[0] if url.strip() else url
        pytest.fail(f"{POSTGRES} is not one database URL ({len(url.splitlines())} lines, the first {first!r})",
                    pytrace=False)
    return url


@pytest.fixture
def postgres_url(postgres_admin):
    """A new, empty PostgreSQL database for this test."""
    with postgres_database(postgres_admin) as url:
        yield url


@contextlib.contextmanager
def empty_store(kind: str, folder, request):
    """The URL of an empty store of this kind: a SQLite file in `folder`, or a new PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'jobs.db'}"
    else:
        with postgres_database(request.getfixturevalue("postgres_admin")) as url:
            yield url


@pytest.fixture(params=DATABASES)
def store_url(request, tmp_path):
    """This test's store: an empty database of each kind in turn."""
    with empty_store(request.param, tmp_path / "store", request) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def module_store_url(request, tmp_path_factory):
    """A store shared by a module's tests (its service runs for all of them), of each kind in turn."""
    with empty_store(request.param, tmp_path_factory.mktemp("store"), request) as url:
        yield url
