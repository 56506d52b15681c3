"""`trainer serve`: a run's model behind HTTP (FastAPI + uvicorn).

POST /predict takes images (multipart, field `files`), GET /health describes the model, GET / is
a page to drop images on. The model is loaded once per worker from model.safetensors (never a
pickle); requests share it under a lock, so concurrent requests are served one batch at a time.
Every image goes through trainer.serving.inference, the path `trainer predict` takes, so the numbers match.
Bad input is answered with a 4xx and {"error": "<one line>"}; the server itself never fails on it.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time, and
# fastapi is imported inside create_app so that `trainer --help` never needs it.
import json
import os
import sys
import threading
from pathlib import Path

from trainer.runs import rundir
from trainer.errors import BadInput
from trainer.extras import require

MAX_FILES = 64  # images in one request
SETTINGS_VARIABLE = "TRAINER_SERVE_SETTINGS"  # how `trainer serve` hands its settings to uvicorn's workers


class Rejected(Exception):
    """A request that cannot be answered: its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, " ".join(reason.split())


class Predictor:
    """The run's model, loaded once, and the one way images become predictions."""

    def __init__(self, run_dir: Path, device: str):
        from trainer.device import resolve_device
        from trainer.model.learner import class_names, load_weights

        self.device = resolve_device(device)
        self.model, self.meta = load_weights(run_dir, self.device)
        self.labels = class_names(run_dir, self.meta["classes"])  # display names (pets: cat, dog), as predict
        self.lock = threading.Lock()  # one forward pass at a time: fastai's pipeline and the model are shared

    def predict(self, images: list, top_k: int) -> list[list[dict]]:
        from trainer.serving.inference import predict_probabilities, top_predictions

        with self.lock:
            probs = predict_probabilities(self.model, self.meta, images, len(images), self.device)
        return top_predictions(self.labels, probs, top_k)


