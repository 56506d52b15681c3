"""`trainer serve`'s memory bounds: inputs at the model's training size, a pixel budget per request, batches of
--max-batch, and a failure inside inference answered with one line while the server goes on serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import serving
from PIL import Image

httpx = pytest.importorskip("httpx")

MAX_PIXELS, MAX_REQUEST_PIXELS, MAX_BATCH = 1_000_000, 2_500_000, 4
SIDE = 28 * 35  # 980x980: under --max-pixels, 35 times the digits' own 28x28


def digit_image(run_dir: Path, k: int) -> Path:
    data = Path(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    return sorted((data / "testing" / str(k)).glob("*.png"))[0]


def enlarged(image: Path, out: Path) -> Path:
    Image.open(image).resize((SIDE, SIDE), Image.NEAREST).save(out)
    return out


def png(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def same(predictions: list[dict], expected: list[dict]) -> None:
    """The same labels; another batch composition may move the last float digits, no more."""
    assert [p["label"] for p in predictions] == [p["label"] for p in expected]
    assert [p["probability"] for p in predictions] == pytest.approx([p["probability"] for p in expected], abs=1e-5)


@pytest.fixture(scope="module")
def limited_server(digits_run):
    pytest.importorskip("fastapi")
    yield from serving(digits_run[0], "--max-pixels", MAX_PIXELS, "--max-request-pixels", MAX_REQUEST_PIXELS,
                       "--max-batch", MAX_BATCH)


def post(url: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", f) for f in files], params=params, timeout=120)


def test_health_says_the_limits(limited_server):
    url, _ = limited_server
    health = httpx.get(f"{url}/health").json()
    assert health["max_pixels"] == MAX_PIXELS and health["max_request_pixels"] == MAX_REQUEST_PIXELS
    assert health["max_batch"] == MAX_BATCH and health["input_size"] == [28, 28]


def test_a_large_image_goes_in_at_the_training_size(trainer, digits_run, limited_server, tmp_path):
    url, process = limited_server
    run_dir, _ = digits_run
    small = digit_image(run_dir, 3)
    large = enlarged(small, tmp_path / "large.png")
    rows = json.loads(trainer("predict", run_dir, small, large, "--json", "--top-k", 3).stdout)
    expected = {Path(row["path"]).name: row["predictions"] for row in rows}
    assert expected["large.png"][0]["label"] == expected[small.name][0]["label"]  # the same digit, 35 times larger

    for image in (large, small):  # the large one, and the next request as usual
        answer = post(url, [png(image)], top_k=3)
        assert answer.status_code == 200, answer.text
        same(answer.json()["results"][0]["predictions"], expected[image.name])  # as `trainer predict` says
    assert process.popen.poll() is None


def test_a_request_over_the_pixel_budget_is_refused(digits_run, limited_server, tmp_path):
    url, process = limited_server
    run_dir, _ = digits_run
    large = enlarged(digit_image(run_dir, 5), tmp_path / "large.png")  # 0.96 M pixels, each under --max-pixels
    answer = post(url, [(f"{k}.png", large.read_bytes()) for k in range(3)])  # 2.9 M together
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert "\n" not in error and "--max-request-pixels 2500000" in error and "2.png" in error
    assert post(url, [png(large), png(large)]).status_code == 200  # within the budget
    many = post(url, [png(digit_image(run_dir, k)) for k in range(10)])  # more than --max-batch: in chunks
    assert many.status_code == 200 and len(many.json()["results"]) == 10
    assert process.popen.poll() is None and "Traceback" not in "".join(process.output)


def test_batches_are_chunked_and_sized(digits_run, monkeypatch):
    """In process: what the model is given for a large image and a request of many (shapes recorded)."""
    import torch

    from trainer.data.images import open_image
    from trainer.model.learner import load_weights
    from trainer.serving import inference

    run_dir, _ = digits_run
    model, meta = load_weights(run_dir, torch.device("cpu"))
    shapes = []
    monkeypatch.setattr(inference, "probabilities",
                        lambda m, batches, multi=False: torch.cat([shapes.append(tuple(x.shape)) or m(x).softmax(-1)
                                                                   for x in batches]))
    images = [Image.new("RGB", (SIDE, SIDE))] + [open_image(digit_image(run_dir, k)) for k in range(9)]  # as decoded
    inference.predict_probabilities(model, meta, images, MAX_BATCH, torch.device("cpu"))
    assert shapes == [(4, 3, 28, 28), (4, 3, 28, 28), (2, 3, 28, 28)]
    old = {k: v for k, v in meta.items() if k != "native_size"}  # a run from before model.json recorded it
    shapes.clear()
    inference.predict_probabilities(model, old, images[:1], MAX_BATCH, torch.device("cpu"))
    assert shapes == [(1, 3, 28, 28)] and meta["native_size"] == [28, 28]


def test_a_failure_inside_inference_is_one_line_and_the_server_goes_on(digits_run, monkeypatch):
    from fastapi.testclient import TestClient

    from trainer.serving import inference
    from trainer.serving.server import create_app

    run_dir, _ = digits_run
    plain, calls = inference.predict_probabilities, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory\nmore")
        return plain(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_probabilities", fails_once)
    client = TestClient(create_app(run_dir, "cpu"), raise_server_exceptions=False)
    image = png(digit_image(run_dir, 1))
    answer = client.post("/predict", files=[("files", image)])
    assert answer.status_code == 500 and "\n" not in answer.text
    assert "inference failed (RuntimeError" in answer.json()["error"] and "not enough memory" in answer.json()["error"]
    assert client.post("/predict", files=[("files", image)]).status_code == 200
