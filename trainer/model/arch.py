"""Which architectures trainer builds, and how: body cut, parameter groups, input statistics and
pretrained weights from a local file.

fastai's `model_meta` knows resnet, densenet, vgg*_bn, squeezenet and alexnet. The other torchvision
families trainer accepts are added here with the same fields: where to cut the body, how to split
it into parameter groups (early layers, late layers, head) for discriminative learning rates, and
the ImageNet statistics their torchvision weights were trained with. Anything else in torchvision
(vit, swin, googlenet, inception, ...) has no body/head split that fastai's head fits onto, so it is
refused rather than half-supported. timm names are passed to fastai as they are, matched exactly.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from trainer.errors import BadInput, did_you_mean
from trainer.extras import has

# torchvision families fastai's model_meta lacks: (name pattern, cut, split)
_FEATURES_FAMILIES = (r"efficientnet_(b\d|v2_[sml])", r"mobilenet_v3_(small|large)", r"convnext_\w+")


def _features_split(m):
    """body = Sequential(features): the first half of the feature stages, the second half, the head."""
    from fastai.torch_core import params

    features = m[0][0]
    half = len(features) // 2
    return [params(features[:half]), params(features[half:]), params(m[1:])]


def _regnet_split(m):
    """body = Sequential(stem, trunk_output of 4 stages): stem + 2 stages, 2 stages, the head."""
    from fastai.torch_core import params

    stem, trunk = m[0][0], m[0][1]
    return [params(stem) + params(trunk[:2]), params(trunk[2:]), params(m[1:])]


def _extra_meta(name: str) -> dict | None:
    from fastai.vision.learner import _resnet_meta
    from fastai.vision.core import imagenet_stats

    common = {"stats": imagenet_stats, "weights": "DEFAULT"}  # every torchvision ImageNet weight uses these
    if re.fullmatch(r"resnext\w+|wide_resnet\w+", name):
        return {**_resnet_meta}  # the resnet layout: stem + layer1..4
    if any(re.fullmatch(p, name) for p in _FEATURES_FAMILIES):
        return {"cut": -2, "split": _features_split, **common}  # features | avgpool, classifier
    if name == "mobilenet_v2":
        return {"cut": -1, "split": _features_split, **common}  # features | classifier (pooling is functional)
    if re.fullmatch(r"regnet_[xy]_\w+", name):
        return {"cut": -2, "split": _regnet_split, **common}  # stem, trunk_output | avgpool, fc
    return None


def torchvision_archs() -> dict:
    """name -> torchvision builder for every architecture trainer can cut into body and head; registers
    the metadata fastai lacks in its model_meta (idempotent)."""
    import torchvision.models as tvm
    from fastai.vision.learner import model_meta

    archs = {}
    for name in tvm.list_models(module=tvm):
        builder = tvm.get_model_builder(name)  # torchvision's registry: the same function fastai's model_meta keys
        if builder not in model_meta:
            meta = _extra_meta(name)
            if meta is None:
                continue
            model_meta[builder] = meta
        archs[name] = builder
    return archs


def resolve_arch(name: str):
    """A torchvision architecture function, or a timm name (matched exactly) passed through as fastai expects."""
    archs = torchvision_archs()
    if name in archs:
        return archs[name]
    timm = _timm()
    if any(c in name for c in "*?[]"):
        raise BadInput(f"--arch takes one exact model name, not a pattern ('{name}'); list timm's matches with "
                       f"python -c \"import timm; print(timm.list_models('{name}'))\"")
    if timm is not None and timm.is_model(name):
        return name
    import torchvision.models as tvm

    if name in tvm.list_models(module=tvm):
        raise BadInput(f"--arch {name}: trainer cannot split torchvision's {name} into body and head; use a "
                       f"resnet, resnext, wide_resnet, densenet, vgg*_bn, squeezenet, alexnet, efficientnet, "
                       f"mobilenet_v2/v3, convnext or regnet, or a timm model")
    hint = ("or a timm model name, exactly as timm.list_models() spells it" if timm is not None
            else "or install timm (pip install 'trainer[timm]') for its models")
    raise BadInput(f"unknown --arch '{name}'{did_you_mean(name, archs)}; use a torchvision model "
                   f"(resnet18, resnet34, resnet50, efficientnet_b0, mobilenet_v3_large, convnext_tiny, ...) {hint}")


def _timm():
    """The timm module, or None when the timm extra is not installed."""
    if not has("timm"):
        return None
    import timm

    return timm


def read_state_dict(weights_path: str, arch_name: str) -> dict:
    """A state dict from a .pth/.pt (torch.save, loaded without running pickled code) or .safetensors file;
    a training checkpoint's 'state_dict'/'model' entry; DistributedDataParallel's 'module.' prefix dropped."""
    import torch

    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise BadInput(f"--weights {weights_path}: no such file; give a state dict (.pth or .safetensors) "
                       f"saved from {arch_name}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train.py saves its args
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"--weights {weights_path} is not a readable torch state dict or safetensors file "
                       f"({type(e).__name__}); give a .pth (torch.save of a state dict) or .safetensors file") from None
    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # checkpoints of timm and others
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise BadInput(f"--weights {weights_path} holds no state dict of tensors; give the weights saved "
                       f"with torch.save(model.state_dict(), PATH)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def weights_mismatch(weights_path: str, arch_name: str, error: Exception) -> BadInput:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = " ".join(lines[:2])  # torch's first line names the model, the second the keys
    detail = detail if len(detail) <= 240 else detail[:237] + "..."
    return BadInput(f"--weights {weights_path} does not fit {arch_name} ({detail}); give weights saved from "
                    f"{arch_name} or pick the matching --arch")


def local_weights_arch(arch, weights_path: str):
    """Wrap a torchvision `arch` so fastai's pretrained path loads a local state dict instead of downloading."""
    from fastai.vision.learner import model_meta

    state = read_state_dict(weights_path, arch.__name__)

    def arch_with_local_weights(weights=None, **kwargs):
        model = arch(weights=None, **kwargs)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise weights_mismatch(weights_path, arch.__name__, e) from None
        return model

    arch_with_local_weights.__name__ = arch.__name__
    model_meta[arch_with_local_weights] = model_meta.get(arch, {"cut": None})
    return arch_with_local_weights


def timm_weights_kwargs(name: str, weights_path: str) -> dict:
    """timm.create_model's arguments to start from a local file (vision_learner passes them through): timm
    loads the file itself, drops the old classifier, adapts the input conv and loads strictly; the model's
    own pretrained_cfg (its mean/std) stays, and fastai normalises the inputs with it."""
    read_state_dict(weights_path, name)  # a missing or unreadable file: one clear line before timm sees it
    # source "" : the file wins even for models whose weights otherwise live on the Hugging Face hub
    return {"pretrained_cfg_overlay": {"file": str(Path(weights_path).expanduser().resolve()), "source": ""}}


def cache_weights(arch: str) -> str:
    """`trainer download`: torchvision's pretrained weights for `arch` into torch's hub cache; the folder."""
    import torch
    import torchvision.models as tvm

    if isinstance(resolve_arch(arch), str):
        raise BadInput(f"'{arch}' is a timm model: timm caches its own weights on first use")
    try:
        tvm.get_model_weights(arch).DEFAULT.get_state_dict(progress=True)
    except OSError as e:
        raise BadInput(f"could not download weights for {arch} ({type(e).__name__}: {e}); "
                       f"copy a torchvision state dict here and pass it with --weights") from None
    return str(Path(torch.hub.get_dir()) / "checkpoints")
