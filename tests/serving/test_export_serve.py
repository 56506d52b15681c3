"""After training: `trainer export` (ONNX, TorchScript) and `trainer serve` (HTTP), checked against `trainer predict`.

The server runs as a real process on a free port and is talked to over HTTP; its page is driven in
headless chromium through the DevTools protocol (a file is set on the page's file input, as a
person choosing a file would, and the answer is read back from the page).
"""

from __future__ import annotations

import concurrent.futures
import copy
import io
import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import Process, serving
from PIL import Image

httpx = pytest.importorskip("httpx")


def digits_images(run_dir: Path, per_class: int = 1) -> list[Path]:
    """Images of the run's own digits data, `per_class` of each class (the testing folder)."""
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    return [path for k in range(10) for path in sorted((data / "testing" / str(k)).glob("*.png"))[:per_class]]


def predicted(trainer, run_dir: Path, images: list[Path], top_k: int) -> dict[str, list[dict]]:
    rows = json.loads(trainer("predict", run_dir, *images, "--json", "--top-k", top_k).stdout)
    return {Path(row["path"]).name: row["predictions"] for row in rows}


def as_described(description: dict, image: Path) -> np.ndarray:
    """An image made into the exported model's input by following only its JSON description."""
    rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255
    assert list(rgb.shape[:2]) == description["input"]["size"]  # digits: no resize
    if description["input"]["mean"]:
        rgb = (rgb - np.array(description["input"]["mean"])) / np.array(description["input"]["std"])
    return rgb.transpose(2, 0, 1).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_export_onnx_and_torchscript_agree_with_predict(trainer, digits_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime
    import torch

    run_dir, _ = digits_run
    images = digits_images(run_dir)  # 10 images: a batch size the export check did not use (32)
    expected = predicted(trainer, run_dir, images, 10)
    for fmt, name in (("onnx", "digits.onnx"), ("torchscript", "digits.torchscript")):
        result = trainer("export", run_dir, "--format", fmt, "--out", tmp_path / name)
        path = Path(result.stdout.strip().splitlines()[-1])
        assert path == tmp_path / name and path.is_file()
        description = json.loads((tmp_path / f"{name}.json").read_text())
        figure = description["check"]["max_probability_difference"]
        assert 0 <= figure <= 1e-4 and description["check"]["images"] == 32
        assert f"largest probability difference {figure:.3g}" in result.stdout
        assert description["classes"] == [str(k) for k in range(10)] and description["arch"] == "resnet34"
        assert description["run"] == run_dir.name and description["input"]["shape"] == ["batch", 3, 28, 28]
        batch = np.stack([as_described(description, image) for image in images])
        if fmt == "onnx":
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            assert json.loads(props["classes"]) == description["classes"] and props["run"] == run_dir.name
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            probs = softmax(session.run(["logits"], {"image": batch})[0])
        else:
            extra = {"trainer.json": ""}
            model = torch.jit.load(str(path), _extra_files=extra)
            assert json.loads(extra["trainer.json"])["classes"] == description["classes"]
            with torch.inference_mode():
                probs = model(torch.from_numpy(batch)).softmax(dim=1).numpy()
        for image, row in zip(images, probs):
            top = expected[image.name]
            assert str(int(row.argmax())) == top[0]["label"]
            assert {p["label"]: p["probability"] for p in top} == pytest.approx(
                {str(k): float(v) for k, v in enumerate(row)}, abs=1e-4)


def test_export_refuses_a_model_that_does_not_match(trainer, digits_run, tmp_path, monkeypatch):
    import torch

    from trainer.serving import export

    real = export.WRITERS["torchscript"]

    def damaged_writer(model, images, path, description):  # an exporter that changes the model
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken[-1][-1].weight.mul_(1.5)
        real(broken, images, path, description)

    monkeypatch.setitem(export.WRITERS, "torchscript", damaged_writer)
    run_dir, _ = digits_run
    exports = tmp_path / "exports"
    exports.mkdir()
    result = trainer("export", run_dir, "--format", "torchscript", "--out", exports / "m.torchscript", expect=2)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "differs from the PyTorch model by" in message
    assert "nothing written" in message and "Traceback" not in result.output
    assert list(exports.iterdir()) == []  # no model, no description, no temporary file


def test_export_and_serve_name_their_extras(trainer, digits_run, tmp_path, monkeypatch):
    run_dir, _ = digits_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    message = trainer("export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx", expect=2).stderr
    assert "pip install 'trainer[export]'" in message and not (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert "pip install 'trainer[serve]'" in trainer("serve", run_dir, expect=2).stderr
    assert "unknown --format 'tflite'" in trainer("export", run_dir, "--format", "tflite", expect=2).stderr


def test_serve_refuses_a_busy_port(trainer, digits_run):
    pytest.importorskip("fastapi")
    run_dir, _ = digits_run
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        message = trainer("serve", run_dir, "--port", busy.getsockname()[1], expect=2).stderr
    assert "cannot listen on 127.0.0.1" in message and "--port" in message


MAX_BYTES, MAX_PIXELS = 100_000, 1_000_000


@pytest.fixture(scope="module")
def server(digits_run):
    """`trainer serve` as a real process on a free port, small limits; stopped at the end whatever happens."""
    pytest.importorskip("fastapi")
    yield from serving(digits_run[0], "--max-bytes", MAX_BYTES, "--max-pixels", MAX_PIXELS)


def post(url: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", (name, data)) for name, data in files], params=params,
                      timeout=120)


def test_serve_answers_as_predict_does(trainer, digits_run, server, tmp_path):
    url, _ = server
    run_dir, _ = digits_run
    images = digits_images(run_dir)
    rgba = tmp_path / "rgba.png"  # another mode: converted to RGB on both paths
    Image.open(images[3]).convert("RGBA").save(rgba)
    odd = tmp_path / "odd.png"  # another size: brought to the training size (28x28) on both paths
    Image.open(images[5]).resize((40, 30)).save(odd)
    images += [rgba, odd]
    expected = predicted(trainer, run_dir, images, 3)

    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "resnet34" and health["device"] == "cpu"
    assert health["classes"] == [str(k) for k in range(10)] and health["run"] == run_dir.name

    answer = post(url, [(image.name, image.read_bytes()) for image in images], top_k=3)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["file"] for r in results] == [image.name for image in images]
    assert {r["file"]: r["predictions"] for r in results} == expected  # the same batch: the same numbers

    one = post(url, [(images[0].name, images[0].read_bytes())]).json()["results"]
    assert len(one[0]["predictions"]) == 1 and one[0]["predictions"][0]["label"] == expected[images[0].name][0]["label"]


def test_serve_refuses_bad_input_and_keeps_serving(digits_run, server):
    url, process = server
    run_dir, _ = digits_run
    good = digits_images(run_dir)[0]
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(png, "PNG")
    noisy = png.getvalue()  # incompressible: over MAX_BYTES
    wide = io.BytesIO()
    Image.new("L", (1100, 1000)).save(wide, "PNG")  # a few KB, but over MAX_PIXELS
    bad = {
        "notes.txt": (b"not an image at all\n", 415, "not an image"),
        "cut.png": (good.read_bytes()[:len(good.read_bytes()) // 2], 400, "truncated or damaged"),
        "empty.png": (b"", 400, "empty"),
        "big.png": (noisy, 413, f"over the limit of {MAX_BYTES} bytes"),
        "wide.png": (wide.getvalue(), 413, f"1100x1000 pixels, over the limit of {MAX_PIXELS}"),
    }
    assert len(noisy) > MAX_BYTES and len(wide.getvalue()) < MAX_BYTES
    for name, (data, status, reason) in bad.items():
        for files in ([(name, data)], [(good.name, good.read_bytes()), (name, data)]):  # alone, and after a good one
            answer = post(url, files)
            assert answer.status_code == status, (name, answer.text)
            assert "\n" not in answer.text and reason in answer.json()["error"] and name in answer.json()["error"]
    for params, reason in (({"top_k": 0}, "top_k must be at least 1"), ({"top_k": "two"}, "top_k")):
        answer = post(url, [(good.name, good.read_bytes())], **params)
        assert answer.status_code == 422 and reason in answer.json()["error"]
    answer = httpx.post(f"{url}/predict", data={"note": "no file"})
    assert answer.status_code == 422 and "no image" in answer.json()["error"]
    assert process.popen.poll() is None and httpx.get(f"{url}/health").status_code == 200
    assert "Traceback" not in "".join(process.output)


def test_serve_answers_20_concurrent_requests(trainer, digits_run, server):
    url, _ = server
    run_dir, _ = digits_run
    images = digits_images(run_dir, per_class=2)
    expected = predicted(trainer, run_dir, images, 2)
    requests = [[images[i]] if i % 3 else [images[i], images[(i + 7) % len(images)]] for i in range(20)]

    def ask(files):
        return post(url, [(image.name, image.read_bytes()) for image in files], top_k=2)

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, requests))
    for files, answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        for image, result in zip(files, answer.json()["results"], strict=True):
            assert result["file"] == image.name
            want = expected[image.name]
            assert [p["label"] for p in result["predictions"]] == [p["label"] for p in want]
            # another batch composition may move the last float digits, no more
            assert [p["probability"] for p in result["predictions"]] == pytest.approx(
                [p["probability"] for p in want], abs=1e-5)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    """The few Chrome DevTools Protocol calls the page test needs, over the browser's websocket."""

    def __init__(self, websocket_url: str):
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=60)
        self.next_id, self.events = 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv(timeout=120))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=True, **params)

    def wait_event(self, method: str) -> dict:
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                self.events.remove(found)
                return found
            self.events.append(json.loads(self.socket.recv(timeout=120)))


