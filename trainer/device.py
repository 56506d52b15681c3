"""Every choice that differs between CPU and CUDA, each made in one small function.

The pure functions here take what they depend on (how many GPUs, which device a tensor is on)
as arguments, so tests/test_device.py covers their CUDA branches on a machine without a GPU.
The thin `resolve_*` wrappers feed them what torch reports about this machine.
"""

from __future__ import annotations

import os

import torch

from trainer.errors import BadInput

MAX_DEVICE_CACHE_BYTES = 2 * 1024**3  # a larger decoded-image cache stays in host memory


def device_spec(spec: str, local_rank: int | None, cuda_count: int, has_mps: bool) -> str:
    """The device this process uses, from what was asked ('auto', 'cpu', 'cuda', 'cuda:N', 'mps').

    In a distributed job (`local_rank` set) every process needs its own GPU, so 'auto' and 'cuda'
    mean cuda:<local_rank>, and a single named GPU is refused. This is also what a resumed run
    resolves on the machine that resumes it, so an 8-GPU job resumes with each rank on its own GPU."""
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


def precision_for(spec: str, device_type: str, cuda_bf16: bool) -> str:
    """'auto' is mixed precision on CUDA (bf16 where the GPU has it, else fp16), fp32 elsewhere."""
    if spec == "auto":
        if device_type != "cuda":
            return "fp32"
        return "bf16" if cuda_bf16 else "fp16"
    if spec in ("fp16", "bf16") and device_type == "cpu":
        raise BadInput(f"--precision {spec} needs a GPU here; use --precision fp32 (or auto) on the CPU")
    return spec


def resolve_precision(spec: str, device: torch.device) -> str:
    """`precision_for` on this machine."""
    return precision_for(spec, device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())


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
