"""The job store, which is also the queue: one table of jobs, one of their events, one of uploaded datasets (and
one of their versions).

A job is claimed by a compare-and-set UPDATE (`WHERE id = ? AND state = 'queued'`: one statement, atomic on
SQLite and on any other database), and held under a lease its service renews (a heartbeat). A lease that runs
out, or whose holder is a process that no longer exists on this host, is taken back and its job continued from
its last checkpoint. So two services on one store never run the same job, and a job outlives any process.

Every event a job published is a row (job, seq): server-sent events replay from any `Last-Event-ID`.
SQLAlchemy 2 Core, so the store is a URL: SQLite by default (WAL, a busy timeout), or PostgreSQL (psycopg 3),
which several services on several machines share. Its schema is migrated by Alembic (trainer/service/migrations/):
opening a store brings it to the newest revision.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import time
import uuid
from pathlib import Path

from sqlalchemy import (BigInteger, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, create_engine, delete, event, func, insert, select, update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from trainer.errors import BadInput

# The states of a job. `cancelled` (the user stopped it) and `interrupted` (the service stopped it, or lost
# it) keep their run directory's checkpoint and can be resumed; an interrupted job continues by itself when a
# service starts.
QUEUED, RUNNING, STOPPING = "queued", "running", "stopping"
SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "succeeded", "failed", "cancelled", "interrupted"
STATES = (QUEUED, RUNNING, STOPPING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = (RUNNING, STOPPING)  # a process holds the job under a lease
ENDED = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
RESUMABLE = (CANCELLED, INTERRUPTED, FAILED)

LEASE_SECONDS = 30.0  # a claim not renewed for this long is taken back by any service on the store
BUSY_TIMEOUT_MS = 30_000  # SQLite: how long a writer waits for another one before giving up
# PostgreSQL aborts one of two transactions to break a deadlock (40P01) or, above READ COMMITTED, a serialization
# conflict (40001); the aborted one rolled back whole, so it is run again, up to this many times in all.
RETRIED_SQLSTATES = ("40P01", "40001")
TRANSACTION_TRIES = 5

# A count of bytes: past 2 GiB, so 64-bit; SQLite's INTEGER is 64-bit already (migration 0003 leaves it be).
BYTE_COUNT = BigInteger().with_variant(Integer(), "sqlite")

# The newest revision's schema (trainer/service/migrations/versions/ makes it: a change here is a new revision there).
metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String(16), nullable=False, index=True),
    Column("command", String(16), nullable=False),  # fit or lr-find
    Column("recipe", String(64), nullable=False, index=True),
    Column("options", Text, nullable=False),  # JSON: the options by their CLI names, only those set
    Column("data", Text),  # the data folder the job trains on (under the data root, or an uploaded dataset)
    Column("dataset", String(64)),  # an uploaded dataset's id, when it trains on one
    Column("dataset_version", Integer),  # which version of that dataset (dataset_versions; 1 or null: itself)
    Column("nproc", Integer, nullable=False, default=1),  # devices (GPUs, or CPU slots) it needs at once
    Column("owner", String(32), nullable=False),  # which token submitted it (a hash prefix)
    Column("run_dir", Text),  # set from the job's run_started event
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("attempts", Integer, nullable=False, default=0),  # processes started for it
    Column("failures", Integer, nullable=False, default=0),  # attempts that ended in a failure
    Column("error", Text),  # the last failure's one line
    Column("stop", String(16)),  # why it is being stopped: cancel (user) or shutdown (service)
    Column("lease_owner", String(128)),  # the service holding it: host:pid:uuid
    Column("lease_expires", Float),
    Column("pid", Integer),  # its process, on the lease owner's host
    Column("devices", String(64)),  # what it runs on: "cpu" or the GPU indices, as CUDA_VISIBLE_DEVICES
    Column("node", String(255)),  # the machine its current or last attempt runs on (a Ray node, or this host)
    Column("events_read", BYTE_COUNT, nullable=False, default=0),  # bytes of its event log already stored
    Column("last_seq", Integer, nullable=False, default=0),  # its newest event's number
    Index("ix_jobs_state_id", "state", "id"),
)

job_events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, ... per job: the SSE id
    Column("kind", String(32), nullable=False),
    Column("data", Text, nullable=False),  # JSON
    Column("at", Float, nullable=False),
    UniqueConstraint("job_id", "seq"),
)

datasets = Table(
    "datasets", metadata,
    Column("id", String(64), primary_key=True),  # the archive's sha256, the first 16 hex digits
    Column("name", String(255), nullable=False),  # the uploaded file's name
    Column("recipe", String(64), nullable=False),  # the layout it was checked against
    Column("path", Text, nullable=False),  # the extracted dataset folder
    Column("classes", Text, nullable=False),  # JSON {class: images}
    Column("images", Integer, nullable=False),
    Column("bytes", BYTE_COUNT, nullable=False),  # the archive's size
    Column("sha256", String(64), nullable=False),
    Column("owner", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

# A dataset's versions after its first: each is its parent plus a list of changes (relabel or delete an image),
# materialised as a folder of its own (trainer/service/versions.py). Version 1 is the `datasets` row itself.
dataset_versions = Table(
    "dataset_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),  # 2, 3, ...
    Column("parent", Integer, nullable=False),  # the version it was made from
    Column("changes", Text, nullable=False),  # JSON [{"path", "action": "relabel" | "delete", "to"}]
    Column("path", Text, nullable=False),  # the materialised folder
    Column("classes", Text, nullable=False),  # JSON {class: images}
    Column("images", Integer, nullable=False),
    Column("owner", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("note", Text),
    UniqueConstraint("dataset_id", "version"),
)


def instance_id() -> str:
    """Who holds a lease: this host and process, and a random part (a restarted process may reuse a pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_gone(owner: str | None) -> bool:
    """Whether the service named by `owner` is certainly dead: a process on this host that no longer exists.
    (On another host only the lease's expiry can tell.)"""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def shown(url: str) -> str:
    """The URL as messages show it: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def with_driver(url: str) -> str:
    """postgresql://... with no driver named means psycopg 3, the one the postgres extra installs (SQLAlchemy's
    own default is psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def engine_for(url: str):
    """The database at `url`; SQLite in WAL mode (readers never wait for the writer) with a busy timeout."""
    if (path := sqlite_path(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            cursor.close()
        return engine
    try:
        # pre-ping: a pooled connection the server dropped (a restart, a failover) is replaced, not used
        return create_engine(with_driver(url), pool_pre_ping=True)
    except ModuleNotFoundError as e:
        if with_driver(url).startswith("postgresql+psycopg://"):
            from trainer.extras import require

            require("postgres", f"the job store {shown(url)}")
        raise BadInput(f"the job store {shown(url)} needs the Python module {e.name}, which is missing; install "
                       f"that database's driver") from None


def retried(method):
    """Run a store transaction again when PostgreSQL aborted it to break a deadlock or a serialization conflict
    with another service's (it rolled back whole, so running it again is safe); a request never fails for it."""
    @functools.wraps(method)
    def transaction(*args, **kwargs):
        for attempt in range(1, TRANSACTION_TRIES + 1):
            try:
                return method(*args, **kwargs)
            except DBAPIError as e:
                code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
                if code not in RETRIED_SQLSTATES or attempt == TRANSACTION_TRIES:
                    raise
                time.sleep(random.uniform(0, 0.01 * 2 ** attempt))  # apart, so they do not collide again
    return transaction


def loads(text: str | None):
    return json.loads(text) if text else None


def finite(value):
    """JSON has no NaN or infinity (a diverged loss): they are stored as null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value) -> str:
    return json.dumps(finite(value), default=str, allow_nan=False, separators=(",", ":"))


class Store:
    """The jobs, their events and the datasets, through one engine. Every method is one transaction."""

    def __init__(self, url: str):
        from trainer.service import migrations

        self.url = url
        self.engine = engine_for(url)
        # the schema brought to the newest revision, by one service at a time; what that took, in words
        self.migrated = migrations.to_head(self.engine, shown(url))

    # --- jobs ---------------------------------------------------------------------------------------------

    @retried
    def add_job(self, command: str, recipe: str, options: dict, data: str | None, dataset: str | None, nproc: int,
                owner: str, dataset_version: int | None = None) -> dict:
        now = time.time()
        with self.engine.begin() as db:
            job_id = db.execute(insert(jobs).values(
                state=QUEUED, command=command, recipe=recipe, options=dumps(options), data=data, dataset=dataset,
                dataset_version=dataset_version, nproc=nproc, owner=owner, created_at=now, attempts=0, failures=0,
                events_read=0, last_seq=0,
            )).inserted_primary_key[0]
            self._event(db, job_id, "state", {"state": QUEUED}, now)
        return self.job(job_id)

    @retried
    def job(self, job_id: int) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return job_dict(row) if row else None

    @retried
    def list_jobs(self, state: str | None = None, recipe: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[list[dict], int]:
        """Newest first, with the total that match."""
        where = []
        if state:
            where.append(jobs.c.state == state)
        if recipe:
            where.append(jobs.c.recipe == recipe)
        with self.engine.connect() as db:
            total = db.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = db.execute(select(jobs).where(*where).order_by(jobs.c.id.desc()).limit(limit).offset(offset))
            return [job_dict(r) for r in rows.mappings()], total

    @retried
    def count(self, *states: str, owner: str | None = None) -> int:
        where = [jobs.c.state.in_(states)] + ([jobs.c.owner == owner] if owner else [])
        with self.engine.connect() as db:
            return db.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()

    @retried
    def queued(self) -> list[dict]:
        """The queue, first come first."""
        with self.engine.connect() as db:
            rows = db.execute(select(jobs).where(jobs.c.state == QUEUED).order_by(jobs.c.id))
            return [job_dict(r) for r in rows.mappings()]

    @retried
    def claim(self, job_id: int, owner: str, devices: str) -> bool:
        """Take a queued job (compare-and-set: of two services, exactly one wins)."""
        now = time.time()
        with self.engine.begin() as db:
            won = db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == QUEUED).values(
                state=RUNNING, lease_owner=owner, lease_expires=now + LEASE_SECONDS, devices=devices, stop=None,
                attempts=jobs.c.attempts + 1, started_at=func.coalesce(jobs.c.started_at, now), pid=None,
            )).rowcount == 1
            if won:
                self._event(db, job_id, "state", {"state": RUNNING, "devices": devices}, now)
        return won

    @retried
    def heartbeat(self, job_ids: list[int], owner: str) -> set[int]:
        """Renew the leases of these jobs; the ids still held (a lease taken back meanwhile is lost)."""
        if not job_ids:
            return set()
        now = time.time()
        with self.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner,
                                          jobs.c.state.in_(ACTIVE)).values(lease_expires=now + LEASE_SECONDS))
            held = db.execute(select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner,
                                                      jobs.c.state.in_(ACTIVE)))
            return {r[0] for r in held}

    @retried
    def placed(self, job_id: int, owner: str, where: dict) -> None:
        """The attempt's process started (`where`: backend, node, devices, pid): a `placed` event, under the lease."""
        now = time.time()
        with self.engine.begin() as db:
            if db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner).values(
                    **placement_columns(where))).rowcount:
                self._event(db, job_id, "placed", where, now)

    @retried
    def orphans(self) -> list[dict]:
        """Jobs some service held that no live service holds any more: a lease run out, or its holder dead."""
        now = time.time()
        with self.engine.connect() as db:
            rows = db.execute(select(jobs).where(jobs.c.state.in_(ACTIVE))).mappings().all()
        return [job_dict(r) for r in rows if (r["lease_expires"] or 0) < now or holder_gone(r["lease_owner"])]

    @retried
    def take_back(self, job: dict, to_state: str, error: str | None = None) -> bool:
        """An orphan back in the queue (or ended, if it was being cancelled); False if someone else did it first."""
        now = time.time()
        with self.engine.begin() as db:
            moved = db.execute(update(jobs).where(
                jobs.c.id == job["id"], jobs.c.state == job["state"],
                jobs.c.lease_owner == job["lease_owner"] if job["lease_owner"] else jobs.c.lease_owner.is_(None),
            ).values(state=to_state, lease_owner=None, lease_expires=None, pid=None, stop=None,
                     ended_at=now if to_state in ENDED else None)).rowcount == 1
            if moved:
                self._event(db, job["id"], "state", {"state": to_state, "reason": error} if error else
                            {"state": to_state}, now)
        return moved

    @retried
    def request_stop(self, job_id: int, reason: str) -> dict | None:
        """Cancel: a queued job ends now; a running one is told to stop (its service sends SIGTERM)."""
        now = time.time()
        with self.engine.begin() as db:
            if db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == QUEUED).values(
                    state=CANCELLED, ended_at=now)).rowcount:
                self._event(db, job_id, "state", {"state": CANCELLED}, now)
            elif db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == RUNNING).values(
                    state=STOPPING, stop=reason)).rowcount:
                self._event(db, job_id, "state", {"state": STOPPING}, now)
        return self.job(job_id)

    @retried
    def mark_stopping(self, job_id: int, owner: str, reason: str) -> None:
        with self.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                          jobs.c.state == RUNNING).values(state=STOPPING, stop=reason))

    @retried
    def requeue(self, job_id: int) -> bool:
        """Resume: a cancelled, interrupted or failed job back in the queue (it continues from its checkpoint)."""
        with self.engine.begin() as db:
            moved = db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(RESUMABLE)).values(
                state=QUEUED, ended_at=None, failures=0, stop=None)).rowcount == 1
            if moved:
                self._event(db, job_id, "state", {"state": QUEUED}, time.time())
        return moved

    @retried
    def finish(self, job_id: int, owner: str, state: str, error: str | None = None, failed: bool = False) -> bool:
        """The attempt ended: the job's new state (queued again after a first failure), under its lease."""
        now = time.time()
        values = dict(state=state, lease_owner=None, lease_expires=None, pid=None, stop=None,
                      ended_at=now if state in ENDED else None)
        if error is not None:
            values["error"] = error
        if failed:
            values["failures"] = jobs.c.failures + 1
        with self.engine.begin() as db:
            done = db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                                 jobs.c.state.in_(ACTIVE)).values(**values)).rowcount == 1
            if done:
                self._event(db, job_id, "state", {"state": state, **({"error": error} if error else {})}, now)
        return done

    @retried
    def delete_job(self, job_id: int) -> bool:
        with self.engine.begin() as db:  # the job first, under its state guard: a job that started stays whole
            if db.execute(delete(jobs).where(jobs.c.id == job_id, jobs.c.state.notin_(ACTIVE))).rowcount != 1:
                return False
            db.execute(delete(job_events).where(job_events.c.job_id == job_id))
            return True

    # --- events -------------------------------------------------------------------------------------------

    def _event(self, db, job_id: int, kind: str, data: dict, at: float) -> int:
        seq = db.execute(update(jobs).where(jobs.c.id == job_id).values(last_seq=jobs.c.last_seq + 1)
                         .returning(jobs.c.last_seq)).scalar_one()
        db.execute(insert(job_events).values(job_id=job_id, seq=seq, kind=kind, data=dumps(data), at=at))
        return seq

    @retried
    def add_events(self, job_id: int, lines: list[dict], read_to: int) -> None:
        """Events from the job's log, stored with how far the log was read, in one transaction: each once."""
        with self.engine.begin() as db:
            for line in lines:
                item = dict(line)  # popped from a copy: a retried transaction reads the lines again
                kind, at = item.pop("kind"), item.pop("at", time.time())
                self._event(db, job_id, kind, item, at)
                if kind in ("run_started", "lr_review") and item.get("run_dir"):  # lr_review: before training
                    db.execute(update(jobs).where(jobs.c.id == job_id).values(run_dir=str(item["run_dir"])))
                elif kind == "placed":  # a Ray task started the job's process on its node
                    db.execute(update(jobs).where(jobs.c.id == job_id).values(**placement_columns(item)))
            db.execute(update(jobs).where(jobs.c.id == job_id).values(events_read=read_to))

    @retried
    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[dict]:
        with self.engine.connect() as db:
            rows = db.execute(select(job_events.c.seq, job_events.c.kind, job_events.c.data, job_events.c.at)
                              .where(job_events.c.job_id == job_id, job_events.c.seq > after)
                              .order_by(job_events.c.seq).limit(limit))
            return [{"id": r.seq, "kind": r.kind, "at": r.at, **json.loads(r.data)} for r in rows]

    @retried
    def latest_event(self, job_id: int, kind: str) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(select(job_events.c.seq, job_events.c.data).where(
                job_events.c.job_id == job_id, job_events.c.kind == kind).order_by(job_events.c.seq.desc())
                .limit(1)).first()
        return {"id": row.seq, **json.loads(row.data)} if row else None

    # --- datasets -----------------------------------------------------------------------------------------

    @retried
    def add_dataset(self, **values) -> dict:
        with self.engine.begin() as db:
            db.execute(insert(datasets).values(classes=dumps(values.pop("classes")), created_at=time.time(),
                                               **values))
        return self.dataset(values["id"])

    @retried
    def dataset(self, dataset_id: str) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(select(datasets).where(datasets.c.id == dataset_id)).mappings().first()
        return dataset_dict(row) if row else None

    @retried
    def list_datasets(self) -> list[dict]:
        with self.engine.connect() as db:
            return [dataset_dict(r) for r in db.execute(select(datasets).order_by(datasets.c.created_at.desc()))
                    .mappings()]

    # --- dataset versions ---------------------------------------------------------------------------------

    @retried
    def add_version(self, dataset_id: str, version: int, parent: int, changes: list, path: str, classes: dict,
                    owner: str, note: str | None) -> dict:
        """A new version (IntegrityError if that number is taken)."""
        with self.engine.begin() as db:
            db.execute(insert(dataset_versions).values(
                dataset_id=dataset_id, version=version, parent=parent, changes=dumps(changes), path=path,
                classes=dumps(classes), images=sum(classes.values()), owner=owner, created_at=time.time(), note=note))
        return self.version(dataset_id, version)

    @retried
    def versions(self, dataset_id: str) -> list[dict]:
        """Every version of a dataset, version 1 (the dataset itself) first; [] when there is no such dataset."""
        first = self.dataset(dataset_id)
        if first is None:
            return []
        with self.engine.connect() as db:
            rows = db.execute(select(dataset_versions).where(dataset_versions.c.dataset_id == dataset_id)
                              .order_by(dataset_versions.c.version)).mappings().all()
        return [first_version(first), *(version_dict(r) for r in rows)]

    @retried
    def version(self, dataset_id: str, version: int) -> dict | None:
        if version == 1:
            first = self.dataset(dataset_id)
            return first_version(first) if first else None
        with self.engine.connect() as db:
            row = db.execute(select(dataset_versions).where(dataset_versions.c.dataset_id == dataset_id,
                                                            dataset_versions.c.version == version)).mappings().first()
        return version_dict(row) if row else None

    @retried
    def delete_dataset(self, dataset_id: str) -> bool:
        """The dataset and its versions gone from the store, unless a job that is queued, running, or interrupted
        (which continues by itself at the next start) trains on it: then False, nothing deleted. One transaction,
        so no job can claim it half-deleted."""
        with self.engine.begin() as db:
            busy = db.execute(select(func.count()).select_from(jobs).where(
                jobs.c.dataset == dataset_id, jobs.c.state.in_((QUEUED, INTERRUPTED, *ACTIVE)))).scalar_one()
            if busy:
                return False
            db.execute(delete(dataset_versions).where(dataset_versions.c.dataset_id == dataset_id))
            db.execute(delete(datasets).where(datasets.c.id == dataset_id))
        return True

    @retried
    def latest_version(self, dataset_id: str) -> int:
        """The newest version's number (1 when the dataset has no other)."""
        with self.engine.connect() as db:
            newest = db.execute(select(func.max(dataset_versions.c.version))
                                .where(dataset_versions.c.dataset_id == dataset_id)).scalar_one()
        return newest or 1


def placement_columns(where: dict) -> dict:
    """A `placed` event's node and devices as the job's columns (its pid only for a process on the service's
    host: only there is it the service's to signal)."""
    values = {"node": str(where.get("node") or "")[:255] or None, "devices": str(where.get("devices") or "")[:64] or None}
    if where.get("backend") == "local":
        values["pid"] = where.get("pid")
    return values


def job_dict(row) -> dict:
    job = dict(row)
    job["options"] = loads(job["options"]) or {}
    return job


def dataset_dict(row) -> dict:
    dataset = dict(row)
    dataset["classes"] = loads(dataset["classes"]) or {}
    return dataset


def first_version(dataset: dict) -> dict:
    """A dataset as its own version 1, shaped like the versions after it."""
    return {"dataset_id": dataset["id"], "version": 1, "parent": None, "changes": [], "path": dataset["path"],
            "classes": dataset["classes"], "images": dataset["images"], "owner": dataset["owner"],
            "created_at": dataset["created_at"], "note": None}


def version_dict(row) -> dict:
    version = dict(row)
    version.pop("id", None)
    version["changes"] = loads(version["changes"]) or []
    version["classes"] = loads(version["classes"]) or {}
    return version
