"""Images -> the model's input tensors and probabilities, the one way trainer does it.

`trainer predict`, `trainer evaluate`, the check that `trainer export` makes and `trainer serve`
all go through here, so a served or exported prediction is the same number `predict` prints:
the recipe's validation transforms rebuilt from model.json (no pickle, no training data), then
the normalisation the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch


def add_normalize(dls, meta: dict) -> None:
    if meta["normalize"]:
        from fastai.vision.all import Normalize

        dls.add_tfms([Normalize.from_stats(meta["normalize"]["mean"], meta["normalize"]["std"])], "after_batch")


# The training images' size of the native-size recipes, for runs whose model.json predates "native_size"
NATIVE_SIZES = {"mnist_sample": (28, 28), "mnist": (28, 28), "digits": (28, 28), "cifar10": (32, 32)}


def input_size(meta: dict) -> list[int] | None:
    """[height, width] every input is brought to: the recipe's size, else the size of the training images
    (a native-size recipe trains on one size: a larger input would only cost memory); None if unknown."""
    if meta.get("size"):
        return [meta["size"], meta["size"]]
    native = meta.get("native_size") or NATIVE_SIZES.get(meta.get("recipe"))
    return [int(native[0]), int(native[1])] if native else None


# model.json from before it named its pipeline and augmentation: what each recipe then did, where it changed since
LEGACY_PIPELINES = {"pets_breeds": ("presized", True), "folder": ("resized", False)}  # (transforms, augmented)


def pipeline_options(meta: dict):
    """What the recipe's pipeline reads of a run's options, from its model.json: the size and the augmentation."""
    from types import SimpleNamespace

    from trainer.options import AUG_DEFAULTS

    if "augmentation" in meta:
        aug = meta["augmentation"]
    else:
        aug = AUG_DEFAULTS if LEGACY_PIPELINES.get(meta.get("recipe"), (None, False))[1] else None
    return SimpleNamespace(size=meta["size"], aug=aug is not None, **(aug or dict.fromkeys(AUG_DEFAULTS)))


def run_pipeline(meta: dict) -> dict:
    """The item and batch transforms the run's model was trained with, from its model.json (the recipe's
    declaration, with the transforms model.json names): the one pipeline inference, export and TTA rebuild."""
    from dataclasses import replace

    from trainer.recipes import TRANSFORMS, get_recipe

    recipe = get_recipe(meta["recipe"])
    named = meta.get("pipeline") or LEGACY_PIPELINES.get(recipe.name, (None,))[0]
    if named in TRANSFORMS:
        recipe = replace(recipe, transforms=TRANSFORMS[named])
    return recipe.pipeline(pipeline_options(meta))


def recipe_transforms(meta: dict) -> dict:
    """The run's pipeline (its augmentation idle outside training batches and TTA); a native-size recipe's
    inputs resized to the training images' size (a no-op for images of that size, so predictions on them are
    unchanged)."""
    tfms = run_pipeline(meta)
    native = None if meta["size"] else input_size(meta)
    if native and "item_tfms" not in tfms:
        from fastai.vision.all import Resize

        tfms = {**tfms, "item_tfms": Resize(tuple(native))}
    return tfms


def inference_dls(meta: dict, items: list, bs: int, device, labelled: bool = False, labels: dict | None = None):
    """The recipe's validation-time pipeline over `items` (image paths, or images already decoded by
    images.open_image), rebuilt from model.json. `labelled`: each image's class is its folder's name;
    `labels`: each image's class (a multi-label model: its list of labels), by str(path), from a CSV."""
    from fastai.vision.all import CategoryBlock, DataBlock, ImageBlock, MultiCategoryBlock, parent_label

    from trainer.data.images import RGBImage
    from trainer.recipes import LabelOf

    tfms = recipe_transforms(meta)
    everything = list(range(len(items)))
    multi = bool(meta.get("multi_label"))
    target = MultiCategoryBlock(vocab=meta["classes"]) if multi else CategoryBlock(vocab=meta["classes"])
    unlabelled = (lambda _: [meta["classes"][0]]) if multi else (lambda _: meta["classes"][0])  # unused
    block = DataBlock(blocks=(ImageBlock(RGBImage), target),
                      get_y=LabelOf(labels) if labels is not None else parent_label if labelled else unlabelled,
                      splitter=lambda _: (everything, everything), **tfms)
    dls = block.dataloaders(items, bs=bs, num_workers=0, device=device, shuffle=False)
    add_normalize(dls, meta)
    return dls


