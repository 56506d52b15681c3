"""Training-step throughput of a model in each precision and memory format, on this machine's CPU (or GPU).

    python scripts/precision_bench.py                       # resnet34 at 28, 64, 128 and 224 px, batch 32
    python scripts/precision_bench.py --arch tf_efficientnet_lite0 --sides 224

The evidence behind `--precision auto` on the CPU (trainer/device.py: precision_for): bf16 autocast +
channels_last pays where the CPU has bf16 instructions (AMX, AVX-512 BF16) and the images are large enough.
Prints one row per side: images/s for fp32, fp32 + channels_last, bf16, bf16 + channels_last, and what
auto picks here. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def images_per_second(model, side: int, bs: int, bf16: bool, channels_last: bool, steps: int, device: str) -> float:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(bs, 3, side, side, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (bs,), device=device)

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(2):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return bs * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--sides", default="28,64,128,224")
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from fastai.vision.learner import create_timm_model, create_vision_model

    from trainer.model.arch import resolve_arch
    from trainer.device import cpu_has_bf16, resolve_device, resolve_precision

    builder = resolve_arch(args.arch)
    print(f"{args.arch}, batch {args.bs}, {args.device}, {torch.get_num_threads()} threads, "
          f"bf16 instructions: {cpu_has_bf16()}, torch {torch.__version__}")
    print(f"{'side':>5} {'fp32':>8} {'fp32 CL':>8} {'bf16':>8} {'bf16 CL':>8}  auto picks")
    for side in map(int, args.sides.split(",")):
        row = []
        for bf16, channels_last in ((False, False), (False, True), (True, False), (True, True)):
            model = (create_timm_model(builder, 10, pretrained=False)[0] if isinstance(builder, str)
                     else create_vision_model(builder, 10, pretrained=False))
            steps = max(2, args.steps * 224 * 224 // (side * side) // 4) if side < 224 else args.steps
            row.append(images_per_second(model, side, args.bs, bf16, channels_last, steps, args.device))
        picked = resolve_precision("auto", resolve_device(args.device), side)
        print(f"{side:>5} " + " ".join(f"{v:8.1f}" for v in row)
              + f"  {picked.name}{' + channels_last' if picked.channels_last else ''}", flush=True)


if __name__ == "__main__":
    main()
