"""`trainer serve`: a run's model behind HTTP (FastAPI + uvicorn).

POST /predict takes images (multipart, field `files`), GET /health describes the model, GET / is
a page to drop images on. The model is loaded once per worker from model.safetensors (never a
pickle); requests share it under a lock, so concurrent requests are served one batch at a time.
Every image goes through trainer.serving.inference, the path `trainer predict` takes, so the numbers match.
Bad input is answered with a 4xx and {"error": "<one line>"}; the server itself never fails on it. Memory is
bounded per request: the decoded pixels of all its images (--max-request-pixels, checked from the headers before
any image is decoded) and the images run through the model at once (--max-batch). A failure inside inference is
a 500 with one line, and the next request is served as usual.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time, and
# fastapi is imported inside create_app so that `trainer --help` never needs it.
import json
import os
import sys
import threading
from pathlib import Path

from trainer.runs import rundir
from trainer.errors import BadInput, first_line
from trainer.extras import require

MAX_FILES = 64  # images in one request
MAX_REQUEST_PIXELS = 80_000_000  # decoded pixels of one request's images together (two of the largest images)
MAX_BATCH = 16  # images run through the model at once
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

    def predict(self, images: list, top_k: int, max_batch: int, tta: bool = False) -> list[list[dict]]:
        from trainer.serving.inference import predict_probabilities, predictions_of

        try:
            with self.lock:
                probs = predict_probabilities(self.model, self.meta, images, max_batch, self.device, tta=tta)
        except Exception as e:  # MemoryError included: this request fails, the server goes on
            raise Rejected(500, f"inference failed ({type(e).__name__}: {first_line(e)}); the server goes on "
                                f"serving: try fewer or smaller images") from None
        return predictions_of(self.meta, self.labels, probs, top_k)  # multi-label: every label above the threshold


def request_pixels(names: list[str], datas: list[bytes], budget: int) -> None:
    """Refuse (413) a request whose images, by their headers, decode to more than `budget` pixels together."""
    import io

    from PIL import Image

    total = 0
    for name, data in zip(names, datas):
        try:
            with Image.open(io.BytesIO(data)) as opened:  # the header only: nothing is decoded yet
                total += opened.width * opened.height
        except Exception:  # not an image: decode() says so
            continue
        if total > budget:
            raise Rejected(413, f"the request's images decode to over {budget} pixels together (at '{name}'); "
                                f"the limit is --max-request-pixels {budget}: send fewer or smaller images")


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


def read_request(files: list | None, top_k: int, max_bytes: int, max_pixels: int, max_request_pixels: int):
    """(names, decoded images) of a request's uploads, or Rejected: checked before anything is decoded."""
    if not files:
        raise Rejected(422, "no image: send one or more files in the multipart field 'files'")
    if len(files) > MAX_FILES:
        raise Rejected(413, f"{len(files)} files in one request; at most {MAX_FILES}")
    if top_k < 1:
        raise Rejected(422, f"top_k must be at least 1, got {top_k}")
    names = [upload.filename or f"file {i + 1}" for i, upload in enumerate(files)]
    datas = [upload.file.read(max_bytes + 1) for upload in files]
    request_pixels(names, datas, max_request_pixels)
    return names, [decode(name, data, max_bytes, max_pixels) for name, data in zip(names, datas)]


def create_app(run_dir: Path, device: str = "auto", max_bytes: int = 20_000_000, max_pixels: int = 40_000_000,
               ready: str | None = None, max_request_pixels: int = MAX_REQUEST_PIXELS, max_batch: int = MAX_BATCH):
    """The FastAPI app, with the model loaded. `ready`: a line for stderr once the app starts up."""
    import contextlib
    import html
    from importlib.resources import files as package_files

    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import HTMLResponse

    from trainer.serving.inference import input_size

    predictor = Predictor(run_dir, device)
    meta = predictor.meta
    page_html = (package_files("trainer.serving") / "page.html").read_text(encoding="utf-8")

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
                "max_pixels": max_pixels, "max_request_pixels": max_request_pixels, "max_batch": max_batch,
                "input_size": input_size(meta), "multi_label": bool(meta.get("multi_label")),
                "threshold": meta.get("threshold")}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return page_html.replace("{{title}}", html.escape(title))

    @app.post("/predict")
    def predict(files: list[UploadFile] | None = File(None), top_k: int = 1, tta: bool = False):
        # a plain `def`: FastAPI runs it in its thread pool, so decoding and the model never block the event loop
        names, images = read_request(files, top_k, max_bytes, max_pixels, max_request_pixels)
        predictions = predictor.predict(images, top_k, max_batch, tta)  # tta: 5 passes, seeded (inference.py)
        return {"run": run_dir.resolve().name, "model": meta["arch"], "tta": tta,
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

    @app.exception_handler(Exception)
    def failed(request: Request, error: Exception):  # anything else: one line, and the server goes on
        return JSONResponse({"error": f"the server failed on this request ({type(error).__name__}: "
                                      f"{first_line(error)})"}, status_code=500)

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
                      ready=f"ready: http://{settings['host']}:{settings['port']} (pid {os.getpid()})",
                      max_request_pixels=settings["max_request_pixels"], max_batch=settings["max_batch"])


def serve(run_dir: Path, host: str, port: int, workers: int, device: str, max_bytes: int, max_pixels: int,
          max_request_pixels: int = MAX_REQUEST_PIXELS, max_batch: int = MAX_BATCH) -> None:
    """Check what can be checked here (one clear line, exit 2), then hand over to uvicorn."""
    import socket

    require("serve", "trainer serve")
    for name, value in (("--workers", workers), ("--max-bytes", max_bytes), ("--max-pixels", max_pixels),
                        ("--max-request-pixels", max_request_pixels), ("--max-batch", max_batch)):
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
                                                "device": device, "max_bytes": max_bytes, "max_pixels": max_pixels,
                                                "max_request_pixels": max_request_pixels, "max_batch": max_batch})
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
