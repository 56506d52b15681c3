"""The job store on SQLite and on PostgreSQL: Alembic brings every earlier store to the newest schema (the previous
release's, with its jobs, events and datasets, through a real service), one service at a time; a newer store or a
missing driver is one line; several services share one PostgreSQL database and never run a job twice."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from helpers import Service, earlier_store, free_port, one_line_error, run_python, sqlite_store_from
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.engine import make_url

from trainer.service import migrations
from trainer.service import store as S

OPTIONS = {"arch": "test_resnet", "pretrained": False, "epochs": 1, "bs": 8, "interpret": False}  # a few seconds
GATED = {**OPTIONS, "lr": "review"}  # waits after lr_find, holding its slot, until its rate is chosen
DATASET = "0123456789abcdef"  # the earlier stores' uploaded dataset


def current_revision(store: S.Store) -> str:
    with store.engine.connect() as db:
        return db.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def schema_differences(store: S.Store) -> list:
    """What the database lacks or has beyond store.py's tables (Alembic's own comparison): [] when equal."""
    with store.engine.connect() as db:
        return compare_metadata(MigrationContext.configure(db), S.metadata)


def schema(engine) -> dict:
    """Every table's columns, indexes, unique and foreign keys, as the database reports them."""
    found = inspect(engine)
    return {table: {"columns": [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                    "primary": found.get_pk_constraint(table)["constrained_columns"],
                    "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                      for i in found.get_indexes(table)),
                    "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table)),
                    "foreign": [(f["constrained_columns"], f["referred_table"], f["options"])
                                for f in found.get_foreign_keys(table)]}
            for table in sorted(found.get_table_names())}


def test_a_new_store_has_store_py_schema_at_the_newest_revision(store_url):
    store = S.Store(store_url)
    assert store.migrated == f"created at revision {migrations.head()}"
    assert schema_differences(store) == [] and current_revision(store) == migrations.head()
    assert S.Store(store_url).migrated is None  # there already: nothing done
    job = store.add_job("fit", "digits", {}, None, None, 1, "o")
    assert job["node"] is None  # the runner writes it: where an attempt runs
    big = 5 * 2**30  # an upload past 2 GiB: PostgreSQL's INTEGER would refuse its size
    assert store.add_dataset(id="d", name="big.zip", recipe="folder", path="/x", classes={"a": 1}, images=1,
                             bytes=big, sha256="0" * 64, owner="o")["bytes"] == big


def test_revision_0001_is_the_schema_the_previous_release_created(tmp_path):
    written = create_engine(sqlite_store_from(earlier_store("previous-release"), tmp_path / "previous.db"))
    migrated = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    with migrated.begin() as db:
        command.upgrade(migrations.config(db), migrations.FIRST)
    got = schema(migrated)
    assert got.pop("alembic_version")
    assert got == schema(written)


def test_a_store_of_the_previous_release_opens_upgraded_with_all_it_held_and_runs_its_jobs(fixtures, isolated):
    url = sqlite_store_from(earlier_store("previous-release", fixtures), isolated / "old" / "jobs.db")
    svc = Service(isolated, "--data-root", fixtures, db=url, wait=False)
    try:
        svc.process.wait_for(f"store: a store of a release before migrations, upgraded to revision "
                             f"{migrations.head()}")
        svc.ready()
        listed = svc.http.get("/jobs").json()["jobs"]  # 2 and 3 may have started already
        assert [(j["id"], j["data"], j["options"]) for j in listed] == [(i, "mnist_sample", OPTIONS) for i in (3, 2, 1)]
        done = svc.job(1)
        assert done["run_dir"] == "/srv/trainer/runs/mnist_sample/20260101-120000" and done["events"] == 6
        assert [(e["id"], e["kind"], e.get("state")) for e in svc.events(1)] == [
            (1, "state", "queued"), (2, "state", "running"), (3, "run_started", None), (4, "epoch", None),
            (5, "finished", None), (6, "state", "succeeded")]
        (dataset,) = svc.http.get("/datasets").json()["datasets"]
        assert (dataset["id"], dataset["name"], dataset["classes"]) == (DATASET, "photos.zip", {"cats": 2, "dogs": 1})
        versions = svc.http.get(f"/datasets/{DATASET}/versions").json()["versions"]
        assert [(v["version"], v["parent"], v["images"]) for v in versions] == [(1, None, 3), (2, 1, 2)]
        # the interrupted job continues by itself, the queued one starts: both to the end
        ran = [svc.wait_until_ended(job_id) for job_id in (2, 3)]
        assert [(j["state"], j["attempts"]) for j in ran] == [("succeeded", 2), ("succeeded", 1)], ran
        assert [j["node"] for j in ran] == [socket.gethostname()] * 2 and svc.job(1)["node"] is None  # 0002's column
        assert [e["state"] for e in svc.events(2) if e["kind"] == "state"] == \
            ["queued", "running", "interrupted", "queued", "running", "succeeded"]
        assert svc.submit("mnist_sample", options=OPTIONS, data="mnist_sample")["id"] == 4
    finally:
        svc.stop()
    store = S.Store(url)
    assert store.migrated is None and current_revision(store) == migrations.head()
    assert "node" in {c["name"] for c in inspect(store.engine).get_columns("jobs")}
    assert schema_differences(store) == []


def test_a_postgresql_store_of_the_previous_release_is_upgraded_in_place(postgres_url):
    engine = create_engine(S.with_driver(postgres_url))
    first = migrations.first_revision_tables()
    first.create_all(engine)  # the previous release's create_all, without Alembic
    rows = [line for line in earlier_store("previous-release").splitlines() if line.startswith("INSERT INTO")]
    with engine.begin() as db:  # its rows, loaded as pg_dump would: jobs before their events, sequences after
        for table in first.sorted_tables:
            for line in rows:
                if line.startswith(f'INSERT INTO "{table.name}" '):
                    db.exec_driver_sql(line)
        for table in ("jobs", "job_events", "dataset_versions"):
            db.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    engine.dispose()

    store = S.Store(postgres_url)
    assert store.migrated == f"a store of a release before migrations, upgraded to revision {migrations.head()}"
    assert current_revision(store) == migrations.head() and schema_differences(store) == []
    jobs, total = store.list_jobs()
    assert total == 3 and [(j["id"], j["state"], j["attempts"], j["last_seq"], j["node"]) for j in jobs] == \
        [(3, "queued", 0, 1, None), (2, "interrupted", 1, 3, None), (1, "succeeded", 1, 6, None)]
    assert [e["kind"] for e in store.events(1)] == ["state", "state", "run_started", "epoch", "finished", "state"]
    assert store.dataset(DATASET)["classes"] == {"cats": 2, "dogs": 1}
    assert [v["version"] for v in store.versions(DATASET)] == [1, 2] and store.latest_version(DATASET) == 2
    assert store.requeue(2) and store.claim(2, "host:1:x", "cpu") and store.events(2)[-1]["id"] == 5
    assert store.add_job("fit", "digits", {}, None, None, 1, "o")["id"] == 4


def test_a_store_a_newer_trainer_wrote_is_refused_in_one_line(store_url, isolated):
    store = S.Store(store_url)
    with store.engine.begin() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    store.engine.dispose()
    result = subprocess.run([sys.executable, "-m", "trainer", "service", "--db", store_url, "--devices", "cpu",
                             "--state", isolated / "state", "--port", str(free_port())], capture_output=True,
                            text=True, env={**os.environ, "TRAINER_TOKEN": Service.TOKEN}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert one_line_error(result) == f"error: the job store at {S.shown(store_url)} was written by a newer " \
                                     f"trainer (revision 0999); upgrade trainer to open it"
    password = make_url(store_url).password
    assert password is None or password not in result.stdout + result.stderr
    with create_engine(S.with_driver(store_url)).connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0999"  # untouched


def test_a_postgresql_store_without_its_driver_is_one_line_naming_the_extra(isolated):
    code = ("import sys; sys.modules['psycopg'] = None\n"  # as if the postgres extra were not installed
            "from trainer.cli import main; main()")
    result = run_python(f"import sys; sys.argv = ['trainer', 'service', '--db', "
                        f"'postgresql://trainer:secret@127.0.0.1:1/jobs', '--state', '{isolated / 'state'}', "
                        f"'--devices', 'cpu', '--port', '{free_port()}']\n{code}")
    assert result.returncode == 2, result.stderr
    assert one_line_error(result) == "error: the job store postgresql://trainer:***@127.0.0.1:1/jobs needs " \
                                     "the postgres extra (psycopg is missing): pip install 'trainer[postgres]'"


def test_two_services_starting_at_once_migrate_once(store_url, fixtures, isolated):
    both = [Service(isolated, "--data-root", fixtures, db=store_url, wait=False) for _ in range(2)]
    try:
        for svc in both:
            svc.ready()
        said = [[line for line in svc.process.output if line.startswith("store: ")] for svc in both]
        assert sorted(said, key=len) == [[], [f"store: created at revision {migrations.head()}\n"]], said
    finally:
        for svc in both:
            svc.stop()


def test_a_service_waits_for_the_migration_another_one_holds_on_postgresql(postgres_url, fixtures, isolated):
    engine = S.engine_for(postgres_url)
    waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
                   "database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    svc = None
    try:
        with migrations.locked(engine) as connection:  # as a service that is migrating the store
            svc = Service(isolated, "--data-root", fixtures, db=postgres_url, wait=False)
            with engine.connect() as watch:
                while not watch.execute(waiting).scalar_one():  # until the service asks for the lock, and waits
                    assert not any("ready:" in line for line in svc.process.output), "it did not wait for the lock"
                    assert svc.process.popen.poll() is None, "".join(svc.process.output)
                    time.sleep(0.05)
            assert migrations.migrate(connection, "here") == f"created at revision {migrations.head()}"
            connection.commit()
        svc.ready()  # it found the store migrated: nothing to do, nothing said
        assert not [line for line in svc.process.output if line.startswith("store: ")], svc.process.output
    finally:
        if svc is not None:
            svc.stop()
        engine.dispose()


def test_claims_racing_under_serializable_isolation_are_retried_not_failed(postgres_url):
    admin = create_engine(S.with_driver(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:  # every transaction SERIALIZABLE: a lost race is an error (40001), not 0 rows
        db.execute(text(f'ALTER DATABASE "{admin.url.database}" SET default_transaction_isolation TO serializable'))
    admin.dispose()
    stores = [S.Store(postgres_url), S.Store(postgres_url)]
    ids = [stores[0].add_job("fit", "digits", {}, None, None, 1, "o")["id"] for _ in range(40)]
    won: dict[int, list[str]] = {i: [] for i in ids}
    errors = []

    def claim_all(store: S.Store, owner: str):
        try:
            for job_id in ids:
                if store.claim(job_id, owner, "cpu"):
                    won[job_id].append(owner)
        except Exception as e:  # noqa: BLE001 - the assertion names it
            errors.append(repr(e))
    racers = [threading.Thread(target=claim_all, args=(s, f"host:{k}:{n}")) for k, s in enumerate(stores)
              for n in "ab"]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert errors == [] and all(len(owners) == 1 for owners in won.values()), (errors, won)
    with stores[0].engine.connect() as db:
        assert db.execute(text("SHOW transaction_isolation")).scalar_one() == "serializable"
    assert [len(stores[1].events(i)) for i in ids] == [2] * 40  # queued, running: one event each


def test_a_transaction_postgresql_aborts_in_a_deadlock_runs_again(postgres_url):
    store = S.Store(postgres_url)
    a, b = (store.add_job("fit", "digits", {}, None, None, 1, "o")["id"] for _ in range(2))
    both_hold_one = threading.Barrier(2, timeout=60)
    tries, errors = Counter(), []

    @S.retried
    def update_both(first: int, second: int):
        tries[first] += 1
        with store.engine.begin() as db:
            db.execute(update(S.jobs).where(S.jobs.c.id == first).values(pid=first))
            if tries[first] == 1:
                both_hold_one.wait()  # each holds one row and asks for the other's: PostgreSQL aborts one
            db.execute(update(S.jobs).where(S.jobs.c.id == second).values(pid=first))

    def run(first, second):
        try:
            update_both(first, second)
        except Exception as e:  # noqa: BLE001 - the assertion names it
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=pair) for pair in ((a, b), (b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(tries.values()) == [1, 2], (errors, tries)  # the aborted one, once more
    assert store.job(a)["pid"] == store.job(b)["pid"]  # the one that ran last wrote both


def test_two_services_on_one_postgresql_database_run_four_jobs_once_each_and_both_take_part(
        postgres_url, fixtures, isolated):
    one = Service(isolated, "--data-root", fixtures, "--slots", "1", db=postgres_url)
    two = None
    try:
        gated = [one.submit("mnist_sample", options=GATED, data="mnist_sample")["id"] for _ in range(2)]
        plain = [one.submit("mnist_sample", options=OPTIONS, data="mnist_sample")["id"] for _ in range(2)]
        # one's only slot takes the first job, which holds it at the lr_find gate; the rest stay queued
        one.events(gated[0], until=lambda e: e["kind"] == "lr_review")
        two = Service(isolated, "--data-root", fixtures, "--slots", "1", db=postgres_url)  # same state and runs
        two.events(gated[1], until=lambda e: e["kind"] == "lr_review")  # two's only slot: the next in line
        assert [d["job"] for d in one.http.get("/health").json()["devices"]] == [gated[0]]
        assert [d["job"] for d in two.http.get("/health").json()["devices"]] == [gated[1]]
        assert one.job(plain[0])["state"] == one.job(plain[1])["state"] == "queued"
        for job_id in gated:  # answered through the other service: any service on the store answers any job
            other = two if job_id == gated[0] else one
            assert other.http.post(f"/jobs/{job_id}/lr", json={"lr": 2e-3}).status_code == 200
        # the two plain jobs go to whichever service frees its slot first
        done = [two.wait_until_ended(job_id) for job_id in gated + plain]
    finally:
        for svc in (one, two):
            if svc is not None:
                svc.stop()
    assert [(j["state"], j["attempts"], j["node"]) for j in done] == [("succeeded", 1, socket.gethostname())] * 4, done
    store = S.Store(postgres_url)
    for job in done:
        running = [e for e in store.events(job["id"]) if e["kind"] == "state" and e["state"] == "running"]
        assert len(running) == 1, store.events(job["id"])
    run_dirs = {Path(j["run_dir"]) for j in done}
    on_disk = {p for p in (isolated / "runs" / "mnist_sample").iterdir() if p.is_dir() and not p.is_symlink()}
    assert len(run_dirs) == 4 and run_dirs == on_disk