def input_batches(meta: dict, items: list, bs: int, device):
    """Normalised NCHW float batches (plain tensors) of `items`, in order."""
    for x, *_ in inference_dls(meta, items, bs, device).valid:
        yield x.as_subclass(torch.Tensor)


def predict_probabilities(model, meta: dict, items: list, bs: int, device, tta: bool = False,
                          progress=None) -> torch.Tensor:
    """N x C probabilities of `items`, in order (multi-label: a sigmoid per label instead of a softmax over them);
    `tta`: fastai's test-time augmentation (see `tta_predictions`). A recipe that uses images at their own size
    (no resize) of unknown training size gets one batch per image size, since a batch holds one size. `bs`
    bounds the images run at once. `progress`: hears the "predict" step (trainer.progress), counted in images
    (with TTA, each of its passes)."""

    multi = bool(meta.get("multi_label"))

    def of(group: list, counter) -> torch.Tensor:
        if tta:
            from trainer.model.learner import inference_learner

            dls = inference_dls(meta, group, bs, device)
            return tta_predictions(inference_learner(dls, model, meta), dls.valid, counter)[0]
        return probabilities(model, counted(input_batches(meta, group, bs, device), counter), multi)

    with predicting(progress, len(items), tta) as counter:
        if input_size(meta):
            return of(items, counter)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(image_size(item), []).append(index)
        probs = torch.empty(len(items), len(meta["classes"]))
        for indices in groups.values():
            probs[indices] = of([items[i] for i in indices], counter)
        return probs


def predicting(progress, n_images: int, tta: bool):
    """The "predict" step (trainer.progress) of `n_images`, counted per image and pass (TTA: each of its passes)."""
    from trainer.progress import step

    return step(progress, "predict", n_images * (TTA_PASSES if tta else 1))


def learner_predictions(learn, dl, n_images: int, tta: bool, progress=None, with_loss: bool = False):
    """(probabilities, targets, losses) of `learn` over `dl` (`n_images`), counted as the "predict" step: fastai's
    get_preds (losses with `with_loss`, else None), or its test-time augmentation (tta_predictions; losses None)."""
    with predicting(progress, n_images, tta) as counter:
        if tta:
            return (*tta_predictions(learn, dl, counter), None)
        with counting(learn, counter):
            found = learn.get_preds(dl=dl, with_loss=with_loss)
    return tuple(found) if with_loss else (*found, None)


def counted(batches, counter):
    """`batches` as they are, each one's images counted on `counter` (a trainer.progress Step)."""
    for x in batches:
        yield x
        counter.advance(len(x))


def counting(learn, counter):
    """A context in which `learn`'s get_preds (and tta) counts each batch's images on `counter` (a
    trainer.progress Step); fastai's own ProgressCallback bar stays off."""
    from fastai.callback.core import Callback
    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import find_bs

    class Count(Callback):
        def after_batch(self):
            counter.advance(find_bs(self.xb))

    learn.remove_cb(ProgressCallback)
    return learn.added_cbs([Count()])


TTA_SEED = 0  # TTA's random augmentations, drawn the same way every time: the same images, the same answer
TTA_PASSES = 5  # fastai's Learner.tta: 4 augmented passes, then the plain one


def tta_predictions(learn, dl, counter=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, targets) of fastai's Learner.tta over `dl`: the mean of 4 passes with the training
    augmentation, blended 3:1 with the plain pass (fastai's beta 0.25). Its random draws are seeded (TTA_SEED)
    and the caller's random state restored after (fastai's no_random), so a prediction is reproducible and
    changes nothing else. The model.pkl path and the safetensors path draw alike: the same images give the same
    probabilities on both. `counter`: a trainer.progress Step counting each pass's images."""
    from contextlib import nullcontext

    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import no_random

    learn.remove_cb(ProgressCallback)  # no bars on stdout (predict --json)
    with no_random(TTA_SEED, reproducible=False), counting(learn, counter) if counter else nullcontext():
        probs, targets = learn.tta(dl=dl)
    return probs.float(), targets


