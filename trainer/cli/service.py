"""`trainer service` (the training service) and its clients `trainer submit` and `trainer jobs ...`.

submit takes fit's own options (the same definitions, trainer.options); the service checks them again with the
same code, so a value refused here is refused there with the same line. The clients use only the standard
library; server and token from --server / TRAINER_SERVER and TRAINER_TOKEN."""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.cli.app import app, console
from trainer.cli.options import RUNS, AsJson, OptionalRecipe, with_options
from trainer.cli.runs import ListByDefault
from trainer.data.locations import is_url
from trainer.errors import BadInput
from trainer.options import HARDWARE, LR_FIND_OPTIONS, OPTIONS

Server = Annotated[Optional[str], typer.Option(
    help="The service's URL \\[default: $TRAINER_SERVER, else http://127.0.0.1:8100]; the token comes from "
         "$TRAINER_TOKEN.", show_default=False)]
JobId = Annotated[int, typer.Argument(help="The job's id (`trainer jobs list`).", show_default=False)]
SERVICE = "Service"


@app.command()
def service(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs the token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8100,
    db: Annotated[Optional[str], typer.Option(
        help="The job store's SQLAlchemy URL; PostgreSQL: postgresql://USER@HOST/DB (the postgres extra) "
             "\\[default: sqlite:///STATE/jobs.db].", show_default=False)] = None,
    devices: Annotated[str, typer.Option(
        help="auto (every GPU, else the CPU), cpu, or GPU indices such as 0,1.")] = "auto",
    slots: Annotated[Optional[int], typer.Option(
        min=1, max=256, help="Jobs at once on the CPU, or on each GPU \\[default: 1].", show_default=False)] = None,
    runs: Annotated[Path, typer.Option(help="Where the jobs' run directories go: RUNS/<recipe>/<id>/.")] = RUNS,
    data_root: Annotated[Path, typer.Option(
        help="Data folders a job may name (and the recipes' own data).")] = Path("datasets"),
    state: Annotated[Path, typer.Option(
        help="The service's own files: the job store, the token, uploaded datasets, each job's log.")] = Path("service"),
    max_upload_mb: Annotated[int, typer.Option(min=1, max=1 << 20, help="Largest dataset upload, in MiB.")] = 4096,
    max_queued: Annotated[int, typer.Option(min=1, max=1_000_000, help="Queued jobs per token.")] = 100,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No token (only on 127.0.0.1: one user's machine).")] = False,
    backend: Annotated[str, typer.Option(
        help="Where jobs run: local (processes on this machine) or ray (tasks on a Ray cluster; pip install "
             "'trainer\\[ray]'; --runs, --state and --data-root shared by every node).", rich_help_panel="Ray")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        help="The Ray cluster (HOST:6379) \\[default: $RAY_ADDRESS, else the one `ray start` "
             "left on this machine, else a new local one].", show_default=False, rich_help_panel="Ray")] = None,
    job_cpus: Annotated[float, typer.Option(
        min=0.01, max=1024, help="CPUs each job process asks Ray for (its torch threads).", rich_help_panel="Ray")] = 1.0,
    job_memory: Annotated[Optional[float], typer.Option(
        min=0.01, max=1 << 20, help="Memory in GiB each job process asks Ray for \\[default: none reserved].",
        show_default=False, rich_help_panel="Ray")] = None,
):
    """A training service: a job queue that survives restarts, an HTTP API (/docs), live events."""
    from trainer.service.main import run_service

    try:
        run_service(host, port, db, devices, slots, runs, data_root, state, max_upload_mb, max_queued, no_auth,
                    backend, ray_address, job_cpus, job_memory)
    except KeyboardInterrupt:
        pass  # uvicorn stopped; the runner checkpointed the running jobs


def client(server: str | None):
    from trainer.service.client import Client

    return Client(server)


