"""What --init and --opt change: one run per combination with --activation-stats, one markdown table.

    python scripts/controls_table.py --data ../shared/data/mnist_sample.tgz --out /tmp/controls
    python scripts/controls_table.py --data ... --combos adam:default,adam:kaiming,sgd:default

Each row: the final error rate, and at the end of training the activation std of the stem conv,
the last stage and the head output, and the last stage's near-zero (dead ReLU) fraction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(recipe: str, data: str, out: Path, opt: str, init: str, epochs: int) -> Path:
    command = [sys.executable, "-m", "trainer", "fit", recipe, "--data", data, "--epochs", str(epochs),
               "--no-pretrained", "--opt", opt, "--init", init, "--activation-stats", "--no-interpret",
               "--quiet", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist_sample")
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs-controls"))
    parser.add_argument("--combos", default="adam:default,adam:kaiming,adam:xavier,sgd:default,rmsprop:default")
    args = parser.parse_args()
    print("| --opt | --init | error_rate | stem std | last stage std | last stage near zero | head output std | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for combo in args.combos.split(","):
        opt, init = combo.split(":")
        run_dir = run(args.recipe, args.data, args.out, opt, init, args.epochs)
        summary = json.loads((run_dir / "summary.json").read_text())
        layers = list(json.loads((run_dir / "activations.json").read_text())["layers"].values())
        stem, last_stage, head = layers[0], layers[-2], layers[-1]
        print(f"| {opt} | {init} | {summary['final']['error_rate']:.4f} | {stem['std']:.3f} | {last_stage['std']:.3f} "
              f"| {last_stage['near_zero']:.2f} | {head['std']:.3f} | {summary['train_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
