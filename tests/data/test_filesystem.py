"""Filesystem failures: a read-only --out or data root, a full disk while checkpointing, caching, exporting and
writing a report, names too long. Each is exit 2 with one line naming the file, nothing half-written, and what
was whole stays whole; after a full disk in training, --resume works once there is space again.

The full disk is a real one: a small tmpfs mounted per test (we run as root). Where mounting is not allowed,
`Disk` falls back to a patched os.replace raising ENOSPC for paths on it (and says so in its `kind`)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import class_folders, offline_data, one_line_error, run_dir_of

from trainer import files
from trainer.errors import TrainingFailed

FIT = ("--no-pretrained", "--bs", "8", "--arch", "resnet18")


class Disk:
    """A folder on a filesystem of its own: `fill()` leaves no space, `free()` gives it back."""

    def __init__(self, path: Path, monkeypatch, size: str = "600m", read_only: bool = False):
        self.path, self.monkeypatch, self.filled = path, monkeypatch, False
        path.mkdir(parents=True)
        options = f"size={size}" + (",ro" if read_only else "")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        self.kind = "tmpfs" if mounted.returncode == 0 else "patched os.replace"
        if self.kind != "tmpfs":
            if read_only:
                pytest.skip("no tmpfs can be mounted here, and root ignores permissions")
            real = os.replace
            monkeypatch.setattr(os, "replace", lambda a, b, **kw: self.refuse(b) or real(a, b, **kw))

    def refuse(self, target):
        if self.filled and Path(target).absolute().is_relative_to(self.path.absolute()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    def fill(self) -> None:
        self.filled = True
        if self.kind == "tmpfs":
            fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for block in (2**20, 4096, 1):  # down to the last byte
                    try:
                        while True:
                            os.write(fd, bytes(block))
                    except OSError:
                        pass
            finally:
                os.close(fd)

    def free(self) -> None:
        self.filled = False
        (self.path / "filler").unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(isolated, monkeypatch):
    made = []

    def make(name="disk", **kw):
        made.append(Disk(isolated / name, monkeypatch, **kw))
        return made[-1]

    yield make
    for d in made:
        d.unmount()


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*.tmp")]


def test_a_read_only_out(trainer, fixtures, disk):
    ro = disk("ro", read_only=True)
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FIT,
                                     "--out", ro.path / "runs", expect=2))
    assert "read-only filesystem" in message and str(ro.path) in message


def test_a_read_only_data_root_that_must_be_written(trainer, disk, monkeypatch):
    ro = disk("ro", read_only=True)
    monkeypatch.setenv("TRAINER_DATA", str(ro.path))
    message = one_line_error(trainer("fit", "digits", "--epochs", "1", expect=2))
    assert "cannot write the digits data" in message and "TRAINER_DATA" in message


def test_a_read_only_data_root_only_costs_the_caches(trainer, fixtures, disk, monkeypatch, isolated):
    ro = disk("ro", read_only=True)
    monkeypatch.setenv("TRAINER_DATA", str(ro.path))
    result = trainer("fit", "folder", "--data", fixtures / "own", *FIT, "--size", "32", "--epochs", "1",
                     "--bs", "4", "--out", isolated / "runs")
    assert "resized-image cache: not written" in result.stderr + result.stdout


def test_a_full_disk_while_checkpointing_then_resume(trainer, fixtures, disk, monkeypatch, isolated):
    full = disk()
    import trainer.training.checkpoint as checkpoint

    plain = checkpoint.save_state

    saves = []

    def fill_then_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            full.fill()  # epoch 1 is saved; epoch 2's checkpoint meets a full disk
        plain(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_state", fill_then_save)
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FIT, "--epochs", "2",
                     "--out", full.path / "runs", expect=2)
    message = one_line_error(result)
    (run_dir,) = (full.path / "runs" / "mnist_sample").iterdir()
    assert f"cannot write {run_dir / 'last.pth'}: no space left on device" in message, full.kind
    assert "the last checkpoint (epoch 1) is intact" in message and f"--resume {run_dir}" in message
    assert checkpoint.read_state(run_dir)["epochs_done"] == 1 and no_temporaries(run_dir)
    monkeypatch.setattr(checkpoint, "save_state", plain)
    full.free()
    resumed = trainer("fit", "--resume", run_dir)
    assert run_dir_of(resumed) == run_dir
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 3  # the header and 2 epochs


def test_a_full_disk_while_writing_the_decoded_cache(trainer, fixtures, disk, monkeypatch, isolated):
    full = disk()
    monkeypatch.setenv("TRAINER_DATA", str(full.path))
    full.fill()
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FIT,
                                     "--epochs", "1", "--out", isolated / "runs", expect=2))
    assert "no space left on device" in message and ".tensors" in message and "--no-cache" in message
    assert not (isolated / "runs").exists() and no_temporaries(full.path)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, trainer, fixtures):
    base = tmp_path_factory.mktemp("small_run")
    with offline_data(base):
        result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", *FIT, "--epochs", "1",
                         "--out", base / "runs")
    return run_dir_of(result)


def test_a_full_disk_while_exporting(trainer, small_run, disk):
    full = disk()
    full.fill()
    target = full.path / "model.torchscript"
    message = one_line_error(trainer("export", small_run, "--format", "torchscript", "--out", target, expect=2))
    assert f"cannot write {target}" in message and "no space left on device" in message
    assert not target.exists() and not target.with_name("model.torchscript.json").exists()
    assert no_temporaries(full.path)


def test_a_full_disk_while_writing_a_report(trainer, small_run, disk):
    full = disk()
    run_dir = full.path / "run"
    shutil.copytree(small_run, run_dir, ignore=shutil.ignore_patterns("*.pth", "*.pkl", "*.safetensors"))
    before = (run_dir / "report.html").read_bytes()
    full.fill()
    message = one_line_error(trainer("report", run_dir, expect=2))
    assert f"cannot write {run_dir / 'report.html'}: no space left on device" in message
    assert (run_dir / "report.html").read_bytes() == before and no_temporaries(run_dir)


def test_error_log_on_a_full_disk_is_said_not_raised(disk):
    from trainer.training.events import Events
    from trainer.training.fit import failures_logged

    full = disk()
    full.fill()
    with pytest.raises(TrainingFailed, match="no traceback kept: cannot write .*error.log: no space left"):
        with failures_logged(full.path, Events()):
            raise RuntimeError("a bug")


def test_names_near_and_over_the_limit(isolated):
    near = isolated / ("x" * 250)
    files.write_text(near, "whole")  # its temporary's name is cut short to fit
    assert near.read_text() == "whole"
    from trainer.errors import CannotWrite

    with pytest.raises(CannotWrite, match="file name too long"):
        files.write_text(isolated / ("y" * 300), "never")


def test_a_long_archive_name_extracts(fixtures, isolated):
    import tarfile

    from trainer.data.source import extract_archive

    archive = isolated / ("d" * 248 + ".tgz")  # 252 bytes: the old <stem>-<hash> folder was 259
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fixtures / "mnist_sample", arcname="mnist_sample")
    assert (extract_archive(archive) / "mnist_sample" / "train").is_dir()


def test_a_long_class_name_trains(trainer, isolated):
    class_folders(isolated / "long" / "train", ["a" * 255, "b"], 6)
    class_folders(isolated / "long" / "valid", ["a" * 255, "b"], 2)
    trainer("fit", "mnist_sample", "--data", isolated / "long", *FIT, "--epochs", "1", "--bs", "4",
            "--out", isolated / "runs")
