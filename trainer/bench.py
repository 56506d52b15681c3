"""Side-by-side benchmark: the course's plain fastai recipe, `trainer fit`, and the model's floor.

    trainer bench mnist_sample --data ../shared/data/mnist_sample.tgz --epochs 1
    python -m trainer.bench mnist --data ../shared/data/mnist_png.tgz --json-out bench_mnist.json
    python scripts/bench.py ...  (the same)

Each row runs in its own process, one after the other, on the same data and device:
  reference       the notebook: ImageDataLoaders factory, vision_learner(pretrained=False), fine_tune(epochs, lr);
                  with --weights, the notebook verbatim with pretrained=True, its weights served from the file
  trainer         `trainer fit RECIPE --no-pretrained` with its defaults (the decoded-image cache where it applies);
                  with --weights, `trainer fit RECIPE --arch ARCH --weights FILE` (fine_tune on those weights)
  trainer-nocache the same with --no-cache: PIL decoding every epoch, as fastai does
  floor           the same model's training step alone, on random tensors already in memory (images/s)
  loader          the training DataLoader alone, no model: fastai's PIL path, then the decoded-image cache
                  (small images) or the presized copies (photos)
Columns: wall seconds, training images/s, final error, peak RSS, and the ratios trainer/reference
(wall time) and trainer/floor (throughput). Without --weights every row is from scratch (--no-pretrained).
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
from dataclasses import replace
from pathlib import Path

from trainer.runs import rundir

def run_row(args: list[str]) -> tuple[dict, float, float]:
    """Run one row in its own process; its JSON result, wall s, peak RSS MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {os.waitstatus_to_exitcode(status)})")
    last = out.strip().splitlines()[-1]
    return json.loads(last) if last.startswith("{") else {"output": last}, wall, usage.ru_maxrss / 1024


def reference(recipe: str, data: str, epochs: int, device: str, arch: str = "resnet34",
              weights: str | None = None, size: int | None = None) -> None:
    """The five notebook lines, timed from inside; prints one JSON line. With `weights`, the same lines
    with pretrained=True: a timm model reads the file through timm's pretrained_cfg_overlay, a torchvision
    one finds it in the torch hub cache, where fastai's own pretrained path looks."""
    from fastai.vision.all import ImageDataLoaders, Resize, error_rate, get_image_files, vision_learner

    from trainer.model.arch import resolve_arch
    from trainer.data.source import locate  # only to find/extract the data the same way
    from trainer.recipes import get_recipe, is_cat

    r = get_recipe(recipe)
    path = locate(r, data)
    size = size or r.size
    model, extra = resolve_arch(arch), {}
    if weights and isinstance(model, str):
        extra = {"pretrained_cfg_overlay": {"file": str(Path(weights).resolve()), "source": ""}}
    elif weights:
        serve_from_hub_cache(arch, weights)
    start = time.perf_counter()
    if r.check == "splits":
        dls = ImageDataLoaders.from_folder(path, train=r.splits[0], valid=r.splits[1], device=device)
    elif recipe == "pets":
        dls = ImageDataLoaders.from_name_func(path, get_image_files(path / "images"), is_cat, valid_pct=0.2,
                                              seed=42, item_tfms=Resize(size), device=device)
    elif recipe == "folder":
        valid = "valid" if (path / "valid").is_dir() else "test"
        dls = ImageDataLoaders.from_folder(path, valid=valid, item_tfms=Resize(size), device=device) \
            if (path / "train").is_dir() else \
            ImageDataLoaders.from_folder(path, valid_pct=0.2, seed=42, item_tfms=Resize(size), device=device)
    else:
        raise SystemExit(f"no plain reference for '{recipe}'")
    learn = vision_learner(dls, model, pretrained=bool(weights), metrics=error_rate, **extra)
    learn.fine_tune(epochs, r.lr)
    seconds = time.perf_counter() - start
    images = len(dls.train) * dls.train.bs * (epochs + 1)  # fine_tune adds its frozen epoch
    print(json.dumps({"error_rate": float(learn.recorder.values[-1][2]), "fit_seconds": seconds,
                      "train_images": images}))


def serve_from_hub_cache(arch: str, weights: str) -> None:
    """Put `weights` where torchvision's pretrained download would land, in a private TORCH_HOME, so the
    notebook's pretrained=True loads it (torchvision checks the hash in the file name: the real file only)."""
    import torch
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).DEFAULT.url
    home = Path(tempfile.mkdtemp(prefix="bench-torch-home-"))
    (home / "hub" / "checkpoints").mkdir(parents=True)
    os.symlink(Path(weights).resolve(), home / "hub" / "checkpoints" / os.path.basename(url))
    torch.hub.set_dir(str(home / "hub"))


