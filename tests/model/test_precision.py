"""Mixed precision end to end on the CPU: the same callbacks a GPU run uses (autocast, GradScaler for fp16),
here as bf16 autocast + channels_last, with every option that touches the model while or after it trains."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import run_dir_of


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_bf16_fit_exports_fp32_and_inference_agrees_with_the_learner(trainer, fixtures, isolated, monkeypatch):
    from trainer.model import learner
    from trainer.training import prepare

    seen = {}
    apply_precision = learner.apply_precision

    def apply_and_watch(learn, precision):  # records the stem's output while training
        apply_precision(learn, precision)

        def hook(module, args, output):
            if module.training:
                seen.update(dtype=output.dtype, channels_last=output.is_contiguous(memory_format=torch.channels_last))

        learn.model[0][0].register_forward_hook(hook)

    monkeypatch.setattr(prepare, "apply_precision", apply_and_watch)  # where training calls it
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                     "resnet18", "--bs", "4", "--epochs", "2", "--precision", "bf16", "--save-best",
                     "--early-stop", "2", "--activation-stats", "--tensorboard")
    run_dir = run_dir_of(result)
    assert seen == {"dtype": torch.bfloat16, "channels_last": True}  # it really trained in bf16, NHWC

    config = json.loads((run_dir / "config.json").read_text())
    assert config["device"]["precision"] == "bf16" and config["device"]["channels_last"]
    assert json.loads((run_dir / "summary.json").read_text())["precision"] == "bf16"
    weights = load_file(str(run_dir / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    activations = json.loads((run_dir / "activations.json").read_text())
    assert all(all(isinstance(v, float) for v in layer.values()) for layer in activations["layers"].values())
    assert any((run_dir / "tensorboard").iterdir())

    # interpret (safetensors, then fastai's pickle) rebuilds the learner's own confusion matrix
    trained = read_rows(run_dir / "confusion_matrix.csv")
    trainer("interpret", run_dir)
    assert read_rows(run_dir / "confusion_matrix.csv") == trained
    trainer("interpret", run_dir, "--trust-pickle")
    assert read_rows(run_dir / "confusion_matrix.csv") == trained
    # predict gives each validation image the class the confusion matrix counted for it
    out = json.loads(trainer("predict", run_dir, fixtures / "mnist_sample" / "valid", "--json").stdout)
    predicted = {}
    for row in out:
        pair = (Path(row["path"]).parent.name, row["predictions"][0]["label"])
        predicted[pair] = predicted.get(pair, 0) + 1
    header, *rows = trained
    counts = {(r[0], header[j]): int(r[j]) for r in rows for j in range(1, len(header)) if int(r[j])}
    assert predicted == counts
