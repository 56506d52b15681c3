"""The model side: architecture, pretrained weights, device and precision."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.errors import BadInput, did_you_mean


def resolve_device(spec: str) -> torch.device:
    """'auto' is CUDA, then MPS, then CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {spec}: this machine has no CUDA GPU that torch can use; "
                           f"use --device cpu (or auto)")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise BadInput(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here; "
                           f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if spec == "mps" and not has_mps:
        raise BadInput("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return torch.device(spec)


def resolve_precision(spec: str, device: torch.device) -> str:
    """'auto' is mixed precision on CUDA (bf16 where the GPU has it, else fp16), fp32 elsewhere."""
    if spec == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if spec in ("fp16", "bf16") and device.type == "cpu":
        raise BadInput(f"--precision {spec} needs a GPU here; use --precision fp32 (or auto) on the CPU")
    return spec


def resolve_arch(name: str):
    """A torchvision architecture function, or a timm name passed through as fastai expects."""
    import torchvision.models as tvm

    builder = getattr(tvm, name, None)
    if callable(builder) and name in tvm.list_models(module=tvm):
        return builder
    try:
        import timm

        if timm.list_models(name):
            return name
    except ImportError:
        pass
    raise BadInput(f"unknown --arch '{name}'{did_you_mean(name, tvm.list_models(module=tvm))}; "
                   f"use a torchvision classification model (resnet18, resnet34, resnet50, ...) "
                   f"or install timm for its names")


def local_weights_arch(arch, weights_path: str):
    """Wrap a torchvision `arch` so fastai's pretrained path loads a local state dict instead of downloading."""
    from fastai.vision.learner import model_meta

    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise BadInput(f"--weights {weights_path}: no such file; give a torchvision state dict (.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"--weights {weights_path} is not a readable torch state dict ({type(e).__name__}); "
                       f"give a torchvision .pth file") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]

    def arch_with_local_weights(weights=None, **kwargs):
        model = arch(weights=None, **kwargs)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0]
            raise BadInput(f"--weights {weights_path} does not fit {arch.__name__} ({first}); "
                           f"give weights saved from {arch.__name__} or pick the matching --arch") from None
        return model

    arch_with_local_weights.__name__ = arch.__name__
    model_meta[arch_with_local_weights] = model_meta.get(arch, {"cut": None})
    return arch_with_local_weights


def weights_cached(arch) -> bool:
    """Whether torchvision's pretrained weights for `arch` are already in the torch hub cache."""
    import torchvision.models as tvm

    try:
        url = tvm.get_model_weights(arch).DEFAULT.url
    except Exception:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()


METRICS = ("error_rate", "accuracy")


def create_learner(dls, cfg, recipe, run_dir: Path):
    from fastai.vision.all import accuracy, error_rate, vision_learner

    metrics = {"error_rate": error_rate, "accuracy": accuracy}
    arch = resolve_arch(cfg.arch)
    if cfg.weights:
        if isinstance(arch, str):
            raise BadInput(f"--weights works with torchvision architectures; '{cfg.arch}' is a timm name")
        arch = local_weights_arch(arch, cfg.weights)
    elif cfg.pretrained and not isinstance(arch, str) and not weights_cached(cfg.arch):
        from trainer.data import offline

        if offline():
            raise BadInput(no_weights_message(cfg, "TRAINER_OFFLINE is set"))
    try:
        learn = vision_learner(dls, arch, pretrained=cfg.pretrained, metrics=[metrics[m] for m in recipe.metrics],
                               path=run_dir, model_dir=".")
    except BadInput:
        raise
    except OSError as e:  # urllib's URLError is an OSError: the weights could not be fetched
        raise BadInput(no_weights_message(cfg, f"{type(e).__name__}: {e}")) from None
    if cfg.precision == "fp16":
        learn.to_fp16()
    elif cfg.precision == "bf16":
        learn.to_bf16()
    return learn


def no_weights_message(cfg, why: str) -> str:
    return (f"could not get pretrained weights for {cfg.arch} ({why}); on a machine with internet run "
            f"`trainer download {cfg.recipe} --arch {cfg.arch}`, or pass --weights PATH "
            f"(a torchvision state dict), or train from scratch with --no-pretrained")
