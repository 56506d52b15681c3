"""`trainer export`: a run's model as ONNX or TorchScript, checked against PyTorch before it is written.

The file takes what `trainer predict` feeds the model (NCHW float32 RGB, pixels / 255, then the
training normalisation) with any batch size, and returns logits (softmax gives the probabilities; for a
multi-label model, each logit's sigmoid, and every label above the recorded threshold is predicted).
How to make that input (resize, mean/std) and the class names travel with it: in the ONNX
metadata or TorchScript's extra files, and in a JSON file beside it (FILE.json).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from trainer.errors import BadInput
from trainer.runs import rundir
from trainer.extras import require

MAX_DIFFERENCE = 1e-4  # largest probability difference between the exported and the PyTorch model
CHECK_IMAGES = 32  # validation images the check runs (the first ones of the run's own validation set)
FORMATS = rundir.EXPORTS


def export_run(run_dir: Path, fmt: str, out: Path | None, data: str | None) -> tuple[Path, dict]:
    """Write the run's model as `fmt` to `out` (default RUN_DIR/model.onnx or model.torchscript) with its
    description in OUT.json; (path, description). Nothing is written when the check fails."""
    from trainer.serving.inference import input_batches, probabilities
    from trainer.inspection.interpret import run_data
    from trainer.model.learner import load_weights
    from trainer.files import atomic_path, remove_stale_temporaries_of, write_json

    if fmt not in FORMATS:
        raise BadInput(f"unknown --format '{fmt}'; choose onnx or torchscript")
    if fmt == "onnx":
        require("export", "--format onnx")
    path = target_path(run_dir, fmt, out)
    _, _, _, build_split = run_data(run_dir, data)
    cpu = torch.device("cpu")
    model, meta = load_weights(run_dir, cpu)
    split = build_split(CHECK_IMAGES, cpu)
    if [str(c) for c in split.vocab] != meta["classes"]:
        raise BadInput("the classes in the run's data differ from the model's; pass --data with the run's dataset")
    items = list(split.valid_ds.items)[:CHECK_IMAGES]
    images = next(input_batches(meta, items, CHECK_IMAGES, cpu))
    multi = bool(meta.get("multi_label"))  # a sigmoid per label, not a softmax over them
    expected = probabilities(model, [images], multi)
    description = describe(run_dir, meta, fmt, path, images)
    for target in (path, sidecar(path)):  # what an interrupted export (SIGKILL) left behind
        remove_stale_temporaries_of(target)
    with atomic_path(path) as tmp:
        WRITERS[fmt](model, images, tmp, description)
        difference = check(fmt, tmp, images, expected, multi)
        description["check"] = {"images": len(images), "max_probability_difference": difference,
                                "limit": MAX_DIFFERENCE}
        write_json(sidecar(path), description)
    return path, description


def check(fmt: str, path: Path, images: torch.Tensor, expected: torch.Tensor, multi_label: bool = False) -> float:
    """The exported file's largest probability difference from PyTorch's `expected`; BadInput over the limit."""
    try:
        difference = max_difference(RUNNERS[fmt](path), images, expected, multi_label)
    except Exception as e:  # onnxruntime and torch.jit raise their own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"the exported {fmt} model does not run ({type(e).__name__}: {first}); nothing written: "
                       f"try the other --format") from None
    if not difference <= MAX_DIFFERENCE:  # `not <=`: a NaN difference fails too
        raise BadInput(f"the exported {fmt} model differs from the PyTorch model by {difference:.3g} in probability "
                       f"on {len(images)} validation images (limit {MAX_DIFFERENCE:g}); nothing written: try the "
                       f"other --format")
    return difference


def target_path(run_dir: Path, fmt: str, out: Path | None) -> Path:
    path = run_dir / FORMATS[fmt] if out is None else out / FORMATS[fmt] if out.is_dir() else out
    if not path.parent.is_dir():
        raise BadInput(f"--out {out}: the folder {path.parent} does not exist; create it or choose another --out")
    return path


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def describe(run_dir: Path, meta: dict, fmt: str, path: Path, images: torch.Tensor) -> dict:
    """What a program outside trainer needs to use the file: classes and how to make the input."""
    from trainer.model.learner import class_names

    height, width = images.shape[-2:]
    norm = meta["normalize"] or {"mean": None, "std": None}
    return {"format": fmt, "file": path.name, "run": run_dir.resolve().name, "run_dir": str(run_dir.resolve()),
            "recipe": meta["recipe"], "arch": meta["arch"], "classes": class_names(run_dir, meta["classes"]),
            "vocab": meta["classes"],
            "input": {"name": "image", "shape": ["batch", 3, height, width], "dtype": "float32",
                      "size": [height, width], "resize": resize_of(meta, height, width),
                      "pixels": "RGB, scaled to 0..1 (value / 255), then (x - mean) / std per channel",
                      "mean": norm["mean"], "std": norm["std"]},
            "output": {"name": "logits", "shape": ["batch", len(meta["classes"])],
                       "probabilities": output_words(meta)},
            "multi_label": bool(meta.get("multi_label")), "threshold": meta.get("threshold"),
            "torch": torch.__version__}


def output_words(meta: dict) -> str:
    if meta.get("multi_label"):
        return (f"multi-label: the sigmoid of each logit is its label's probability; every label above "
                f"{meta.get('threshold') or 0.5} (the run's --threshold) is predicted")
    return "softmax over the last axis"


def resize_of(meta: dict, height: int, width: int) -> str:
    """What the run's validation transforms (model.json's pipeline) do to an image's size, in words."""
    from trainer.serving.inference import run_pipeline

    resize = run_pipeline(meta).get("item_tfms")
    if resize is None:
        return (f"none for images of the training size ({height}x{width}); others are brought to it as fastai's "
                f"Resize does (scale the shorter side, centre-crop)")
    side = resize.size[0]
    words = f"scale the shorter side to {side} and centre-crop {side}x{side} (fastai's Resize, at validation)"
    return words if (side, side) == (height, width) else f"{words}, then resize to {height}x{width}"