# Resolves once the page shows a result (or an error), with what a person would read there.
READ_RESULT = """new Promise(resolve => {
  const read = () => {
    const box = document.querySelector('#results .result'), error = document.querySelector('#error').textContent;
    if (!box && !error) return false;
    resolve({error, file: box && box.dataset.file, label: box && box.dataset.label,
             rows: box ? [...box.querySelectorAll('.row')].map(r => [r.querySelector('.label').textContent,
                     r.querySelector('.bar > div').style.width, r.querySelector('.pct').textContent]) : []});
    return true;
  };
  if (!read()) new MutationObserver((_, observer) => read() && observer.disconnect())
    .observe(document.body, {childList: true, subtree: true, characterData: true});
})"""


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_serve_page_shows_the_prediction_in_a_browser(trainer, digits_run, server, tmp_path):
    url, _ = server
    run_dir, _ = digits_run
    image = digits_images(run_dir)[7]
    expected = predicted(trainer, run_dir, [image], 5)[image.name]
    browser = Process([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                       f"--user-data-dir={tmp_path / 'profile'}", "about:blank"])
    try:
        websocket_url = browser.wait_for("DevTools listening on ").split("listening on ", 1)[1].strip()
        tools = DevTools(websocket_url)
        tools.page("Page.enable")
        tools.page("Page.navigate", url=f"{url}/")
        tools.wait_event("Page.loadEventFired")
        root = tools.page("DOM.getDocument")["root"]["nodeId"]
        node = tools.page("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
        tools.page("DOM.setFileInputFiles", nodeId=node, files=[str(image)])  # as if chosen in the file dialog
        shown = tools.page("Runtime.evaluate", expression=READ_RESULT, awaitPromise=True,
                           returnByValue=True)["result"]["value"]
        tools.socket.close()
    finally:
        browser.stop()
    assert shown["error"] == "" and shown["file"] == image.name and shown["label"] == expected[0]["label"]
    assert [row[0] for row in shown["rows"]] == [p["label"] for p in expected]
    assert [row[2] for row in shown["rows"]] == [f"{100 * p['probability']:.1f}%" for p in expected]
    widths = [float(row[1].rstrip("%")) for row in shown["rows"]]  # the bars
    assert widths == pytest.approx([100 * p["probability"] for p in expected], abs=0.06)