def image_size(item) -> tuple[int, int]:
    """(width, height) of a decoded image or, from its header only, of an image file."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.size
    try:
        with Image.open(item) as image:
            return image.size
    except Exception:  # an unreadable file: the pipeline reports it when it reads the file
        return (0, 0)


@torch.inference_mode()
def probabilities(model, batches, multi_label: bool = False) -> torch.Tensor:
    """N x C class probabilities: the softmax of the model's outputs, as fastai's get_preds gives them; for a
    multi-label model each label's own sigmoid (BCEWithLogitsLossFlat's activation)."""
    if multi_label:
        return torch.cat([model(x).float().sigmoid().cpu() for x in batches])
    return torch.cat([model(x).float().softmax(dim=-1).cpu() for x in batches])


def labels_above(classes: list[str], probs: torch.Tensor, threshold: float) -> list[list[dict]]:
    """Per image of a multi-label model, every label whose probability is above `threshold`, most probable first
    (none when no label is: the model sees none of them), rounded as `trainer predict` prints them."""
    return [[{"label": classes[k], "probability": round(float(row[k]), 6)}
             for k in row.argsort(descending=True).tolist() if row[k] > threshold] for row in probs]


def predictions_of(meta: dict, classes: list[str], probs: torch.Tensor, top_k: int) -> list[list[dict]]:
    """What predict, the server and the service answer per image: the top_k classes, or for a multi-label model
    every label above its threshold (model.json's)."""
    if meta.get("multi_label"):
        return labels_above(classes, probs, meta.get("threshold") or 0.5)
    return top_predictions(classes, probs, top_k)


def top_predictions(classes: list[str], probs: torch.Tensor, top_k: int) -> list[list[dict]]:
    """Per image, the top_k labels with their probabilities (rounded as `trainer predict` prints them)."""
    best_probs, best = probs.topk(min(top_k, len(classes)), dim=1)
    return [[{"label": classes[k], "probability": round(float(p), 6)} for p, k in zip(ps, ks)]
            for ps, ks in zip(best_probs.tolist(), best.tolist())]


def image_items(paths: list[Path]) -> list[Path]:
    """Image files, with each folder expanded to every image in it."""
    from fastai.data.transforms import get_image_files

    from trainer.errors import BadInput

    items: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(get_image_files(path))
            if not found:
                raise BadInput(f"{path} holds no images (.jpg, .png, ...); give image files or a folder of them")
            items += found
        elif path.is_file():
            items.append(path)
        else:
            raise BadInput(f"{path}: no such image or folder")
    return items


def predict_images(run_dir: Path, paths: list[Path], top_k: int = 1, bs: int = 64, device: str = "auto",
                   trust_pickle: bool = False, tta: bool = False, progress=None) -> list[dict]:
    """Top-k labels and probabilities for each image (folders expand to every image in them), batched;
    `tta`: with fastai's test-time augmentation. `progress`: a publish callable that hears the "scan" and
    "predict" steps (trainer.progress); None: nothing is shown."""
    from trainer.device import resolve_device
    from trainer.serving.inference import image_items, predict_probabilities, predictions_of
    from trainer.model.learner import class_names, load_pickled, load_weights

    from trainer.data.images import find_unreadable, readable_or_refuse

    given = image_items(paths)
    bad = dict(find_unreadable(given, progress=progress))
    readable_or_refuse(len(given), list(bad.items()), "the input", "give image files that open (.jpg, .png, ...)")
    items = [path for path in given if path not in bad]
    torch_device = resolve_device(device)
    if trust_pickle:
        from trainer.runs import rundir

        learn = load_pickled(run_dir, torch_device)
        classes = [str(c) for c in learn.dls.vocab]
        dl = learn.dls.test_dl(items, bs=bs, num_workers=0)
        probs = learner_predictions(learn, dl, len(items), tta, progress)[0]  # fastai's activation
        meta = rundir.read_model_meta(run_dir) if (run_dir / rundir.MODEL_META).is_file() else {}
    else:
        model, meta = load_weights(run_dir, torch_device)
        classes = meta["classes"]
        probs = predict_probabilities(model, meta, items, bs, torch_device, tta=tta, progress=progress)
    classes = class_names(run_dir, classes)
    predicted = dict(zip(items, predictions_of(meta, classes, probs, top_k)))
    above = {"threshold": meta.get("threshold") or 0.5} if meta.get("multi_label") else {}  # multi-label: every label above it
    return [{"path": str(path), "predictions": predicted[path], **above} if path in predicted else
            {"path": str(path), "predictions": [], "unreadable": bad[path]} for path in given]
