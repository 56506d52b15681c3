"""The model side: the learner, its weights in and out (model.safetensors + model.json), optimiser, init."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.runs import rundir
from trainer.model.arch import resolve_arch
from trainer.errors import BadInput
from trainer.options import AUG_DEFAULTS


def weights_cached(arch) -> bool:
    """Whether torchvision's pretrained weights for `arch` are already in the torch hub cache."""
    import torchvision.models as tvm

    try:
        url = tvm.get_model_weights(arch).DEFAULT.url
    except Exception:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()


def optimizer(name: str):
    from fastai.optimizer import SGD, Adam, Lamb, RMSProp, ranger

    return {"adam": Adam, "sgd": SGD, "rmsprop": RMSProp, "lamb": Lamb, "ranger": ranger}[name]


def initialise(model, scheme: str) -> None:
    """Re-initialise every conv and linear layer (for layers trained from scratch): He (Kaiming) keeps
    a ReLU network's activations at unit scale layer after layer; Xavier (Glorot) suits tanh/linear."""
    if scheme == "default":
        return
    # not fastai's apply_init: it inits every weighted layer but Batch/LayerNorm, and raises on GroupNorm (timm *_bit)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            if scheme == "kaiming":
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def create_learner(dls, cfg, recipe, run_dir: Path):
    from fastai.vision.all import accuracy, error_rate, vision_learner

    metrics = {"error_rate": error_rate, "accuracy": accuracy}
    if cfg.multi_label:  # metrics and decoding at the run's threshold
        from functools import partial

        from fastai.metrics import F1ScoreMulti, accuracy_multi

        metrics = {"f1_score": F1ScoreMulti(thresh=cfg.threshold, average="macro"),
                   "accuracy_multi": partial(accuracy_multi, thresh=cfg.threshold)}
    arch = resolve_arch(cfg.arch)
    timm_args = {}  # for timm.create_model, through vision_learner
    if cfg.weights:
        from trainer.model.arch import local_weights_arch, timm_weights_kwargs

        if isinstance(arch, str):
            timm_args = timm_weights_kwargs(arch, cfg.weights)
        else:
            arch = local_weights_arch(arch, cfg.weights)
    elif cfg.pretrained and not isinstance(arch, str) and not weights_cached(cfg.arch):
        from trainer.data.locations import offline

        if offline():
            raise BadInput(no_weights_message(cfg, "TRAINER_OFFLINE is set"))
    try:
        learn = vision_learner(dls, arch, pretrained=cfg.pretrained, metrics=[metrics[m] for m in recipe.metrics],
                               path=run_dir, model_dir=".", opt_func=optimizer(cfg.opt), wd=cfg.wd, ps=cfg.dropout,
                               **loss_function(cfg), **timm_args)
    except OSError as e:  # urllib's URLError is an OSError: the weights could not be fetched
        raise BadInput(no_weights_message(cfg, f"{type(e).__name__}: {e}")) from None
    except (RuntimeError, KeyError, ValueError) as e:
        if not timm_args:
            raise
        from trainer.model.arch import weights_mismatch

        raise weights_mismatch(cfg.weights, cfg.arch, e) from None  # timm's strict load refused the file
    # --init: the head always starts fresh; the body too when it has no pretrained weights
    initialise(learn.model if not cfg.pretrained else learn.model[-1], cfg.init)
    return learn


def loss_function(cfg) -> dict:
    """vision_learner's loss_func: fastai's choice for the data (cross-entropy for single labels), multi-label's
    BCEWithLogitsLossFlat decoding at the run's threshold, or with --label-smoothing fastai's
    LabelSmoothingCrossEntropyFlat. (--mixup is a training callback: loop.py.)"""
    if cfg.multi_label:
        from fastai.losses import BCEWithLogitsLossFlat

        return {"loss_func": BCEWithLogitsLossFlat(thresh=cfg.threshold)}
    if not cfg.label_smoothing:
        return {}
    from fastai.losses import LabelSmoothingCrossEntropyFlat

    return {"loss_func": LabelSmoothingCrossEntropyFlat(eps=cfg.label_smoothing)}


def apply_precision(learn, precision) -> None:
    """Train in `precision` (a device.Precision): autocast on the learner's device, and channels_last
    model and batches where it was chosen. `learn.to_contiguous(to_fp32=True)` undoes both."""
    from trainer.model.precision import ChannelsLastBatches, DeviceMixedPrecision

    if precision.channels_last:
        learn.add_cb(ChannelsLastBatches())
    if precision.name != "fp32":
        learn.add_cb(DeviceMixedPrecision(precision.name, learn.dls.device.type))


def no_weights_message(cfg, why: str) -> str:
    return (f"could not get pretrained weights for {cfg.arch} ({why}); on a machine with internet run "
            f"`trainer download {cfg.recipe} --arch {cfg.arch}`, or pass --weights PATH "
            f"(a state dict saved from {cfg.arch}), or train from scratch with --no-pretrained")