def floor(recipe: str, data: str, bs: int, device: str, arch: str = "resnet34", size: int | None = None,
          steps: int = 40) -> None:
    """fwd+bwd+step of the same model on random in-memory batches; prints images/s as JSON."""
    import torch

    from trainer.device import resolve_device, resolve_precision

    side, classes = input_shape(recipe, data, size)
    precision = resolve_precision("auto", resolve_device(device), side)  # what trainer's --precision auto picks
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    step = training_step(arch, classes, bs, side, device, precision.name, memory_format)
    for _ in range(5):  # warm-up
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(json.dumps({"images_per_second": bs * steps / (time.perf_counter() - start), "side": side,
                      "precision": precision.name + (" channels_last" if precision.channels_last else "")}))


def input_shape(recipe: str, data: str, size: int | None) -> tuple[int, int]:
    """(image side, class count) of a recipe's inputs: its resize size, or the side of one of its images."""
    from trainer.data.source import locate
    from trainer.recipes import get_recipe

    r = get_recipe(recipe)
    path = locate(r, data)
    side = size or r.size
    if not side:
        from PIL import Image

        sample = next(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        side = Image.open(sample).size[0]
    return side, 2 if recipe in ("mnist_sample", "pets") else 10


def training_step(arch: str, classes: int, bs: int, side: int, device: str, precision: str, memory_format):
    """One fwd+bwd+step of `arch` on a fixed random batch, in `precision` (autocast), as a function."""
    import torch
    from fastai.vision.all import Adam, create_timm_model, create_vision_model

    from trainer.model.arch import resolve_arch

    builder = resolve_arch(arch)
    model = (create_timm_model(builder, classes, pretrained=False)[0] if isinstance(builder, str)
             else create_vision_model(builder, classes, pretrained=False)).to(device, memory_format=memory_format)
    opt = Adam(model.parameters(), lr=1e-3)
    x = torch.rand(bs, 3, side, side, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (bs,), device=device)
    loss_func = torch.nn.CrossEntropyLoss()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")

    def step():
        with torch.autocast(device.split(":")[0], dtype=half or torch.float32, enabled=half is not None):
            loss = loss_func(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    return step


def loader(recipe: str, data: str, bs: int, device: str, size: int | None = None, batches: int = 200) -> None:
    """Images/s of the training DataLoader alone: fastai's PIL path, then the decoded-image cache."""
    import torch

    from trainer.data.cache import cacheable, cached_dls, presize
    from trainer.config import FitConfig
    from trainer.data.loaders import build_dls
    from trainer.data.source import locate
    from trainer.device import default_workers
    from trainer.recipes import get_recipe

    r = get_recipe(recipe)
    cfg = replace(FitConfig(recipe, bs=bs, data=data, size=size).resolve(r),
                  workers=default_workers(torch.device(device).type))
    root = locate(r, data)
    dls = build_dls(r, root, cfg, torch.device(device))
    result = {"pil": images_per_second(dls.train, batches)}
    if cacheable(r, cfg):
        fast = cached_dls(dls, lambda _: None)
        result["cache"] = images_per_second(fast.train, batches) if fast else None
    elif presize(r, cfg, root, set(), lambda _: None):  # the same loader, reading the shrunk copies
        result["presized"] = images_per_second(dls.train, batches)
    print(json.dumps(result))


def images_per_second(dl, batches: int) -> float:
    import torch

    seen, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(dl):
        seen += len(x)
        if i + 1 == batches:
            break
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


ROWS = ("reference", "trainer", "trainer-nocache", "floor", "loader")


def run_bench(recipe: str, data: str, epochs: int = 1, device: str = "cpu", bs: int = 64,
              rows: tuple[str, ...] = ("reference", "trainer", "floor", "loader"), json_path: Path | None = None,
              log=lambda msg: print(msg, file=sys.stderr, flush=True), arch: str = "resnet34",
              weights: str | None = None, size: int | None = None) -> dict:
    """Run the rows one after the other; the table as a dict (also written to `json_path`). With `weights`,
    the reference and trainer rows fine-tune from them; without, every row trains from scratch."""
    model = ["--arch", arch, *(["--size", str(size)] if size else [])]
    me = [sys.executable, "-m", "trainer.bench", recipe, "--data", data, "--device", device,
          "--epochs", str(epochs), "--bs", str(bs), *model, *(["--weights", str(weights)] if weights else [])]
    start_from = ["--weights", str(weights)] if weights else ["--no-pretrained"]
    fit = [sys.executable, "-m", "trainer", "fit", recipe, "--data", data, "--epochs", str(epochs), *model,
           *start_from, "--device", device, "--bs", str(bs), "--quiet", "--no-interpret"]
    table = {}
    for row in rows:
        log(f"running {row} ...")
        if row.startswith("trainer"):
            table[row] = trainer_row([*fit, *(["--no-cache"] if row == "trainer-nocache" else [])])
        elif row == "loader":
            table.update(loader_rows(me))
        else:
            table[row] = helper_row(row, me)
    ratios = {}
    if "trainer" in table and "reference" in table:
        ratios["trainer/reference wall"] = table["trainer"]["wall_s"] / table["reference"]["wall_s"]
    if "trainer" in table and "floor" in table:
        ratios["trainer/floor throughput"] = table["trainer"]["images_per_s"] / table["floor"]["images_per_s"]
    result = {"recipe": recipe, "epochs": epochs, "device": device, "bs": bs, "data": data, "arch": arch,
              "weights": str(weights) if weights else None, "size": size,
              "date": time.strftime("%Y-%m-%d"), "rows": table, "ratios": ratios}
    if json_path:
        from trainer.files import write_json

        write_json(Path(json_path), result)
    return result


def trainer_row(fit: list[str]) -> dict:
    """`trainer fit` itself, in a process of its own, read back from its run directory."""
    with tempfile.TemporaryDirectory() as out:
        _, wall, rss = run_row([*fit, "--out", out])
        run = next(Path(out).glob("*/2*"))
        summary = json.loads((run / rundir.SUMMARY).read_text())
        config = json.loads((run / rundir.CONFIG).read_text())
    channels_last = " channels_last" if config["device"].get("channels_last") else ""
    return {"wall_s": wall, "images_per_s": summary["train_images_per_second"],
            "error_rate": summary["final"]["error_rate"], "peak_rss_mb": rss,
            "cache": config["data"].get("decoded_cache"), "precision": summary["precision"] + channels_last}


def helper_row(row: str, me: list[str]) -> dict:
    """The notebook reference (`reference`) or the model's own speed on in-memory batches (`floor`)."""
    result, wall, rss = run_row([*me, "--_row", row])
    if row == "reference":
        return {"wall_s": wall, "images_per_s": result["train_images"] / result["fit_seconds"],
                "error_rate": result["error_rate"], "peak_rss_mb": rss, "precision": "fp32"}
    return {"wall_s": wall, "images_per_s": result["images_per_second"], "error_rate": None,
            "peak_rss_mb": rss, "precision": result["precision"]}


def loader_rows(me: list[str]) -> dict:
    result, _, _ = run_row([*me, "--_row", "loader"])
    return {f"loader ({kind})": {"wall_s": None, "images_per_s": speed, "error_rate": None, "peak_rss_mb": None}
            for kind, speed in result.items() if speed is not None}


def format_table(result: dict) -> str:
    def cell(value, fmt):
        return format("-", ">" + fmt.split(".")[0]) if value is None else format(value, fmt)

    lines = [f"{'row':<18} {'wall s':>8} {'images/s':>10} {'error':>8} {'peak RSS MB':>12}  precision"]
    for name, row in result["rows"].items():
        lines.append(f"{name:<18} {cell(row['wall_s'], '8.1f')} {cell(row['images_per_s'], '10.1f')} "
                     f"{cell(row['error_rate'], '8.4f')} {cell(row['peak_rss_mb'], '12.0f')}  {row.get('precision') or '-'}")
    lines += [f"{name}: {value:.2f}" for name, value in result["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench",
                                     description="reference vs trainer vs floor, one table")
    parser.add_argument("recipe")
    parser.add_argument("--data", required=True, help="dataset folder or archive (e.g. ../shared/data/mnist_sample.tgz)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--arch", default="resnet34", help="torchvision or timm model for every row")
    parser.add_argument("--weights", help="pretrained weights file: reference and trainer rows fine-tune from it")
    parser.add_argument("--size", type=int, help="resize for recipes that resize (pets, folder)")
    parser.add_argument("--rows", default="reference,trainer,floor,loader", help=f"comma-separated, from {ROWS}")
    parser.add_argument("--json-out", type=Path, help="also write the table as JSON here")
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")  # fastai's, not ours
    if args._row:
        if args._row == "reference":
            return reference(args.recipe, args.data, args.epochs, args.device, args.arch, args.weights, args.size)
        if args._row == "floor":
            return floor(args.recipe, args.data, args.bs, args.device, args.arch, args.size)
        return loader(args.recipe, args.data, args.bs, args.device, args.size)
    print(format_table(run_bench(args.recipe, args.data, args.epochs, args.device, args.bs,
                                 tuple(args.rows.split(",")), args.json_out, arch=args.arch, weights=args.weights,
                                 size=args.size)))


if __name__ == "__main__":
    main()


def check_bench(recipe: str, rows: str, arch: str, weights) -> None:
    """Every bad input in one line now, not a failed row minutes later."""
    from trainer.errors import BadInput
    from trainer.model.arch import read_state_dict, resolve_arch
    from trainer.recipes import get_recipe

    get_recipe(recipe)
    unknown = [row for row in rows.split(",") if row not in ROWS]
    if unknown:
        raise BadInput(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    resolve_arch(arch)
    if weights:
        read_state_dict(str(weights), arch)