def archive_of(data: Path) -> tuple[Path, bool]:
    """(an archive of `data` to upload, whether it is a temporary one to remove): a folder is zipped."""
    from trainer.service.datasets import SUFFIXES

    if data.is_file():
        if not data.name.lower().endswith(SUFFIXES):
            raise BadInput(f"--data {data} is a file but not a .zip/.tgz/.tar archive; give a folder or an archive")
        return data, False
    if not data.is_dir():
        raise BadInput(f"--data {data} does not exist; give a dataset folder or an archive of one")
    fd, name = tempfile.mkstemp(prefix=f"{data.resolve().name}-", suffix=".zip")
    with open(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:  # images are compressed already
        for path in sorted(data.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(data).parts):
                zf.write(path, path.relative_to(data).as_posix())
    return Path(name), True


@app.command()
@with_options(tuple(OPTIONS), defaults={"data": "the recipe's own data on the service"}, config=True,
              config_reads=lambda given: LR_FIND_OPTIONS if given.get("lr_find") else tuple(OPTIONS))
def submit(
    recipe: OptionalRecipe = None,
    data_name: Annotated[Optional[str], typer.Option(
        help="A folder under the service's --data-root, instead of uploading --data.", show_default=False)] = None,
    nproc: Annotated[Optional[int], typer.Option(
        min=1, help="Devices the job takes (GPUs on a GPU service).", rich_help_panel=HARDWARE)] = None,
    lr_find: Annotated[bool, typer.Option("--lr-find", help="Run lr-find instead of fit.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Then follow it, as `trainer jobs follow`.")] = False,
    server: Server = None, as_json: AsJson = False, *, options: dict, print_config: bool = False,
):
    """Submit a job to a service: fit's options; --data (a folder or an archive) is uploaded. Prints the job's id."""
    if print_config:  # resolved here as `trainer fit` would; the service resolves its machine's options
        from trainer.cli.train import show_config

        return show_config("lr-find" if lr_find else "fit", recipe, options, RUNS,
                           allowed=LR_FIND_OPTIONS if lr_find else tuple(OPTIONS))
    if recipe is None:
        from trainer.api import needs_recipe

        raise BadInput(needs_recipe("submit"))
    data = options.pop("data")
    if options.get("weights"):
        raise BadInput("--weights names a file on this machine, which the service cannot read; train with it "
                       "locally (`trainer fit ... --weights FILE`)")
    if data and data_name:
        raise BadInput("give --data (uploaded) or --data-name (on the service), not both")
    if is_url(data):
        raise BadInput(f"trainer submit uploads --data from this machine: download {data} first and pass the file, "
                       f"or train here with `trainer fit {recipe} --data {data}`")
    if sha256 := options.pop("data_sha256"):  # checked here, before the upload: the service gets the data itself
        OPTIONS["data_sha256"].check(sha256)
        if not data or not Path(data).is_file():
            raise BadInput("--data-sha256 checks the --data archive this machine uploads: pass the archive file "
                           "with it")
        from trainer.data.source import check_digest

        check_digest(Path(data), sha256, data, "check the file, or the digest you were given")
    api = client(server)
    body = {"recipe": recipe, "command": "lr-find" if lr_find else "fit", "nproc": nproc,
            "options": {k: v for k, v in options.items() if v is not None}, "data": data_name}
    if data:
        archive, temporary = archive_of(Path(data))
        try:
            api.request("GET", "/health")  # unreachable: say so before zipping is wasted on an upload
            dataset = api.upload(archive, recipe)
        finally:
            if temporary:
                archive.unlink(missing_ok=True)
        body["dataset"] = dataset["id"]
        console(stderr=True).print(f"dataset {dataset['id']}: {dataset['images']} images in "
                                   f"{len(dataset['classes'])} classes" + ("" if dataset["new"] else
                                                                           " (already on the service)"))
    job = api.submit({k: v for k, v in body.items() if v is not None})
    if as_json:
        print(json.dumps(job, indent=2))
    else:
        print(job["id"])
    if follow:
        raise typer.Exit(follow_job(api, job["id"], quiet=as_json))


jobs_app = typer.Typer(cls=ListByDefault, help="A service's jobs: list (the default), show, follow, lr, cancel, "
                                               "resume, logs, delete.")
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    state: Annotated[Optional[str], typer.Option(help="Only jobs in this state.", show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Only this recipe's jobs.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first.")] = 0,
    server: Server = None, as_json: AsJson = False,
):
    """The service's jobs, newest first."""
    page = client(server).jobs(state=state, recipe=recipe, limit=limit, offset=offset)
    if as_json:
        print(json.dumps(page["jobs"], indent=2))
        return
    if not page["jobs"]:
        console().print("no jobs" + (f" in state {state}" if state else "") + "; submit one with `trainer submit`")
        return
    from rich.table import Table

    table = Table("id", "state", "command", "recipe", "options", "devices", "attempts", "run", "error",
                  title=f"jobs ({len(page['jobs'])} of {page['total']}, newest first)")
    for job in page["jobs"]:
        options = " ".join(f"{k}={v}" for k, v in job["options"].items())
        state = job["state"] + (" (waiting for lr)" if job.get("lr_review") else "")
        table.add_row(str(job["id"]), state, job["command"], job["recipe"], options, job["devices"] or "-",
                      str(job["attempts"]), Path(job["run_dir"]).name if job["run_dir"] else "-", job["error"] or "")
    console().print(table)


@jobs_app.command("show")
def jobs_show(job_id: JobId, server: Server = None, as_json: AsJson = False):
    """One job: its state, options, run directory, last epoch; lr_find's suggestions while it waits for a rate."""
    job = client(server).job(job_id)
    if as_json:
        print(json.dumps(job, indent=2))
        return
    out = console()
    for key in ("id", "state", "command", "recipe", "options", "data", "dataset", "nproc", "devices", "node", "attempts",
                "run_dir", "error"):
        if job.get(key) not in (None, {}, ""):
            out.print(f"{key}: {job[key]}")
    if job.get("last_epoch"):
        row = job["last_epoch"]["row"]
        out.print(f"last epoch: {row.get('epoch')}/{job['last_epoch'].get('epochs_total')} "
                  + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "phase") and
                              isinstance(v, (int, float))))
    if job.get("lr_review"):
        suggestions = job["lr_review"]["suggestions"]
        out.print("waiting at the lr_find gate: " + ", ".join(f"{k} {v:.2e}" for k, v in suggestions.items())
                  + f"; choose with `trainer jobs lr {job_id} RATE` (a number, or {'/'.join(suggestions)})")


