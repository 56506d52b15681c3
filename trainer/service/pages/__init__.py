"""The service's pages, /ui/...: server-rendered HTML (Jinja2) with one small script and stylesheet shipped in
this package (static/; no CDN: the pages work offline). Live parts read the same JSON API the CLI uses: the
job page follows GET /jobs/{id}/events (server-sent events), the jobs list re-reads its rows every 2 s.

Who may look: the API's token, kept in an HttpOnly, SameSite=Strict cookie set by the login form (see auth.COOKIE
for why a cookie and not the page's storage). A page never answers 500: a missing job or dataset, a bad token,
a run whose files are gone or damaged is a page saying so.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from trainer.errors import first_line
from trainer.runs import rundir
from trainer.options import number_text
from trainer.recipes import lower_is_better
from trainer.service import auth, versions
from trainer.service import store as S
from trainer.service.jobs import trained_run
from trainer.service.losses import run_data_path

HERE = Path(__file__).parent
ROWS_SHOWN = 100  # jobs on the list page (the API pages through the rest)
TOP_LOSSES_SHOWN = 12
SAMPLES_PER_CLASS = 8


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return "–" if not math.isfinite(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
templates.filters.update(num=number, duration=duration)


def add_pages(app: FastAPI, *, store: S.Store, settings, token: str | None, public_job) -> None:
    """`public_job(job)`: a job as the API shows it."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")

    def viewer(request: Request) -> tuple[str | None, str | None]:
        """(owner, problem): owner None when the page must ask for the token; problem says why."""
        if token is None:
            return "local", None
        given = request.cookies.get(auth.COOKIE)
        if not given:
            return None, None
        if not auth.matches(given, token):
            return None, "That is not this service's token (it may have been changed): log in with the current one."
        return auth.owner_of(given), None

    def page(name: str, request: Request, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("data", {})
        context.setdefault("title", context.get("page", "trainer"))
        html = templates.get_template(name).render(logged_in=token is not None, **context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def message(request: Request, status: int, heading: str, text: str, link=("/ui/jobs", "All jobs")):
        return page("message.html", request, status, page="message", title=heading, heading=heading, text=text,
                    link=link)

    def login_page(request: Request, problem: str | None, status: int = 401) -> HTMLResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return page("login.html", request, status, page="login", title="Log in", problem=problem,
                    next=target if target.startswith("/ui/") and not target.startswith("/ui/login") else "/ui/jobs")

    def guarded(view):
        """A page handler that first checks the cookie; its failures become a page, never a 500."""
        async def handler(request: Request):
            owner, problem = viewer(request)
            if owner is None:
                return login_page(request, problem)
            try:
                return await view(request, owner)
            except Exception as error:  # a page shows what went wrong in one line and the service goes on
                return message(request, 500 if not isinstance(error, LookupError) else 404,
                               "This page could not be shown", f"{type(error).__name__}: {first_line(error)}. "
                               f"The service goes on serving; try again, and report it if it persists.")
        handler.__name__ = view.__name__
        return handler

    # --- login ----------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui/jobs", status_code=303)

    @app.get("/ui", include_in_schema=False)
    def ui_root():
        return RedirectResponse("/ui/jobs", status_code=303)

    @app.get("/ui/login", include_in_schema=False)
    def login_form(request: Request):
        return login_page(request, None, 200)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request):
        form = parse_qs((await request.body()).decode(errors="replace"))
        given = (form.get("token") or [""])[0].strip()
        target = (form.get("next") or ["/ui/jobs"])[0]
        if not target.startswith("/ui/") or target.startswith("//"):
            target = "/ui/jobs"  # never a redirect off this service
        if token is not None and not auth.matches(given, token):
            return page("login.html", request, 401, page="login", title="Log in", next=target,
                        problem="That is not this service's token: use the one `trainer service` printed "
                                "(or its TRAINER_TOKEN).")
        response = RedirectResponse(target, status_code=303)
        if token is not None:
            response.set_cookie(auth.COOKIE, given, max_age=auth.COOKIE_DAYS * 86400, httponly=True,
                                samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @app.get("/ui/logout", include_in_schema=False)
    def logout():
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    # --- what a page shows of a job -------------------------------------------------------------------------

    def job_view(job: dict) -> dict:
        """A job for the pages: the API's fields plus progress, main metric, duration and what it trains on."""
        from trainer.recipes import MULTI_METRICS, RECIPES

        view = public_job(job)
        epoch = store.latest_event(job["id"], "epoch")
        batch = store.latest_event(job["id"], "batch")
        started = store.latest_event(job["id"], "run_started")
        total = (epoch or {}).get("epochs_total") or (started or {}).get("epochs_total") or \
            job["options"].get("epochs")
        done = int(epoch["row"].get("epoch", 0)) if epoch else 0
        fraction = 0.0
        if job["state"] == S.SUCCEEDED:
            fraction = 1.0
        elif total:
            within = batch["batch"] / batch["batches"] if batch and batch.get("batches") and \
                batch.get("epoch", 0) > done and batch.get("phase") == "train" else 0.0
            fraction = min(1.0, (done + within) / total)
        view["percent"] = round(100 * fraction, 1)
        view["progress_text"] = (f"epoch {done}/{total}" if total else "") + \
            (f" · batch {batch['batch']}/{batch['batches']}" if batch and job["state"] in S.ACTIVE and
             batch.get("epoch", 0) > done else "")
        recipe = RECIPES.get(job["recipe"])
        metric = recipe.main_metric if recipe else None
        row = (epoch or {}).get("row") or {}
        if metric not in row and MULTI_METRICS[0] in row:  # a multi-label run's main metric
            metric = MULTI_METRICS[0]
        view["metric"] = (metric, number(row[metric])) if metric in row else None
        view["stage"] = "waiting for a learning rate" if view.get("lr_review") else None
        end = job["ended_at"] or (time.time() if job["started_at"] else None)
        view["duration"] = duration(end - job["started_at"]) if job["started_at"] and end else "–"
        view["created"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created_at"]))
        view["dataset_label"] = dataset_label(job)
        return view

    def dataset_label(job: dict) -> str | None:
        if job["dataset"]:
            found = store.dataset(job["dataset"])
            name = found["name"] if found else f"dataset {job['dataset']} (deleted)"
            version = job.get("dataset_version")
            return f"{name}, version {version}" if version else name
        if job["data"]:
            return f"data root: {Path(job['data']).name}"
        return None

    # --- jobs -------------------------------------------------------------------------------------------------

    async def jobs_page(request: Request, _owner: str):
        from trainer.recipes import RECIPES

        state = request.query_params.get("state") or None
        recipe = request.query_params.get("recipe") or None
        if state is not None and state not in S.STATES:
            state = None
        found, total = store.list_jobs(state, recipe, ROWS_SHOWN, 0)
        rows = [job_view(j) for j in found]
        if request.query_params.get("fragment") == "rows":
            return HTMLResponse(templates.get_template("_job_rows.html").render(jobs=rows, state=state,
                                                                                recipe=recipe),
                                headers={"Cache-Control": "no-store", "X-Total": str(total)})
        return page("jobs.html", request, page="jobs", title="Jobs", jobs=rows, total=total, states=S.STATES,
                    recipes=list(RECIPES), state=state, recipe=recipe)

    app.get("/ui/jobs", include_in_schema=False)(guarded(jobs_page))

    async def job_page(request: Request, _owner: str):
        job_id = request.path_params["job_id"]
        job = store.job(job_id)
        if job is None:
            return message(request, 404, f"No job {job_id}", f"There is no job {job_id} on this service: it may "
                                                              f"have been deleted.")
        view = job_view(job)
        results = results_of(job)
        if request.query_params.get("fragment") == "results":
            return HTMLResponse(templates.get_template("_results.html").render(job=view, results=results),
                                headers={"Cache-Control": "no-store"})
        return page("job.html", request, page="job", title=f"Job {job_id}", job=view, results=results,
                    active=S.ACTIVE, resumable=S.RESUMABLE, job_json=script_json(view),
                    data={"job": job_id})

    app.get("/ui/jobs/{job_id:int}", include_in_schema=False)(guarded(job_page))

    def results_of(job: dict) -> dict | None:
        """What an ended job left: summary, verdict, interpretation tables, downloads. Files that are missing or
        damaged are left out with a note, never an error."""
        run_dir = Path(job["run_dir"]) if job["run_dir"] else None
        if job["state"] not in S.ENDED or run_dir is None:
            return None
        if not run_dir.is_dir():
            return {"problems": [f"The run directory {run_dir} is gone."], "has": {}, "downloads": []}
        problems = []
        summary, problem = rundir.read_json(run_dir / rundir.SUMMARY)
        if problem == "unreadable":
            problems.append(f"{rundir.SUMMARY} is damaged; the metrics are in {rundir.METRICS}.")
        lr_found, _ = rundir.read_json(run_dir / rundir.LR_FIND_JSON)
        per_class, _ = rundir.read_json(run_dir / f"{rundir.PER_CLASS}.json")
        data_path = run_data_path(run_dir)
        has = {"report": (run_dir / rundir.REPORT).is_file(),
               "confusion": (run_dir / f"{rundir.CONFUSION}.png").is_file(),
               "onnx": (run_dir / rundir.EXPORTS["onnx"]).is_file()}
        downloads = [name for name in (rundir.WEIGHTS, rundir.MODEL_META, rundir.MODEL_PICKLE, rundir.METRICS,
                                       rundir.CONFIG, rundir.SPLIT, rundir.EXPORTS["onnx"])
                     if (run_dir / name).is_file()]
        return {"summary": summary if summary and isinstance(summary.get("final"), dict) else None,
                "verdict": verdict_of(summary), "has": has, "downloads": downloads, "problems": problems,
                "suggestions": (lr_found or {}).get("suggestions") if job["command"] == "lr-find" else None,
                "per_class": (per_class or {}).get("classes") if isinstance((per_class or {}).get("classes"), list)
                else None,
                "most_confused": read_rows(run_dir / f"{rundir.MOST_CONFUSED}.csv")[:10],
                "top_losses": [dict(row, path=relative(row.get("path", ""), data_path), loss=to_float(row.get("loss")),
                                    p_predicted=to_float(row.get("p_predicted")))
                               for row in read_rows(run_dir / f"{rundir.TOP_LOSSES}.csv")[:TOP_LOSSES_SHOWN]],
                "can_predict": trained_run(job) is not None}

    # --- new job ---------------------------------------------------------------------------------------------

    async def new_page(request: Request, _owner: str):
        from trainer.options import LR_FIND_OPTIONS, OPTIONS
        from trainer.recipes import RECIPES

        chosen = {"recipe": request.query_params.get("recipe") or "digits", "command": "fit", "options": {},
                  "source": request.query_params.get("source") or "", "nproc": None}
        earlier = request.query_params.get("from")
        if earlier and earlier.isdigit() and (job := store.job(int(earlier))) is not None:
            chosen.update(recipe=job["recipe"], command=job["command"], nproc=job["nproc"] if job["nproc"] > 1
                          else None, options={k: v for k, v in job["options"].items() if k in OPTIONS},
                          source=f"dataset:{job['dataset']}:{job.get('dataset_version') or 1}" if job["dataset"]
                          else f"data:{Path(job['data']).name}" if job["data"] else "")
        shown = [o for o in OPTIONS.values() if o.name not in SERVER_CHOSEN]
        panels = {}
        for o in shown:
            panels.setdefault(o.panel, []).append(option_field(o, o.name in LR_FIND_OPTIONS))
        # every version of every upload, newest first; the command names version 1 by its archive (what
        # `trainer fit --data` takes) and a later one by its folder on the service
        uploaded = [{"id": d["id"], "name": d["name"], "version": v["version"], "images": v["images"],
                     "classes": v["classes"], "shown_as": d["name"] if v["version"] == 1 else v["path"]}
                    for d in store.list_datasets() for v in reversed(store.versions(d["id"]))]
        recipes = [{"name": r.name, "summary": recipe_summary(r)} for r in RECIPES.values()]
        defs = {o["name"]: o for fields in panels.values() for o in fields}
        return page("new.html", request, page="new", title="New job", panels=list(panels.items()),
                    recipes=recipes, folders=settings.data_folders(), datasets=uploaded,
                    data_root=str(settings.data_root),
                    devices_total=settings.devices_total, chosen=chosen, option_defs=script_json(defs))

    app.get("/ui/new", include_in_schema=False)(guarded(new_page))

    # --- cleaner ----------------------------------------------------------------------------------------------

    async def clean_page(request: Request, _owner: str):
        job_id = request.path_params["job_id"]
        job = store.job(job_id)
        if job is None:
            return message(request, 404, f"No job {job_id}", f"There is no job {job_id} on this service.")
        if trained_run(job) is None:
            return message(request, 409, "Nothing to clean with yet",
                           f"Job {job_id} is a {job['command']} job, {job['state']}: the cleaner needs a fit job that "
                           f"succeeded, whose model ranks the images.", (f"/ui/jobs/{job_id}", f"Job {job_id}"))
        if job["dataset"] and store.dataset(job["dataset"]) is None:
            return message(request, 409, "The dataset is gone",
                           f"Job {job_id} trained on dataset {job['dataset']}, which has been deleted: there is nothing "
                           f"left to clean. Upload it again to clean it.", (f"/ui/jobs/{job_id}", f"Job {job_id}"))
        view = job_view(job)
        return page("clean.html", request, page="clean", title=f"Clean · job {job_id}", job=view,
                    job_json=script_json(view), data={"job": job_id})

    app.get("/ui/jobs/{job_id:int}/clean", include_in_schema=False)(guarded(clean_page))

    # --- datasets ---------------------------------------------------------------------------------------------

    async def datasets_page(request: Request, _owner: str):
        shown = []
        for d in store.list_datasets():
            every = store.versions(d["id"])
            latest = every[-1] if every else {"images": d["images"], "classes": d["classes"]}
            shown.append({**d, "versions": len(every), "images": latest["images"], "classes": latest["classes"],
                          "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created_at"]))})
        return page("datasets.html", request, page="datasets", title="Datasets", datasets=shown,
                    folders=settings.data_folders())

    app.get("/ui/datasets", include_in_schema=False)(guarded(datasets_page))

    async def dataset_page(request: Request, _owner: str):
        dataset_id = request.path_params["dataset_id"]
        found = store.dataset(dataset_id)
        if found is None:
            return message(request, 404, "No such dataset", f"There is no dataset '{dataset_id}' on this service: "
                                                            f"it may have been deleted.", ("/ui/datasets", "Datasets"))
        every = store.versions(dataset_id)
        asked = request.query_params.get("version", "")
        found_version = store.version(dataset_id, int(asked) if asked.isdigit() else every[-1]["version"])
        if found_version is None:
            return message(request, 404, "No such version", f"Dataset {found['name']} has no version {asked}.",
                           (f"/ui/datasets/{dataset_id}", found["name"]))
        samples = versions.samples(found_version, SAMPLES_PER_CLASS) if Path(found_version["path"]).is_dir() else {}
        return page("dataset.html", request, page="dataset", title=found["name"], dataset=found,
                    versions=[versions.summary(v) for v in every], version=versions.detail(store, found_version),
                    samples=samples)

    app.get("/ui/datasets/{dataset_id}", include_in_schema=False)(guarded(dataset_page))

    async def no_page(request: Request, _owner: str):
        return message(request, 404, "No such page", f"There is no page {request.url.path} here.")

    app.get("/ui/{anything:path}", include_in_schema=False)(guarded(no_page))  # last: after every real page


