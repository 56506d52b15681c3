"""Every choice that differs between CPU and CUDA, each made in one small function.

The pure functions here take what they depend on (how many GPUs, which device a tensor is on)
as arguments, so tests/test_device.py covers their CUDA branches on a machine without a GPU.
The thin `resolve_*` wrappers feed them what torch reports about this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from trainer.errors import BadInput

MAX_DEVICE_CACHE_BYTES = 2 * 1024**3  # a larger decoded-image cache stays in host memory


def device_spec(spec: str, local_rank: int | None, cuda_count: int, has_mps: bool) -> str:
    """The device this process uses, from what was asked ('auto', 'cpu', 'cuda', 'cuda:N', 'mps').

    In a distributed job (`local_rank` set) every process needs its own GPU, so 'auto' and 'cuda'
    mean cuda:<local_rank>, and a single named GPU is refused. This is also what a resumed run
    resolves on the machine that resumes it, so an 8-GPU job resumes with each rank on its own GPU.
    Every command resolves its --device here, so a name torch does not know is refused alike everywhere."""
    from trainer.options import check_device

    check_device(spec)
    if spec == "auto":
        spec = "cuda" if cuda_count else "mps" if has_mps else "cpu"
    if spec.startswith("cuda"):
        if not cuda_count:
            raise BadInput(f"--device {spec}: this machine has no CUDA GPU that torch can use; "
                           f"use --device cpu (or auto)")
        if local_rank is not None:
            if spec != "cuda":
                raise BadInput(f"--device {spec} names one GPU, but each of the distributed processes needs its "
                               f"own: use --device cuda (process r uses cuda:r)")
            spec = f"cuda:{local_rank}"
        index = int(spec[5:]) if ":" in spec else 0
        if index >= cuda_count:
            raise BadInput(f"--device {spec}: only {cuda_count} CUDA device(s) here; "
                           f"use cuda:0 to cuda:{cuda_count - 1}")
    if spec == "mps" and not has_mps:
        raise BadInput("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return spec


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """`device_spec` on this machine."""
    mps = getattr(torch.backends, "mps", None)
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device(device_spec(spec, local_rank, cuda_count, bool(mps and mps.is_available())))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick the fastest kernels once
    return device


@dataclass(frozen=True)
class Precision:
    """How the model computes: `name` (fp32, or bf16/fp16 autocast), whether model and batches are
    channels_last, and why (printed, and recorded in config.json)."""

    name: str
    channels_last: bool
    reason: str


# bf16 autocast + channels_last on a CPU with bf16 instructions (AMX, AVX-512 BF16), measured on this
# project's 2-core machine (resnet34 training step, batch 32): 4.4x faster at 224 px (30.8 vs 7.0 images/s),
# but slower at 28 px (121-163 vs 187), where the model's layers are too small to keep the bf16 units busy.
CPU_BF16_MIN_SIDE = 64
# channels_last alone (fp32) on a CPU without bf16 instructions, measured on this project's 2-core machine
# (scripts/precision_bench.py, batch 32, 2026-11-29): tf_efficientnet_lite0 1.5x at 128 px, 1.8x at 224;
# resnet34 1.09x at 128, 1.14x at 224; but slower at 28-64 px (resnet34 104 vs 120 images/s at 28).
CPU_CHANNELS_LAST_MIN_SIDE = 128


def precision_for(spec: str, device_type: str, cuda_bf16: bool = False, cpu_bf16: bool = False,
                  side: int | None = None) -> Precision:
    """The precision for `spec` (auto, fp32, fp16, bf16) on a device of `device_type`. 'auto' is mixed
    precision on CUDA (bf16 where the GPU has it, else fp16); on a CPU with bf16 instructions (`cpu_bf16`)
    bf16 autocast + channels_last for images of at least CPU_BF16_MIN_SIDE px (`side`), else fp32."""
    if device_type == "cuda":
        if spec != "auto":
            return Precision(spec, False, "as asked")
        return Precision("bf16" if cuda_bf16 else "fp16", False,
                         "mixed precision on CUDA, " + ("in bf16, which this GPU supports" if cuda_bf16
                                                         else "in fp16, as this GPU lacks bf16"))
    if spec == "fp16" or spec == "bf16" and device_type != "cpu":
        raise BadInput(f"--precision {spec} needs a GPU{' (or bf16 on a CPU)' if spec == 'fp16' else ''} here; "
                       f"use --precision fp32 (or auto)")
    if device_type != "cpu":
        return Precision("fp32", False, f"mixed precision is not used on {device_type}")
    if spec == "bf16":
        return Precision("bf16", True, "as asked, as autocast with channels_last on the CPU"
                         + ("" if cpu_bf16 else "; this CPU has no bf16 instructions (AMX, AVX-512 BF16), so expect "
                                                "it to be several times slower than fp32"))
    large = side is not None and side >= CPU_CHANNELS_LAST_MIN_SIDE
    layout = (f"; channels_last, which pays from {CPU_CHANNELS_LAST_MIN_SIDE} px" if large else "")
    if spec == "fp32":
        return Precision("fp32", large, "as asked" + layout)
    if not cpu_bf16:
        return Precision("fp32", large, "this CPU has no bf16 instructions (AMX or AVX-512 BF16)" + layout)
    if side is None or side < CPU_BF16_MIN_SIDE:
        return Precision("fp32", False, f"at {side} px the model is too small for bf16 to pay on the CPU "
                                        f"(it does from {CPU_BF16_MIN_SIDE} px)")
    return Precision("bf16", True, f"this CPU has bf16 instructions and the images are {side} px "
                                   f"(at least {CPU_BF16_MIN_SIDE}): autocast with channels_last")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 matrix instructions (Linux's /proc/cpuinfo flags amx_bf16, avx512_bf16)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # not Linux: assume not, fp32 is always correct
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(spec: str, device: torch.device, side: int | None = None) -> Precision:
    """`precision_for` on this machine."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision_for(spec, device.type, cuda_bf16, device.type == "cpu" and cpu_has_bf16(), side)


def default_workers(device_type: str, cpu_count: int | None = None) -> int:
    """DataLoader worker processes: none on a CPU, where the model already uses every core and loader
    processes would compete with it; up to 8 to keep a GPU fed."""
    return 0 if device_type == "cpu" else min(8, cpu_count or os.cpu_count() or 1)


def cache_device(train_device: torch.device, nbytes: int) -> torch.device:
    """Where the decoded-image cache lives: on the training accelerator when it fits (a batch is then one
    index operation, no host-to-device copy), else in host memory."""
    if train_device.type != "cpu" and nbytes <= MAX_DEVICE_CACHE_BYTES:
        return train_device
    return torch.device("cpu")


def pin_memory(batch_device: torch.device, train_device: torch.device | None) -> bool:
    """Pin a loader's batches only when they are built in host memory and go to a CUDA device (the
    copy is then asynchronous). A batch already on the GPU must never be pinned: torch refuses
    ("only dense CPU tensors can be pinned")."""
    return batch_device.type == "cpu" and train_device is not None and train_device.type == "cuda"