def follow_job(api, job_id: int, quiet: bool = False) -> int:
    """The job's live progress from its event stream, as a local `trainer fit` shows it; its exit code
    (0: it succeeded)."""
    from trainer.training.console import ConsoleDisplay
    from trainer.training.events import KINDS, Event

    display = ConsoleDisplay(console(), quiet=quiet, errors=console(stderr=True))
    state = None
    for item in api.events(job_id):
        kind = item.pop("kind")
        item.pop("id", None)
        at = item.pop("at", 0.0)
        if kind in KINDS:
            display(Event(kind, item, at))
        elif kind == "placed" and not quiet:  # where the attempt's process started (a Ray node, or the service's)
            display.close()
            console(stderr=True).print(f"job {job_id}: placed on {item.get('node')} ({item.get('devices')}"
                                       f"{', ' + item['backend'] if item.get('backend') else ''})")
        elif kind == "state":
            state = item["state"]
            if not quiet:
                display.close()
                extra = f" on {item['devices']}" if item.get("devices") else ""
                reason = item.get("error") or item.get("reason")
                console(stderr=True).print(f"job {job_id}: {state}{extra}" + (f" ({reason})" if reason else ""))
    display.close()
    job = api.job(job_id)
    if job["state"] == "succeeded":
        if job["run_dir"]:
            print(job["run_dir"])
        return 0
    console(stderr=True).print(f"job {job_id} ended {job['state']}" + (f": {job['error']}" if job["error"] else ""))
    return 1


@jobs_app.command("follow")
def jobs_follow(job_id: JobId, server: Server = None,
                quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run directory.")] = False):
    """Live progress of a job, as a local `trainer fit` shows it; exit 0 when it succeeded, 1 otherwise."""
    raise typer.Exit(follow_job(client(server), job_id, quiet))


@jobs_app.command("lr")
def jobs_lr(
    job_id: JobId,
    rate: Annotated[str, typer.Argument(
        help="The learning rate: a number (e.g. 2e-3), or one of lr_find's suggestions: minimum, steep, valley, "
             "slide.", show_default=False)],
    server: Server = None, as_json: AsJson = False,
):
    """Choose the learning rate of a job waiting at the lr_find gate (submitted with --lr review)."""
    job = client(server).choose_lr(job_id, rate)
    if as_json:
        print(json.dumps(job, indent=2))
        return
    choice = job["lr_choice"]
    console().print(f"job {job_id}: learning rate {choice['lr']:g}"
                    + (f" ({choice['suggestion']})" if choice["suggestion"] else "") + "; it trains on with it")


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobId, server: Server = None, as_json: AsJson = False):
    """Stop a job: it checkpoints and ends cancelled; `trainer jobs resume` continues it."""
    show_state(client(server).request("POST", f"/jobs/{job_id}/cancel"), as_json)


@jobs_app.command("resume")
def jobs_resume(job_id: JobId, server: Server = None, as_json: AsJson = False):
    """Queue a cancelled, interrupted or failed job again, to continue from its last checkpoint."""
    show_state(client(server).request("POST", f"/jobs/{job_id}/resume"), as_json)


@jobs_app.command("delete")
def jobs_delete(job_id: JobId, server: Server = None):
    """Delete a job that is not running (ended or queued), with its events and its run directory."""
    client(server).request("DELETE", f"/jobs/{job_id}")
    console().print(f"job {job_id} deleted")


@jobs_app.command("logs")
def jobs_logs(job_id: JobId, server: Server = None):
    """The job's terminal output (every attempt's)."""
    sys.stdout.write(client(server).request("GET", f"/jobs/{job_id}/log", headers={"Accept": "text/plain"}))


def show_state(job: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=2))
    else:
        console().print(f"job {job['id']}: {job['state']}")
