"""The service's HTTP API (FastAPI; OpenAPI docs at /docs).

Every answer that is not a success is a 4xx (or 5xx) with {"error": "<one line>"}; nothing is stored for a
refused request. Every endpoint but /health (and the API's own description, /docs and /openapi.json, which
hold no data) needs `Authorization: Bearer <token>`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.
import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import format_sse_event
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from trainer.errors import BadInput, first_line
from trainer.options import chosen_lr
from trainer.runs import rundir
from trainer.service import auth, datasets, tasks
from trainer.service import store as S
from trainer.service.jobs import Submission, check_submission, trained_run
from trainer.service.runner import OUTPUT_FILE, Runner, Settings, job_folder

EVENT_POLL = 0.2  # seconds between two looks at the store for a live event stream
KEEPALIVE = 15.0  # a comment line this often, so proxies keep an idle stream open
PAGE_MAX = 500
PREDICT_MAX = 32 * 2**20  # bytes: one image to try a model on
PREDICT_TIMEOUT = 300.0
LOSSES_FOR = "losses are computed for"  # the 409's words for the cleaning endpoints


class Refused(HTTPException):
    def __init__(self, status: int, reason: str):
        super().__init__(status, " ".join(str(reason).split()))


def one_line(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


def public_job(job: dict, settings: Settings) -> dict:
    """A job as the API shows it: no lease internals, the data by its name under the data root."""
    data = job["data"]
    if data and job["dataset"] is None:
        try:
            data = str(Path(data).resolve().relative_to(settings.data_root.resolve()))
        except ValueError:
            pass
    elif job["dataset"] is not None:
        data = None
    return {"id": job["id"], "state": job["state"], "command": job["command"], "recipe": job["recipe"],
            "options": job["options"], "data": data, "dataset": job["dataset"],
            "dataset_version": job.get("dataset_version"), "nproc": job["nproc"],
            "run_dir": job["run_dir"], "created_at": job["created_at"], "started_at": job["started_at"],
            "ended_at": job["ended_at"], "attempts": job["attempts"], "error": job["error"],
            "devices": job["devices"], "node": job.get("node"), "pid": job["pid"], "events": job["last_seq"]}


def create_app(store: S.Store, runner: Runner, settings: Settings, token: str | None) -> FastAPI:
    """`token` None: no authentication (only ever on loopback, checked by the caller)."""
    app = FastAPI(title="trainer service", version="1",
                  description="Submit fastai training jobs, watch them live, stop and continue them, fetch their "
                              "results. Send `Authorization: Bearer <token>` (the token `trainer service` printed).")
    bearer = HTTPBearer(auto_error=False)

    def authorized(request: Request,
                   credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> str:
        """The token's owner: from `Authorization: Bearer` (the CLI, scripts) or the pages' login cookie."""
        if token is None:
            return "local"
        given = credentials.credentials if credentials is not None else request.cookies.get(auth.COOKIE)
        if not given:
            raise Refused(401, "no token: send 'Authorization: Bearer TOKEN' with the token `trainer service` "
                               "printed (the CLI reads it from TRAINER_TOKEN), or log in at /ui/login")
        if not auth.matches(given, token):
            raise Refused(401, "the token is not this service's; use the one `trainer service` printed (or its "
                               "TRAINER_TOKEN)")
        if credentials is None and request.method not in ("GET", "HEAD") and \
                request.headers.get(auth.PAGE_HEADER) != "1":
            # the cookie goes with any request to this host, even one another site's form makes: a change through
            # the cookie must also carry a header only this service's own pages send (no cross-site form can)
            raise Refused(403, f"a change made with the login cookie needs the {auth.PAGE_HEADER}: 1 header "
                               f"(the service's pages send it); scripts send the token as a Bearer header")
        return auth.owner_of(given)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        return one_line(error.status_code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query", "path"))
        return one_line(422, f"{where}: {problem.get('msg')}" if where else problem.get("msg"))

    @app.exception_handler(BadInput)
    async def bad_input(_request, error: BadInput):
        return one_line(413 if isinstance(error, datasets.TooLarge) else 422, str(error))

    @app.exception_handler(DataError)
    async def unstorable(_request, error: DataError):  # a value the database's column cannot hold: the input's
        return one_line(422, f"a value in this request cannot be stored ({first_line(error.orig, 200)}); send text "
                             f"without NUL characters, within the documented limits")

    @app.exception_handler(Exception)
    async def failure(_request, error: Exception):  # a bug or the store away: one line, the service goes on
        return one_line(500, f"the service failed on this request ({type(error).__name__}: {first_line(error)}); "
                             f"it goes on serving: try again, and report it if it persists")

    def job_or_404(job_id: int) -> dict:
        job = store.job(job_id)
        if job is None:
            raise Refused(404, f"no job {job_id}; list the jobs with GET /jobs (`trainer jobs list`)")
        return job

    def lr_review(job: dict) -> Optional[dict]:
        """{"suggestions", "run_dir"} while a running job waits at the lr_find gate (--lr review): its latest
        lr_review event, published by this attempt, with no lr_chosen after it; else None."""
        if job["state"] != S.RUNNING:
            return None
        review = store.latest_event(job["id"], "lr_review")
        if review is None:
            return None
        later = [store.latest_event(job["id"], kind) for kind in ("lr_chosen", "state")]  # state: an attempt began
        if any(event and event["id"] > review["id"] for event in later):
            return None
        return {"suggestions": review.get("suggestions") or {}, "run_dir": review.get("run_dir")}

    def answer(job: dict) -> dict:
        """A job as every endpoint answers it: public_job, and whether it waits at the lr_find gate."""
        return {**public_job(job, settings), "lr_review": lr_review(job)}

    # --- health -------------------------------------------------------------------------------------------

    @app.get("/health")
    def health():
        """Liveness, the queue's length and what each device runs (no token needed)."""
        children = list(runner.children.values())
        running = {u: child.job_id for child in children for u in child.units}
        devices = [{"device": "ray", "job": child.job_id, "placed": child.placed} for child in children] \
            if settings.cluster is not None else \
            [{"device": unit if settings.gpus else "cpu", "job": running.get(i)} for i, unit in enumerate(settings.units)]
        return {"status": "ok" if runner.thread.is_alive() else "stopped", "queued": store.count(S.QUEUED),
                "running": store.count(*S.ACTIVE), "backend": runner.backend.name, "devices": devices,
                "runner_error": runner.error}

    # --- jobs ---------------------------------------------------------------------------------------------

    @app.post("/jobs", status_code=201)
    def submit(body: dict[str, Any], owner: str = Depends(authorized)):
        """A new job: {"recipe": "digits", "command": "fit" | "lr-find", "options": {"epochs": 2, ...},
        "data": "a folder under the data root" | "dataset": "an uploaded dataset's id", "nproc": 1}."""
        checked = checked_body(body)
        if store.count(S.QUEUED, owner=owner) >= settings.max_queued:
            raise Refused(429, f"this token already has {settings.max_queued} queued jobs (the service's "
                               f"--max-queued); wait for some to start, or cancel some")
        job = store.add_job(checked.command, checked.recipe, checked.options, checked.data, checked.dataset,
                            checked.nproc, owner, dataset_version=checked.dataset_version)
        runner.wake.set()
        return answer(job)

    @app.post("/jobs/check")
    def check(body: dict[str, Any], _owner: str = Depends(authorized)):
        """What POST /jobs would answer, without queueing anything: the form checks each edit with it, so a
        person sees the CLI's own error line while typing."""
        checked = checked_body(body)
        return {"ok": True, "command": checked.command, "recipe": checked.recipe, "options": checked.options}

    def checked_body(body: dict) -> Submission:
        return check_submission(body, data_root=settings.data_root, dataset_path=dataset_path,
                                devices_total=settings.devices_total, device_kind=settings.device_kind,
                                more_devices=settings.more_devices)

    def dataset_path(dataset_id: str, version: Optional[int] = None) -> Optional[tuple[str, int]]:
        """(the folder of a version of an uploaded dataset, its number): the newest when none is asked."""
        number = store.latest_version(dataset_id) if version is None else version
        found = store.version(dataset_id, number)
        return (found["path"], number) if found and Path(found["path"]).is_dir() else None

    @app.get("/jobs")
    def list_jobs(state: Optional[str] = None, recipe: Optional[str] = None,
                  limit: int = Query(50, ge=1, le=PAGE_MAX), offset: int = Query(0, ge=0),
                  _owner: str = Depends(authorized)):
        """Jobs, newest first; filter by state or recipe; `limit` and `offset` page through them."""
        if state is not None and state not in S.STATES:
            raise Refused(422, f"unknown state '{state}'; use one of {', '.join(S.STATES)}")
        found, total = store.list_jobs(state, recipe, limit, offset)
        return {"jobs": [answer(j) for j in found], "total": total, "limit": limit, "offset": offset}

    @app.get("/jobs/{job_id}")
    def show(job_id: int, _owner: str = Depends(authorized)):
        """One job, with its last epoch's metrics row, and lr_find's suggestions while it waits at the lr_find
        gate (`lr_review`)."""
        job = answer(job_or_404(job_id))
        last = store.latest_event(job_id, "epoch")
        job["last_epoch"] = {"row": last["row"], "epochs_total": last.get("epochs_total")} if last else None
        return job

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: int, _owner: str = Depends(authorized)):
        """Stop a job: a queued one at once; a running one gets SIGTERM, checkpoints and ends `cancelled`."""
        job = job_or_404(job_id)
        if job["state"] in S.ENDED:
            raise Refused(409, f"job {job_id} already {job['state']}; nothing to cancel")
        job = store.request_stop(job_id, "cancel")
        runner.wake.set()
        return answer(job)

    @app.post("/jobs/{job_id}/resume")
    def resume(job_id: int, _owner: str = Depends(authorized)):
        """Queue a cancelled, interrupted or failed job again: it continues from its last checkpoint."""
        job = job_or_404(job_id)
        if not store.requeue(job_id):
            raise Refused(409, f"job {job_id} is {job['state']}; only a cancelled, interrupted or failed job can "
                               f"be resumed")
        runner.wake.set()
        return answer(store.job(job_id))

    @app.delete("/jobs/{job_id}")
    def remove(job_id: int, _owner: str = Depends(authorized)):
        """Delete an ended or queued job, its events and its run directory."""
        job = job_or_404(job_id)
        if job["state"] in S.ACTIVE:
            raise Refused(409, f"job {job_id} is {job['state']}; cancel it first (POST /jobs/{job_id}/cancel)")
        if not store.delete_job(job_id):
            raise Refused(409, f"job {job_id} started meanwhile; cancel it first")
        if job["run_dir"] and runner.inside_runs(Path(job["run_dir"])):
            shutil.rmtree(job["run_dir"], ignore_errors=True)
        shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)
        return {"deleted": job_id}

    @app.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
    def log(job_id: int, _owner: str = Depends(authorized)):
        """The job's terminal output, every attempt's."""
        job_or_404(job_id)
        path = job_folder(settings, job_id) / OUTPUT_FILE
        return path.read_text(errors="replace") if path.is_file() else ""

    @app.get("/jobs/{job_id}/files")
    def files(job_id: int, _owner: str = Depends(authorized)):
        """The run directory's files people read: report, plots, model, metrics."""
        job = job_or_404(job_id)
        run_dir = Path(job["run_dir"]) if job["run_dir"] else None
        names = rundir.public_files(run_dir) if run_dir and run_dir.is_dir() else []
        return {"run_dir": job["run_dir"], "files": [{"name": n, "bytes": (run_dir / n).stat().st_size}
                                                     for n in names]}

    @app.get("/jobs/{job_id}/files/{name}")
    def file(job_id: int, name: str, _owner: str = Depends(authorized)):
        job = job_or_404(job_id)
        run_dir = Path(job["run_dir"]) if job["run_dir"] else None
        if run_dir is None or not rundir.is_public_file(name) or not (run_dir / name).is_file():
            raise Refused(404, f"job {job_id} has no file '{name}'; GET /jobs/{job_id}/files lists them")
        return FileResponse(run_dir / name, filename=name)

    # --- a finished job's model: try it, export it -------------------------------------------------------

    def finished_fit(job_id: int, purpose: str) -> Path:
        """The run directory of a fit job that succeeded, with its model (409 for any other job)."""
        job = job_or_404(job_id)
        run_dir = trained_run(job)
        if run_dir is None:
            what = "an lr-find job" if job["command"] != "fit" else job["state"]
            raise Refused(409, f"job {job_id} is {what}; {purpose} a fit job that succeeded")
        return run_dir

    @app.post("/jobs/{job_id}/predict")
    async def predict(job_id: int, request: Request, top_k: int = Query(3, ge=1, le=20),
                      _owner: str = Depends(authorized)):
        """The classes of one image (the request's body) by this job's model: [{"label", "probability"}, ...]."""
        run_dir = await run_in_threadpool(finished_fit, job_id, "predicting needs")
        folder = job_folder(settings, job_id)
        image, _digest = await receive(request, folder / ".predict", "image", PREDICT_MAX,
                                       f"an image to try is at most {PREDICT_MAX // 2**20} MiB; send a smaller one")
        try:
            out = await run_in_threadpool(tasks.run_trainer, ["predict", str(run_dir), str(image), "--json",
                                                              "--top-k", str(top_k)], settings, PREDICT_TIMEOUT,
                                          "cpu")
        except tasks.TaskFailed as e:  # the line names the service's temporary file: name the upload instead
            raise tasks.TaskFailed(str(e).replace(str(image), "the image sent")) from None
        finally:
            image.unlink(missing_ok=True)
        result = json.loads(out)[0]
        if result.get("unreadable"):
            raise Refused(422, f"the image could not be read ({result['unreadable']}); send a PNG, JPEG or WebP file")
        return {"job": job_id, "predictions": result["predictions"]}

    exporting: dict[tuple[int, str], asyncio.Lock] = {}

    @app.post("/jobs/{job_id}/export")
    async def export(job_id: int, format: str = Query("onnx", pattern="^(onnx|torchscript)$"),
                     _owner: str = Depends(authorized)):
        """Export the model (`trainer export --format`) once; the file is then GET /jobs/{id}/files/model.onnx."""
        run_dir = await run_in_threadpool(finished_fit, job_id, "exporting needs")
        name = rundir.EXPORTS[format]
        async with exporting.setdefault((job_id, format), asyncio.Lock()):  # two clicks: one export
            if not (run_dir / name).is_file():
                await run_in_threadpool(tasks.run_trainer, ["export", str(run_dir), "--format", format], settings,
                                        tasks.TASK_TIMEOUT)
        return {"job": job_id, "file": name, "bytes": (run_dir / name).stat().st_size,
                "url": f"/jobs/{job_id}/files/{name}"}

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: int, request: Request, after: Optional[int] = Query(None, ge=0),
                     last_event_id: Optional[str] = Header(None), _owner: str = Depends(authorized)):
        """The job's events as server-sent events, from the first (or after `Last-Event-ID` / `after`); every
        event is stored, so a client that reconnects misses none. The stream ends when the job has ended."""
        await run_in_threadpool(job_or_404, job_id)
        start = after if after is not None else 0
        if last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise Refused(422, f"Last-Event-ID must be an event number, got '{last_event_id}'")
            start = int(last_event_id)
        return StreamingResponse(stream(job_id, start, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream(job_id: int, last: int, request: Request):
        quiet_since = asyncio.get_running_loop().time()
        yield format_sse_event(retry=1000, comment="trainer job events")
        while True:
            batch = await run_in_threadpool(store.events, job_id, last)
            for item in batch:
                last = item["id"]
                yield format_sse_event(data_str=json.dumps(item, default=str), event=item["kind"], id=str(last))
            if batch:
                quiet_since = asyncio.get_running_loop().time()
                continue
            job = await run_in_threadpool(store.job, job_id)
            if job is None or job["state"] in S.ENDED and job["last_seq"] <= last:
                return
            if await request.is_disconnected():
                return
            if asyncio.get_running_loop().time() - quiet_since > KEEPALIVE:
                quiet_since = asyncio.get_running_loop().time()
                yield format_sse_event(comment="keepalive")
            await asyncio.sleep(EVENT_POLL)

    # --- the lr_find gate ---------------------------------------------------------------------------------

    @app.post("/jobs/{job_id}/lr")
    def choose_lr(job_id: int, body: dict[str, Any], owner: str = Depends(authorized)):
        """Answer a job waiting at the lr_find gate (submitted with options.lr "review"): {"lr": 0.002}, or
        {"lr": "valley"} (one of its lr_review's suggestions). Writes RUN_DIR/lr_choice.json; the job trains on
        with that rate. Answers the job, with the `lr_choice` written."""
        job = job_or_404(job_id)
        gate = lr_review(job)
        if gate is None:
            raise Refused(409, f"job {job_id} is not waiting at the lr_find gate (it is {job['state']}): only a "
                               f"running job submitted with options.lr \"review\" waits there, once its lr_find "
                               f"is done (GET /jobs/{job_id} shows lr_review then)")
        unknown = sorted(set(body) - {"lr"})
        if unknown:
            raise Refused(422, f"unknown field '{unknown[0]}'; give {{\"lr\": 0.002}} or {{\"lr\": \"valley\"}}")
        lr, suggestion = chosen_lr(body.get("lr"), gate["suggestions"])  # a bad rate: BadInput, 422
        run_dir = Path(gate["run_dir"] or "")
        if not gate["run_dir"] or not runner.inside_runs(run_dir) or not run_dir.is_dir():
            raise Refused(409, f"job {job_id}'s run directory is not under the service's runs; it cannot be "
                               f"answered here")
        given, _ = rundir.read_json(run_dir / rundir.LR_CHOICE)
        if given is not None:
            raise Refused(409, f"job {job_id} has its learning rate already (lr {given.get('lr')}, by "
                               f"{given.get('by')}); it goes on with it")
        choice = rundir.write_lr_choice(run_dir, lr, suggestion, owner)
        return {**answer(store.job(job_id)), "lr_choice": choice}

    # --- cleaning -----------------------------------------------------------------------------------------
    # "Clean the data and train again" (fastai's ImageClassifierCleaner, as a service): every image's loss
    # (losses.csv), the images themselves, dataset versions (trainer/service/versions.py: relabel or delete
    # images, never changing the originals) and a job again on a version.

    from trainer.service import versions
    from trainer.service.losses import Losses, run_classes, run_image

    losses = Losses(settings)

    @app.exception_handler(versions.Refusal)
    async def cleaning_refused(_request, error: versions.Refusal):
        return one_line(error.status, str(error))

    def fields(body: dict, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise Refused(422, f"unknown field '{unknown[0]}'; this takes {', '.join(allowed)}")

    def dataset_or_404(dataset_id: str) -> dict:
        found = store.dataset(dataset_id)
        if found is None:
            raise Refused(404, f"no dataset '{dataset_id}'; GET /datasets lists them")
        return found

    def version_or_404(dataset_id: str, number: Optional[int]) -> dict:
        dataset_or_404(dataset_id)
        number = store.latest_version(dataset_id) if number is None else number
        found = store.version(dataset_id, number)
        if found is None:
            raise Refused(404, f"dataset {dataset_id} has no version {number}; GET /datasets/{dataset_id}/versions "
                               f"lists them")
        return found

    @app.post("/jobs/{job_id}/losses")
    def compute_losses(job_id: int, _owner: str = Depends(authorized)):
        """Start computing every image's loss (losses.csv) for a fit job that succeeded, once: {"state":
        "computing" | "ready" | "failed", "error"}. A second request while it computes starts nothing."""
        state, error = losses.start(finished_fit(job_id, LOSSES_FOR))
        return {"state": state, "error": error}

    @app.get("/jobs/{job_id}/losses")
    def read_losses(job_id: int, split: Optional[str] = None, label: Optional[str] = None,
                    limit: int = Query(48, ge=1, le=PAGE_MAX), offset: int = Query(0, ge=0),
                    _owner: str = Depends(authorized)):
        """The training and validation images by loss, highest first, filtered by split and label: {"state",
        "error", "classes", "total", "rows": [{"split", "path", "label", "predicted", "p_predicted", "loss"}]}."""
        run_dir = finished_fit(job_id, LOSSES_FOR)
        classes = run_classes(run_dir)
        if split is not None and split not in ("train", "valid"):
            raise Refused(422, f"split must be train or valid, got '{split}'")
        if label is not None and label not in classes:
            raise Refused(422, f"label '{label}' is not one of the run's classes ({', '.join(classes)})")
        state, error = losses.state(run_dir)
        rows = [r for r in (losses.rows(run_dir) if state == "ready" else [])
                if (split is None or r["split"] == split) and (label is None or r["label"] == label)]
        return {"state": state, "error": error, "classes": classes, "total": len(rows),
                "rows": S.finite(rows[offset:offset + limit])}

    @app.get("/jobs/{job_id}/image")
    def job_image(job_id: int, path: str = Query(..., description="a path as the run's split.csv writes it"),
                  _owner: str = Depends(authorized)):
        """One of the images the job's run trained or validated on (a row of its split.csv)."""
        job = job_or_404(job_id)
        found = run_image(Path(job["run_dir"]) if job["run_dir"] else None, path)
        if found is None:
            raise Refused(404, f"job {job_id} has no image '{path}'; its split.csv lists the images it trained on")
        return FileResponse(found)

    @app.post("/jobs/{job_id}/versions", status_code=201)
    def save_from_job(job_id: int, body: dict[str, Any], owner: str = Depends(authorized)):
        """A new version of the dataset the job trained on, from the job's own version: {"changes": [...],
        "note"}. A data-root folder is registered as a dataset by its first version."""
        fields(body, ("changes", "note"))
        job = job_or_404(job_id)
        versions.check_cleanable(job["recipe"])
        source = versions.job_source(store, job, settings)
        saved = versions.save_version(store, settings, source, job["recipe"], source.version, body.get("changes"),
                                      body.get("note"), owner)
        return versions.detail(store, saved)

    @app.post("/jobs/{job_id}/again", status_code=201)
    def again(job_id: int, body: Optional[dict[str, Any]] = None, owner: str = Depends(authorized)):
        """A new job like this one (command, recipe, options, nproc) on a version of its dataset: {"version": N}
        (default: the newest)."""
        body = body or {}
        fields(body, ("version",))
        job = job_or_404(job_id)
        number = body.get("version")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < 1):
            raise Refused(422, f"version must be a version number (1, 2, ...), got {number!r}")
        source = versions.job_source(store, job, settings)
        registering = None
        if source.folder is not None:  # a data-root folder never versioned: version 1 of itself, registered now
            if number not in (None, 1):
                raise Refused(422, f"the data of job {job_id} has no version {number} (none was saved)")
            registering = versions.folder_dataset(source.folder, job["recipe"], owner)
            number, folder = 1, str(source.folder)
        else:
            number = store.latest_version(source.dataset) if number is None else number
            version = store.version(source.dataset, number)
            if version is None:
                raise Refused(422, f"dataset {source.dataset} has no version {number}; GET /datasets/"
                                   f"{source.dataset}/versions lists them")
            folder = version["path"]
            if not Path(folder).is_dir():
                raise Refused(409, f"version {number} of dataset {source.dataset} is gone from disk")
        checked = check_submission(  # the same checks and limits as POST /jobs
            {"command": job["command"], "recipe": job["recipe"], "options": job["options"],
             "dataset": source.dataset, "nproc": job["nproc"]}, data_root=settings.data_root,
            dataset_path=lambda found, _version: (folder, number) if found == source.dataset else None,
            devices_total=settings.devices_total, device_kind=settings.device_kind,
            more_devices=settings.more_devices)
        if store.count(S.QUEUED, owner=owner) >= settings.max_queued:
            raise Refused(429, f"this token already has {settings.max_queued} queued jobs (the service's "
                               f"--max-queued); wait for some to start, or cancel some")
        if registering is not None:
            versions.register(store, registering)
        new = store.add_job(checked.command, checked.recipe, checked.options, checked.data, checked.dataset,
                            checked.nproc, owner, dataset_version=number)
        runner.wake.set()
        return answer(new)

    @app.get("/datasets/{dataset_id}/versions")
    def list_versions(dataset_id: str, _owner: str = Depends(authorized)):
        """Every version of a dataset, version 1 (the dataset itself) first."""
        dataset_or_404(dataset_id)
        return {"versions": [versions.summary(v) for v in store.versions(dataset_id)]}

    @app.get("/datasets/{dataset_id}/versions/{number}")
    def show_version(dataset_id: str, number: int, _owner: str = Depends(authorized)):
        """One version: its changes, and how many images each class gained or lost from its parent."""
        return versions.detail(store, version_or_404(dataset_id, number))

    @app.post("/datasets/{dataset_id}/versions", status_code=201)
    def save_version(dataset_id: str, body: dict[str, Any], owner: str = Depends(authorized)):
        """A new version: {"parent": N (default: the newest), "changes": [...], "note"}."""
        fields(body, ("parent", "changes", "note"))
        found = dataset_or_404(dataset_id)
        saved = versions.save_version(store, settings, versions.Source(dataset_id, 1), found["recipe"],
                                      body.get("parent"), body.get("changes"), body.get("note"), owner)
        return versions.detail(store, saved)

    @app.get("/datasets/{dataset_id}/image")
    def dataset_image(dataset_id: str, path: str = Query(...), version: Optional[int] = Query(None, ge=1),
                      _owner: str = Depends(authorized)):
        """One image of a version of the dataset (default: the newest)."""
        found = versions.image_file(Path(version_or_404(dataset_id, version)["path"]), path)
        if found is None:
            raise Refused(404, f"dataset {dataset_id} has no image '{path}' in that version")
        return FileResponse(found)

    @app.get("/datasets/{dataset_id}/samples")
    def samples(dataset_id: str, per_class: int = Query(6, ge=1, le=100), version: Optional[int] = Query(None, ge=1),
                _owner: str = Depends(authorized)):
        """A few images of each class of a version (default: the newest), the same ones each time: {class:
        [paths]}."""
        return versions.samples(version_or_404(dataset_id, version), per_class)

    # --- datasets -----------------------------------------------------------------------------------------

    @app.post("/datasets", status_code=201)
    async def upload(request: Request, filename: str = Query(..., description="the archive's name, e.g. photos.zip"),
                     recipe: str = Query("folder", description="the layout to check it against"),
                     owner: str = Depends(authorized)):
        """Upload a dataset as the request's body: a .zip, .tgz or .tar of class folders (or of the recipe's
        layout). The same archive twice is one dataset (200, not 201)."""
        from trainer.recipes import get_recipe

        get_recipe(recipe)
        name = datasets.check_name(filename)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_upload:
            raise datasets.TooLarge(f"the upload ({int(declared) // 2**20} MiB) is over the service's limit of "
                                    f"{settings.max_upload // 2**20} MiB; start the service with a larger "
                                    f"--max-upload-mb, or upload a smaller archive")
        root = settings.state / "datasets"
        archive, digest = await receive(request, root / ".incoming", name, settings.max_upload,
                                        f"the upload is over the service's limit of {settings.max_upload // 2**20} "
                                        f"MiB; start the service with a larger --max-upload-mb, or upload a smaller "
                                        f"archive")
        try:
            found, new = await run_in_threadpool(datasets.add_received, store, root, archive, digest, name,
                                                 recipe, owner)
        finally:
            archive.unlink(missing_ok=True)
        return JSONResponse({**public_dataset(found), "new": new}, status_code=201 if new else 200)

    async def receive(request: Request, folder: Path, name: str, limit: int, too_large: str):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix="-" + name, dir=folder)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise datasets.TooLarge(too_large)
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise BadInput(f"'{name}' is empty: send the file as the request's body")
            return Path(tmp), digest.hexdigest()
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @app.get("/datasets")
    def list_datasets(_owner: str = Depends(authorized)):
        """Uploaded datasets with their class counts, and the folders under the data root a job may name."""
        return {"datasets": [public_dataset(d) for d in store.list_datasets()], "folders": settings.data_folders()}

    @app.delete("/datasets/{dataset_id}")
    def delete_dataset(dataset_id: str, _owner: str = Depends(authorized)):
        """Delete an uploaded dataset and its versions (the files under the service's state). Jobs trained on it
        keep their runs; a queued, running or interrupted one on it must end first (409). A data-root folder that was
        registered by cleaning keeps its own files: only its versions go."""
        found = store.dataset(dataset_id)
        if found is None:
            raise Refused(404, f"no dataset '{dataset_id}'; GET /datasets lists them")
        if not store.delete_dataset(dataset_id):
            raise Refused(409, f"dataset {dataset_id} is used by a queued, running or interrupted job; cancel it "
                               f"or wait until it has ended")
        owned = (settings.state / "datasets" / dataset_id).resolve()
        if owned.is_relative_to((settings.state / "datasets").resolve()):
            shutil.rmtree(owned, ignore_errors=True)  # the upload and its .versions/; never a data-root folder
        return {"deleted": dataset_id}

    @app.get("/datasets/{dataset_id}")
    def show_dataset(dataset_id: str, _owner: str = Depends(authorized)):
        found = store.dataset(dataset_id)
        if found is None:
            raise Refused(404, f"no dataset '{dataset_id}'; GET /datasets lists them")
        return public_dataset(found)

    from trainer.service.pages import add_pages

    add_pages(app, store=store, settings=settings, token=token, public_job=answer)
    return app


def public_dataset(dataset: dict) -> dict:
    return {k: v for k, v in dataset.items() if k not in ("path", "owner")}
