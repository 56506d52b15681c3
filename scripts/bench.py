"""Side-by-side benchmark: the course's plain fastai recipe, `trainer fit`, and the model's floor.

    python scripts/bench.py mnist_sample --data ../shared/data/mnist_sample.tgz --epochs 1
    python scripts/bench.py mnist --data ../shared/data/mnist_png.tgz --epochs 1 --json bench_mnist.json

Each row runs in its own process, one after the other, on the same data and device:
  reference  the notebook: ImageDataLoaders factory, vision_learner(pretrained=False), fine_tune(epochs, lr)
  trainer    `trainer fit RECIPE --no-pretrained` with its defaults
  floor      the same model's training step alone, on random tensors already in memory (images/s)
Columns: wall seconds, training images/s, final error, peak RSS, and the ratios trainer/reference
(wall time) and trainer/floor (throughput). All rows are from scratch (--no-pretrained).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_row(args: list[str]) -> tuple[dict, float, float]:
    """Run `python scripts/bench.py <args>` or a trainer command; its JSON result, wall s, peak RSS MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {os.waitstatus_to_exitcode(status)})")
    last = out.strip().splitlines()[-1]
    return json.loads(last) if last.startswith("{") else {"output": last}, wall, usage.ru_maxrss / 1024


def reference(recipe: str, data: str, epochs: int, device: str) -> None:
    """The five notebook lines, timed from inside; prints one JSON line."""
    from fastai.vision.all import (ImageDataLoaders, Resize, error_rate, get_image_files, resnet34,
                                   vision_learner)

    from trainer.data import locate  # only to find/extract the data the same way
    from trainer.recipes import get_recipe, is_cat

    r = get_recipe(recipe)
    path = locate(r, data)
    start = time.perf_counter()
    if r.check == "splits":
        dls = ImageDataLoaders.from_folder(path, train=r.splits[0], valid=r.splits[1], device=device)
    elif recipe == "pets":
        dls = ImageDataLoaders.from_name_func(path, get_image_files(path / "images"), is_cat, valid_pct=0.2,
                                              seed=42, item_tfms=Resize(224), device=device)
    else:
        raise SystemExit(f"no plain reference for '{recipe}'")
    learn = vision_learner(dls, resnet34, pretrained=False, metrics=error_rate)
    learn.fine_tune(epochs, r.lr)
    seconds = time.perf_counter() - start
    images = len(dls.train) * dls.train.bs * (epochs + 1)  # fine_tune adds its frozen epoch
    print(json.dumps({"error_rate": float(learn.recorder.values[-1][2]), "fit_seconds": seconds,
                      "train_images": images}))


def floor(recipe: str, data: str, bs: int, device: str, steps: int = 40) -> None:
    """fwd+bwd+step of the same model on random in-memory batches; prints images/s as JSON."""
    import torch
    from fastai.vision.all import Adam, create_vision_model, resnet34

    from trainer.data import locate
    from trainer.recipes import get_recipe

    r = get_recipe(recipe)
    path = locate(r, data)
    if r.size:
        side = r.size
    else:
        from PIL import Image

        sample = next(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        side = Image.open(sample).size[0]
    classes = 2 if recipe in ("mnist_sample", "pets") else 10
    model = create_vision_model(resnet34, classes, pretrained=False).to(device)
    opt = Adam(model.parameters(), lr=1e-3)
    x = torch.rand(bs, 3, side, side, device=device)
    y = torch.randint(0, classes, (bs,), device=device)
    loss_func = torch.nn.CrossEntropyLoss()

    def step():
        loss = loss_func(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(5):  # warm-up
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(json.dumps({"images_per_second": bs * steps / (time.perf_counter() - start), "side": side}))


def main() -> None:
    parser = argparse.ArgumentParser(description="reference vs trainer vs floor, one table")
    parser.add_argument("recipe")
    parser.add_argument("--data", required=True, help="dataset folder or archive (e.g. ../shared/data/mnist_sample.tgz)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--rows", default="reference,trainer,floor")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")  # fastai's, not ours
    if args._row == "reference":
        return reference(args.recipe, args.data, args.epochs, args.device)
    if args._row == "floor":
        return floor(args.recipe, args.data, args.bs, args.device)

    me = [sys.executable, str(Path(__file__).resolve()), args.recipe, "--data", args.data, "--device", args.device,
          "--epochs", str(args.epochs), "--bs", str(args.bs)]
    table = {}
    for row in args.rows.split(","):
        print(f"running {row} ...", file=sys.stderr, flush=True)
        if row == "trainer":
            with tempfile.TemporaryDirectory() as out:
                _, wall, rss = run_row([sys.executable, "-m", "trainer", "fit", args.recipe, "--data", args.data,
                                        "--epochs", str(args.epochs), "--no-pretrained", "--device", args.device,
                                        "--bs", str(args.bs), "--out", out, "--quiet", "--no-interpret"])
                summary = json.loads(next(Path(out).glob("*/2*/summary.json")).read_text())
            table[row] = {"wall_s": wall, "images_per_s": summary["train_images_per_second"],
                          "error_rate": summary["final"]["error_rate"], "peak_rss_mb": rss}
        elif row == "reference":
            result, wall, rss = run_row([*me, "--_row", "reference"])
            table[row] = {"wall_s": wall, "images_per_s": result["train_images"] / result["fit_seconds"],
                          "error_rate": result["error_rate"], "peak_rss_mb": rss}
        elif row == "floor":
            result, wall, rss = run_row([*me, "--_row", "floor"])
            table[row] = {"wall_s": wall, "images_per_s": result["images_per_second"], "error_rate": None,
                          "peak_rss_mb": rss}
    ratios = {}
    if "trainer" in table and "reference" in table:
        ratios["trainer/reference wall"] = table["trainer"]["wall_s"] / table["reference"]["wall_s"]
    if "trainer" in table and "floor" in table:
        ratios["trainer/floor throughput"] = table["trainer"]["images_per_s"] / table["floor"]["images_per_s"]
    print(f"{'row':<10} {'wall s':>8} {'images/s':>9} {'error':>8} {'peak RSS MB':>12}")
    for name, row in table.items():
        error = "-" if row["error_rate"] is None else f"{row['error_rate']:.4f}"
        print(f"{name:<10} {row['wall_s']:>8.1f} {row['images_per_s']:>9.1f} {error:>8} {row['peak_rss_mb']:>12.0f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "epochs": args.epochs, "device": args.device,
                                         "rows": table, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
