"""One listing for the scan and for fastai: links followed once, loops not followed, FIFOs and dangling links
skipped unopened; what the scan counts is what the DataLoaders hold."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

from helpers import class_folders

from trainer.data.images import scan
from trainer.recipes import get_recipe


def sample(root: Path) -> Path:
    class_folders(root / "train", ["3", "7"], 8)
    class_folders(root / "valid", ["3", "7"], 4)
    return root


def loaders(root: Path, skip=frozenset()):
    cfg = SimpleNamespace(valid_pct=None, seed=0)
    return get_recipe("mnist_sample").build(root, cfg, dict(bs=4, num_workers=0), frozenset(skip))


def items(dls) -> tuple[list[Path], list[Path]]:
    return [Path(f) for f in dls.train_ds.items], [Path(f) for f in dls.valid_ds.items]


def bounded(call, seconds=120):
    """`call()` on a thread, failing (not hanging) if it does not return in time."""
    done, result = threading.Event(), {}

    def target():
        result["value"] = call()
        done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(seconds), f"{call} did not return in {seconds}s (it opened a FIFO?)"
    return result["value"]


def test_symlink_loops_count_each_file_once(tmp_path, capsys):
    root = sample(tmp_path / "looped")
    os.symlink("..", root / "train" / "3" / "loop")
    os.symlink("../7", root / "train" / "7" / "self")
    total, bad = scan(root)
    assert (total, bad) == (24, [])
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "loop" in warning and "self" in warning
    train, valid = items(loaders(root))
    assert len(train) + len(valid) == 24
    assert not {f.resolve() for f in train} & {f.resolve() for f in valid}
    assert sorted(train + valid) == sorted(f for f in root.rglob("*.png") if "loop" not in f.parts and "self" not in f.parts)


def test_symlinked_class_folder_is_scanned_like_the_rest(tmp_path):
    root = sample(tmp_path / "linked")
    elsewhere = tmp_path / "elsewhere" / "7"
    (root / "valid" / "7").rename(elsewhere.parent.mkdir() or elsewhere)
    (elsewhere / "broken.png").write_bytes(b"not a png")
    os.symlink(elsewhere, root / "valid" / "7")
    total, bad = scan(root)
    assert total == 25 and [p for p, _ in bad] == [root / "valid" / "7" / "broken.png"]
    dls = loaders(root, {p for p, _ in bad})
    train, valid = items(dls)
    assert list(dls.vocab) == ["3", "7"] and len(train) + len(valid) == 24
    assert sorted(train + valid) == sorted(f for f in scan_list(root) if f not in {p for p, _ in bad})


def scan_list(root: Path) -> list[Path]:
    from trainer.data.images import image_files

    return image_files(root)


def test_the_same_image_in_train_and_valid_is_listed_once(tmp_path):
    root = sample(tmp_path / "twice")
    os.symlink((root / "train" / "3" / "0_0.png").resolve(), root / "valid" / "3" / "again.png")
    assert scan(root)[0] == 24
    train, valid = items(loaders(root))
    assert not {f.resolve() for f in train} & {f.resolve() for f in valid}


def test_a_fifo_and_a_dangling_link_are_unreadable_and_never_opened(tmp_path):
    root = sample(tmp_path / "special")
    os.mkfifo(root / "train" / "3" / "pipe.png")
    os.symlink(tmp_path / "gone.png", root / "train" / "7" / "gone.png")
    total, bad = bounded(lambda: scan(root))
    reasons = dict(bad)
    assert total == 26 and set(reasons) == {root / "train" / "3" / "pipe.png", root / "train" / "7" / "gone.png"}
    assert "FIFO" in reasons[root / "train" / "3" / "pipe.png"]
    assert "dangling" in reasons[root / "train" / "7" / "gone.png"]
    train, valid = items(bounded(lambda: loaders(root, set(reasons))))
    assert len(train) + len(valid) == 24


def test_fit_skips_a_fifo_and_a_dangling_link(tmp_path, trainer):
    root = sample(tmp_path / "fit")
    os.mkfifo(root / "train" / "3" / "pipe.png")
    os.symlink(tmp_path / "gone.png", root / "train" / "7" / "gone.png")
    result = bounded(lambda: trainer("fit", "mnist_sample", "--data", root, "--no-pretrained", "--epochs", "1",
                                     "--bs", "4", "--arch", "resnet18", "--out", tmp_path / "runs"), 300)
    assert "skipping 2 unreadable of 26 images" in result.stderr
