"""A trained run's model for Python callers (`trainer.load`): predict, interpret, evaluate, export, each the
same function the matching command calls."""

from __future__ import annotations

from pathlib import Path

from trainer.inspection.evaluate import evaluate_run
from trainer.inspection.interpret import interpret_run
from trainer.options import check_device
from trainer.runs.store import resolve_run
from trainer.serving.export import export_run
from trainer.serving.inference import predict_images


class Model:
    def __init__(self, run_dir: Path, device: str = "auto", trust_pickle: bool = False):
        check_device(device)
        self.run_dir, self.device, self.trust_pickle = Path(run_dir), device, trust_pickle

    @classmethod
    def open(cls, run, out: Path = Path("runs"), device: str = "auto", trust_pickle: bool = False) -> "Model":
        return cls(resolve_run(str(getattr(run, "dir", run)), Path(out)), device, trust_pickle)

    def __repr__(self) -> str:
        return f"Model({str(self.run_dir)!r})"

    def predict(self, images, top_k: int = 1, bs: int = 64, tta: bool = False) -> list[dict]:
        """Labels and probabilities for image files and folders: [{"path", "predictions": [{"label",
        "probability"}, ...]}], as `trainer predict --json` prints them."""
        paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
        return predict_images(self.run_dir, paths, top_k=top_k, bs=bs, device=self.device,
                              trust_pickle=self.trust_pickle, tta=tta)

    def interpret(self, top_k: int = 9, data: str | None = None, bs: int = 64, tta: bool = False) -> dict:
        """The interpretation of the run's validation set, written into the run: accuracy, most confused pairs."""
        return interpret_run(self.run_dir, top_k=top_k, data=data, bs=bs, device=self.device,
                             trust_pickle=self.trust_pickle, tta=tta)

    def evaluate(self, data: str, bs: int = 64, tta: bool = False) -> dict:
        """Metrics on a separate labelled test set (test_metrics.json); `tta`: with test-time augmentation."""
        return evaluate_run(self.run_dir, str(data), bs=bs, device=self.device, tta=tta)

    def export(self, fmt: str = "onnx", out: str | Path | None = None, data: str | None = None) -> Path:
        """The model as ONNX or TorchScript, checked against PyTorch before it is written; the file's path."""
        path, _ = export_run(self.run_dir, fmt, Path(out) if out else None, data)
        return path