def export_onnx(model, images: torch.Tensor, path: Path, description: dict) -> None:
    """torch.onnx's torch.export-based exporter (its default since torch 2.9; needs onnxscript). The older
    TorchScript-based one is deprecated and announced for removal, so depending on it would break on a
    later torch. The batch dimension is declared dynamic; everything else is fixed by the example batch."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (images,), None, input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        except Exception as e:  # torch.export's failures come in many types; the first line says which
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInput(f"torch.onnx could not export {description['arch']} ({first}); "
                           f"try --format torchscript") from None
    program.save(str(path), external_data=False)  # one file, weights inside (under ONNX's 2 GB limit)
    exported = onnx.load(str(path))
    onnx.helper.set_model_props(exported, {key: value if isinstance(value, str) else json.dumps(value)
                                           for key, value in description.items()})
    onnx.save(exported, str(path))


def export_torchscript(model, images: torch.Tensor, path: Path, description: dict) -> None:
    """torch.jit.trace: a convolutional classifier has no data-dependent control flow to lose, and the
    traced batch size stays symbolic. The description rides along as the extra file trainer.json."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; it still loads anywhere
        traced = torch.jit.trace(model, images, check_trace=False)  # the check below compares probabilities
        with open(path, "wb") as f:  # a file, not a name: on a full disk torch's own writer aborts the process
            torch.jit.save(traced, f, _extra_files={"trainer.json": json.dumps(description)})


def onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"image": images.numpy()})[0])


def torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda images: loaded(images)


def max_difference(run, images: torch.Tensor, expected: torch.Tensor, multi_label: bool = False) -> float:
    """The largest probability difference, on the whole batch and on one image alone (the batch size is dynamic);
    a multi-label model's probabilities are each label's sigmoid."""
    def activation(logits):
        return logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)

    with torch.inference_mode():
        whole = (activation(run(images)) - expected).abs().max()
        single = (activation(run(images[:1])) - expected[:1]).abs().max()
    return float(torch.maximum(whole, single))  # NaN stays NaN


WRITERS = {"onnx": export_onnx, "torchscript": export_torchscript}
RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner}