def export_weights(learn, run_dir: Path, cfg, recipe) -> None:
    """model.safetensors + model.json: everything inference needs, loadable without unpickling."""
    from fastai.vision.all import Normalize
    from safetensors.torch import save_file

    from trainer.files import atomic_path, write_json

    state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
    with atomic_path(run_dir / rundir.WEIGHTS, digest=True) as tmp:
        save_file(state, str(tmp))
    norm = next((t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)), None)
    write_json(run_dir / rundir.MODEL_META, {
        "format": "trainer-model/1",
        "recipe": recipe.name,
        "arch": cfg.arch,
        "classes": [str(c) for c in learn.dls.vocab],  # the model's vocab, as the recipe's labelling makes it
        "display_names": recipe.display_names(learn.dls.vocab),  # what plots, tables and predict show
        "size": cfg.size,  # the recipe's transforms(size) rebuild the input pipeline
        "native_size": native_size(learn.dls) if cfg.size is None else None,  # [h, w] inputs are brought to
        "dropout": cfg.dropout,  # the head's layout depends on it (no Dropout module at 0)
        # the recipe's transforms and the training augmentation (None: off): inference rebuilds the pipeline, TTA
        # its random part
        "pipeline": recipe.transforms.__name__,
        "augmentation": {name: getattr(cfg, name) for name in AUG_DEFAULTS} if cfg.aug else None,
        "multi_label": cfg.multi_label,  # sigmoid per label, not a softmax over them
        "threshold": cfg.threshold,  # multi-label: the labels above it are predicted
        "normalize": None if norm is None else {"mean": norm.mean.flatten().tolist(),
                                                "std": norm.std.flatten().tolist()},
    })


def native_size(dls) -> list[int] | None:
    """[height, width] of the training images, for a recipe that uses them at their own size (one size:
    a batch holds one), so inference brings every input to it."""
    try:
        width, height = dls.train_ds[0][0].size
    except Exception:  # an empty or unusual dataset: inference falls back to the recipe's known size
        return None
    return [int(height), int(width)]


def load_weights(run_dir: Path, device):
    """(model, description) from model.safetensors + model.json, never unpickling anything; each checked first
    (model.json's fields, the weights' recorded hash), so a damaged file is one line naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trainer.files import verify_digest

    weights = run_dir / rundir.WEIGHTS
    if not weights.is_file() or not (run_dir / rundir.MODEL_META).is_file():
        raise BadInput(f"{run_dir} has no readable model.safetensors/model.json; train again with `trainer fit`, or pass "
                       f"--trust-pickle to load model.pkl (only for runs you trust)")
    meta = rundir.read_model_meta(run_dir)
    try:
        arch, classes = resolve_arch(meta["arch"]), meta["classes"]
    except BadInput as e:
        raise BadInput(f"{run_dir / rundir.MODEL_META} is damaged: arch: {e}; {rundir.RECOVER}") from None
    verify_digest(weights)
    try:
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as e:
        raise BadInput(f"{weights} is unreadable ({type(e).__name__}: {str(e)[:80]}); {rundir.RECOVER}") from None
    dropout = 0.5 if meta.get("dropout") is None else meta["dropout"]
    if isinstance(arch, str):
        from fastai.vision.learner import create_timm_model

        model, _ = create_timm_model(arch, len(classes), pretrained=False, ps=dropout)
    else:
        from fastai.vision.learner import create_vision_model

        model = create_vision_model(arch, len(classes), pretrained=False, ps=dropout)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BadInput(f"{weights} does not fit {meta['arch']} with {len(classes)} classes "
                       f"({str(e).strip().splitlines()[0]}); the file is damaged: train again") from None
    return model.to(device).eval(), meta


def class_names(run_dir: Path, vocab) -> list[str]:
    """The display name of each class in `vocab`, as the run's model.json records them; runs from before
    display names (or without a model.json) show the vocab itself."""
    vocab = [str(c) for c in vocab]
    if not (run_dir / rundir.MODEL_META).is_file():
        return vocab
    meta = rundir.read_model_meta(run_dir)
    names = meta.get("display_names")
    return list(names) if meta["classes"] == vocab and names else vocab


def load_pickled(run_dir: Path, device):
    """The run's exported fastai learner (model.pkl), on `device`. Unpickling runs code: trusted runs only."""
    from fastai.learner import load_learner

    try:
        learn = load_learner(run_dir / rundir.MODEL_PICKLE, cpu=True)
    except Exception as e:
        raise BadInput(f"{run_dir}/model.pkl could not be loaded ({type(e).__name__}: {e}); "
                       f"the file is damaged or from another fastai: train again with `trainer fit`") from None
    learn.dls.to(device)
    learn.model.to(device)
    return learn


def inference_learner(dls, model, meta: dict | None = None):
    """A plain fastai Learner around a loaded model, for get_preds (no progress bars): the loss of its training,
    BCEWithLogitsLossFlat for a multi-label model (model.json's multi_label; its probabilities are sigmoids)."""
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

    multi = bool((meta or {}).get("multi_label"))
    loss = BCEWithLogitsLossFlat(thresh=meta.get("threshold") or 0.5) if multi else CrossEntropyLossFlat()
    learn = Learner(dls, model, loss_func=loss)
    learn.remove_cb(ProgressCallback)
    return learn