def decode(name: str, data: bytes, max_bytes: int, max_pixels: int):
    """An upload as an RGB image, or Rejected naming the file and what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    from trainer.data.images import open_image

    if not data:
        raise Rejected(400, f"'{name}' is empty (0 bytes)")
    if len(data) > max_bytes:
        raise Rejected(413, f"'{name}' is over the limit of {max_bytes} bytes (--max-bytes)")
    try:
        return open_image(data, max_pixels=max_pixels)
    except UnidentifiedImageError:
        raise Rejected(415, f"'{name}' is not an image that PIL can read; send JPEG, PNG, WebP, BMP, GIF or "
                            f"TIFF") from None
    except (ValueError, Image.DecompressionBombError) as e:
        raise Rejected(413, f"'{name}' is {e} (--max-pixels)") from None
    except Exception as e:  # PIL raises many types for damaged data
        raise Rejected(400, f"'{name}' is truncated or damaged ({type(e).__name__}: {e})") from None


def create_app(run_dir: Path, device: str = "auto", max_bytes: int = 20_000_000, max_pixels: int = 40_000_000,
               ready: str | None = None):
    """The FastAPI app, with the model loaded. `ready`: a line for stderr once the app starts up."""
    import contextlib
    import html

    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import HTMLResponse

    predictor = Predictor(run_dir, device)
    meta = predictor.meta

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if ready:
            print(ready, file=sys.stderr, flush=True)
        yield

    title = f"{meta['recipe']} · {meta['arch']} · run {run_dir.resolve().name}"
    app = FastAPI(title=f"trainer serve · {title}", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_guards(app, max_bytes)

    @app.get("/health")
    def health():
        return {"status": "ok", "run": run_dir.resolve().name, "run_dir": str(run_dir.resolve()),
                "recipe": meta["recipe"], "model": meta["arch"], "classes": predictor.labels,
                "device": str(predictor.device), "max_files": MAX_FILES, "max_bytes": max_bytes,
                "max_pixels": max_pixels}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{title}}", html.escape(title))

    @app.post("/predict")
    def predict(files: list[UploadFile] | None = File(None), top_k: int = 1):
        # a plain `def`: FastAPI runs it in its thread pool, so decoding and the model never block the event loop
        if not files:
            raise Rejected(422, "no image: send one or more files in the multipart field 'files'")
        if len(files) > MAX_FILES:
            raise Rejected(413, f"{len(files)} files in one request; at most {MAX_FILES}")
        if top_k < 1:
            raise Rejected(422, f"top_k must be at least 1, got {top_k}")
        names = [upload.filename or f"file {i + 1}" for i, upload in enumerate(files)]
        images = [decode(name, upload.file.read(max_bytes + 1), max_bytes, max_pixels)
                  for name, upload in zip(names, files)]
        predictions = predictor.predict(images, top_k)
        return {"run": run_dir.resolve().name, "model": meta["arch"],
                "results": [{"file": name, "predictions": p} for name, p in zip(names, predictions)]}

    return app


def add_guards(app, max_bytes: int) -> None:
    """Every refusal as JSON with a one-line reason: ours (Rejected), FastAPI's validation errors, and a
    request too large to read."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(Rejected)
    def rejected(request: Request, error: Rejected):
        return JSONResponse({"error": error.reason}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """Refuse an oversized request from its Content-Length, before its body is read."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_FILES * max_bytes + 1_000_000:
            return JSONResponse({"error": f"the request is {length} bytes, over {MAX_FILES} files of "
                                          f"--max-bytes {max_bytes}"}, status_code=413)
        return await call_next(request)


def app_from_settings():
    """uvicorn's factory in each worker: the settings `trainer serve` put in the environment."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")  # as cli.py: fastai's, not ours
    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    # The socket already listens (see serve): a request sent once this line is out waits in its backlog.
    return create_app(Path(settings["run_dir"]), settings["device"], settings["max_bytes"], settings["max_pixels"],
                      ready=f"ready: http://{settings['host']}:{settings['port']} (pid {os.getpid()})")


def serve(run_dir: Path, host: str, port: int, workers: int, device: str, max_bytes: int, max_pixels: int) -> None:
    """Check what can be checked here (one clear line, exit 2), then hand over to uvicorn."""
    import socket

    require("serve", "trainer serve")
    for name, value in (("--workers", workers), ("--max-bytes", max_bytes), ("--max-pixels", max_pixels)):
        if value < 1:
            raise BadInput(f"{name} must be at least 1, got {value}")
    if not (run_dir / rundir.WEIGHTS).is_file() or not (run_dir / rundir.MODEL_META).is_file():
        raise BadInput(f"{run_dir} has no model.safetensors/model.json; serve loads those (never model.pkl): "
                       f"train again with `trainer fit`")
    from trainer.device import resolve_device
    from trainer.model.learner import load_weights

    resolve_device(device)  # --device cuda without a GPU: say so here, not in every worker
    load_weights(run_dir, "cpu")  # a damaged model.json or model.safetensors: one line now, not a worker's traceback
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise BadInput(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    os.environ[SETTINGS_VARIABLE] = json.dumps({"run_dir": str(run_dir.resolve()), "host": host, "port": port,
                                                "device": device, "max_bytes": max_bytes, "max_pixels": max_pixels})
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("trainer.serving.server:app_from_settings", factory=True, host=host, port=port, workers=workers,
                            log_level="info", timeout_graceful_shutdown=5)
    # As uvicorn.run does it, except that the socket listens before any worker loads the model, so each
    # worker's "ready" line (after its model loaded) means requests are taken from then on.
    sock = config.bind_socket()
    sock.listen(config.backlog)
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
h1 { font-size: 1.4em; }
body { font: 15px/1.4 system-ui, sans-serif; max-width: 760px; margin: 2em auto; padding: 0 1em; color: #222; }
#drop { display: block; border: 2px dashed #888; border-radius: 8px; padding: 2.5em 1em; text-align: center; cursor: pointer; }
#drop.over { background: #eef5ff; border-color: #2a6df4; }
.result { display: flex; gap: 1em; margin: 1.2em 0; align-items: flex-start; }
.result img { width: 96px; height: 96px; object-fit: contain; background: #f3f3f3; border-radius: 4px; }
.rows { flex: 1; } .name { font-weight: 600; margin-bottom: .3em; word-break: break-all; }
.row { display: grid; grid-template-columns: 9em 1fr 4.5em; gap: .5em; align-items: center; margin: .15em 0; }
.bar { background: #e6e6e6; border-radius: 3px; height: 14px; } .bar > div { background: #2a6df4; height: 100%; border-radius: 3px; }
.label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; } .pct { text-align: right; font-variant-numeric: tabular-nums; }
#error { color: #b00020; min-height: 1.4em; }
</style></head>
<body>
<h1>{{title}}</h1>
<label id="drop" for="files">Drop images here, or click to choose<br>
<input id="files" type="file" accept="image/*" multiple hidden></label>
<p id="error" role="alert"></p>
<div id="results"></div>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('files');
const results = document.getElementById('results'), error = document.getElementById('error');
async function send(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append('files', f, f.name);
  error.textContent = ''; results.textContent = 'predicting…';
  try {
    const answer = await fetch('predict?top_k=5', { method: 'POST', body: form });
    const body = await answer.json();
    results.textContent = '';
    if (!answer.ok) { error.textContent = body.error || answer.statusText; return; }
    body.results.forEach((r, i) => results.append(render(r, files[i])));
  } catch (e) { results.textContent = ''; error.textContent = 'the server did not answer: ' + e; }
}
function render(result, file) {
  const box = document.createElement('section'); box.className = 'result';
  box.dataset.file = result.file; box.dataset.label = result.predictions[0].label;
  const img = document.createElement('img'); img.alt = result.file; img.src = URL.createObjectURL(file);
  const rows = document.createElement('div'); rows.className = 'rows';
  const name = document.createElement('div'); name.className = 'name'; name.textContent = result.file; rows.append(name);
  for (const p of result.predictions) {
    const row = document.createElement('div'); row.className = 'row';
    const label = document.createElement('span'); label.className = 'label'; label.textContent = p.label;
    const bar = document.createElement('div'); bar.className = 'bar';
    const fill = document.createElement('div'); fill.style.width = (100 * p.probability).toFixed(1) + '%'; bar.append(fill);
    const pct = document.createElement('span'); pct.className = 'pct'; pct.textContent = (100 * p.probability).toFixed(1) + '%';
    row.append(label, bar, pct); rows.append(row);
  }
  box.append(img, rows); return box;
}
input.addEventListener('change', () => send([...input.files]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over'); send([...e.dataTransfer.files]); });
</script>
</body></html>
"""