# Options the service decides, never the form: paths on the server (and the digest of a --data archive, which
# only the command line downloads or reads) and the device (the service assigns GPUs).
SERVER_CHOSEN = ("data", "data_sha256", "weights", "device")


def option_field(option, for_lr_find: bool) -> dict:
    """An option definition as the form and its script read it (the same definition the CLI's flags come from)."""
    kind = option.kind.__name__
    closed_low = option.low is not None and not option.low_open
    closed_high = option.high is not None and not option.high_open
    return {"name": option.name, "flag": option.flag, "kind": kind, "switch": option.switch,
            "choices": list(option.choices), "default": option.default, "help": option.help,
            "min": number_text(option.low) if closed_low else None,
            "max": number_text(option.high) if closed_high else None,
            "range": option.range_text() if option.low is not None or option.high is not None else "",
            "lr_find": for_lr_find}


def recipe_summary(recipe) -> str:
    return recipe.summary.strip().split(". ")[0][:70]


def script_json(value) -> str:
    """JSON to put inside <script type="application/json">: '</' cannot end the element early."""
    return json.dumps(value, default=str).replace("</", "<\\/")


def relative(path: str, data_path: Path | None) -> str:
    """A top-losses path as split.csv writes it (relative to the run's data folder)."""
    if data_path is not None and os.path.isabs(path):
        try:
            return str(Path(path).relative_to(data_path))
        except ValueError:
            return path
    return path


def read_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def verdict_of(summary: dict | None) -> dict | None:
    baseline = (summary or {}).get("baseline")
    if not isinstance(baseline, dict) or "status" not in baseline:
        return None
    better = "at most" if lower_is_better(str(baseline.get("metric"))) else "at least"
    setting = f"{baseline.get('epochs')} epoch(s), {baseline.get('arch')}, " \
              f"{'pretrained' if baseline.get('pretrained') else 'from scratch'}"
    text = f"{baseline.get('metric')} {number(baseline.get('actual'))}, expected {better} " \
           f"{number(baseline.get('expected'))} for {setting} ({baseline.get('source')})"
    return {"status": baseline["status"], "text": text}


def quoted(path: str) -> str:
    return quote(path, safe="")
