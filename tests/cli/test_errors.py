"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import no_runs_written, one_line_error, run_dir_of


def test_unknown_recipe_lists_recipes(trainer, isolated):
    message = one_line_error(trainer("fit", "mnist_smaple", expect=2))
    assert "did you mean 'mnist_sample'" in message
    for name in ("digits", "mnist", "cifar10", "pets", "pets_breeds", "folder"):
        assert name in message
    assert no_runs_written(isolated)


def test_missing_data_offline_says_how_to_fix(trainer, isolated):
    message = one_line_error(trainer("fit", "mnist_sample", "--no-pretrained", expect=2))
    assert "--data" in message and "FASTAI_HOME" in message and "datasets/mnist_sample" in message
    assert no_runs_written(isolated)


def test_failed_download_says_how_to_fix(trainer, isolated, monkeypatch):
    # The real code path: untar_data is tried and fails as it does without a network.
    import urllib.error

    import fastai.data.external

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.delenv("TRAINER_OFFLINE")
    monkeypatch.setattr(fastai.data.external, "untar_data", no_network)
    message = one_line_error(trainer("fit", "mnist", "--no-pretrained", expect=2))
    assert "could not download" in message and "mnist_png" in message and "--data" in message
    assert no_runs_written(isolated)


def test_missing_pretrained_weights_offline(trainer, fixtures, isolated):
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--bs", "8", expect=2))
    assert "pretrained weights" in message and "--weights" in message and "--no-pretrained" in message
    assert no_runs_written(isolated)


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], "--epochs must be"),
    (["--epochs", "-3"], "--epochs must be"),
    (["--lr", "0"], "--lr must be"),
    (["--lr", "nan"], "--lr must be"),
    (["--bs", "0"], "--bs must be"),
    (["--bs", "64"], "larger than the 24 training images"),
    (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--device", "cpus"], "did you mean 'cpu'"),
    (["--precision", "fp8"], "--precision"),
    (["--arch", "resnet340"], "did you mean 'resnet34'"),
])
def test_bad_option_values(trainer, fixtures, isolated, args, words):
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--bs", "8", *args,
                     expect=2)
    assert words in one_line_error(result)
    assert no_runs_written(isolated)


def test_data_path_that_does_not_exist(trainer, isolated):
    message = one_line_error(trainer("fit", "mnist", "--data", isolated / "nowhere", expect=2))
    assert "no such file or folder" in message and "training/" in message


def test_data_in_the_wrong_layout(trainer, fixtures, isolated):
    # mnist_sample's folders are train/valid, not mnist's training/testing
    message = one_line_error(trainer("fit", "mnist", "--data", fixtures / "mnist_sample", "--no-pretrained", expect=2))
    assert "no 'training/' folder" in message and "expected training/" in message and "--data" in message
    empty = isolated / "one_class" / "only"
    empty.mkdir(parents=True)
    (isolated / "one_class" / "only" / "a.png").write_bytes((fixtures / "mnist_sample/train/3/0_0.png").read_bytes())
    message = one_line_error(trainer("fit", "folder", "--data", isolated / "one_class", expect=2))
    assert "at least 2 class folders" in message
    assert no_runs_written(isolated)


def test_empty_data_folder_and_class_without_images(trainer, fixtures, isolated):
    empty = isolated / "empty"
    empty.mkdir()
    message = one_line_error(trainer("fit", "mnist_sample", "--data", empty, "--no-pretrained", expect=2))
    assert "no 'train/' folder" in message and "expected train/{3,7}" in message
    data = isolated / "hollow"
    for split, digit in (("train", "3"), ("train", "7"), ("valid", "3"), ("valid", "7")):
        (data / split / digit).mkdir(parents=True)
        if digit == "3" or split == "valid":
            (data / split / digit / "a.png").write_bytes((fixtures / "mnist_sample/train/3/0_0.png").read_bytes())
    message = one_line_error(trainer("fit", "mnist_sample", "--data", data, "--no-pretrained", expect=2))
    assert "class folder '7'" in message and "has no images" in message
    assert no_runs_written(isolated)


def test_unreadable_weights_file(trainer, fixtures, isolated):
    weights = isolated / "weights.pth"
    weights.write_text("not a state dict")
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--bs", "8",
                                     "--arch", "resnet18", "--weights", weights, expect=2))
    assert "is not a readable torch state dict" in message
    assert no_runs_written(isolated)


def test_not_an_archive(trainer, isolated):
    notes = isolated / "notes.txt"
    notes.write_text("not images")
    message = one_line_error(trainer("fit", "folder", "--data", notes, expect=2))
    assert "not a .tgz/.tar/.zip archive" in message


def test_folder_needs_data(trainer):
    assert "--data PATH" in one_line_error(trainer("fit", "folder", expect=2))


def test_unwritable_out(trainer, fixtures, isolated):
    blocker = isolated / "file_not_folder"
    blocker.write_text("")
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample",
                                     "--no-pretrained", "--out", blocker / "runs", expect=2))
    assert "--out" in message and "cannot be written" in message


def test_exit_code_and_no_traceback_in_a_real_process(isolated):
    """The process boundary is the point: what a shell script sees."""
    done = subprocess.run([sys.executable, "-m", "trainer", "fit", "nope"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown recipe 'nope'") and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, expected", [(["--help"], "Usage"), (["datasets"], "digits"), (["fit", "--help"], "Usage"),
                                            (["--version"], "trainer "), (["runs"], "no runs under"),
                                            (["runs", "show", "nope"], ""), (["runs", "--help"], "Usage")])
def test_light_commands_do_not_import_torch(args, expected):
    code = ("import sys; from trainer.cli import app\n"
            f"try: app({args!r}, prog_name='trainer')\n"
            "except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'fastai', 'torchvision') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_help_shows_the_defaults(trainer, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    out = trainer("fit", "--help").stdout
    for text in ("[default: 64]", "[default: 42]", "[default: 0.5]", "[default: the recipe's]"):
        assert text in out, f"{text} missing from fit --help (rich markup would eat unescaped brackets)"


def test_datasets_lists_every_recipe(trainer):
    out = trainer("datasets").stdout
    for name in ("mnist_sample", "mnist", "cifar10", "pets", "pets_breeds", "digits", "folder"):
        assert name in out
    assert "URLs.MNIST_SAMPLE" in out and "scikit-learn" in out


def test_failed_weights_download_says_how_to_fix(trainer, fixtures, isolated, monkeypatch):
    # Without TRAINER_OFFLINE the real download is tried; here it fails as it does with no network.
    import urllib.error

    import torchvision.models._api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.delenv("TRAINER_OFFLINE")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    message = one_line_error(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--arch",
                                     "resnet18", "--bs", "8", expect=2))
    assert "pretrained weights for resnet18" in message and "trainer download mnist_sample --arch resnet18" in message
    assert "--weights" in message and "--no-pretrained" in message
    assert no_runs_written(isolated)


def test_failure_during_training_exits_1_and_keeps_the_traceback(trainer, fixtures, isolated, monkeypatch):
    """A crash inside the training loop, once the run directory exists: exit 1, one line, the traceback kept in
    error.log, and the run listed as failed. The crash is a real one from torch: from the first training batch
    on, the model is handed images with 2 channels instead of 3, as a broken data pipeline would hand them
    (added to every Learner through fastai's own default callbacks, so trainer's code is not touched)."""
    from fastai.callback.core import Callback
    from fastai.learner import defaults

    class TwoChannelBatches(Callback):
        def before_batch(self):
            if self.training:
                self.learn.xb = (self.xb[0][:, :2],)

    monkeypatch.setattr(defaults, "callbacks", [*defaults.callbacks, TwoChannelBatches])
    result = trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                     "resnet18", "--bs", "8", "--epochs", "1", expect=1)
    message = one_line_error(result)
    assert "training failed: RuntimeError: " in message and "to have 3 channels, but got 2" in message
    (run_dir,) = (isolated / "runs" / "mnist_sample").glob("2*")  # not through latest/, which names trained runs
    named = Path(message.rsplit("(traceback in ", 1)[1].removesuffix(")"))
    assert named.resolve() == (run_dir / "error.log").resolve()
    error_log = (run_dir / "error.log").read_text()
    assert error_log.startswith("Traceback") and "to have 3 channels, but got 2" in error_log.splitlines()[-1]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.safetensors").exists()
    assert not (run_dir.parent / "latest").exists()
    listed = json.loads(trainer("runs", "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run_dir.name, "failed")]


def copy_tree(source, target):
    for image in source.rglob("*"):
        if image.is_file():
            (target / image.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / image.relative_to(source)).write_bytes(image.read_bytes())


def test_unreadable_images_are_skipped_and_reported(trainer, fixtures, isolated):
    import io

    import numpy as np
    from PIL import Image

    data = isolated / "messy"
    copy_tree(fixtures / "mnist_sample", data)
    good = (data / "train" / "3" / "0_0.png").read_bytes()
    (data / "train" / "3" / "zero_bytes.png").write_bytes(b"")
    (data / "train" / "7" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "valid" / "7" / "notes.png").write_text("this is not an image")
    # every other mode PIL reads is converted, not skipped
    gray = np.asarray(Image.open(io.BytesIO(good)).convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(data / "train" / "3" / "sixteen_bit.png")
    Image.fromarray(gray).convert("RGBA").save(data / "train" / "3" / "alpha.png")
    palette = Image.fromarray(gray).convert("P")
    palette.info["transparency"] = 0
    palette.save(data / "train" / "7" / "palette.png")
    Image.fromarray(gray).convert("CMYK").save(data / "train" / "7" / "cmyk.jpg")

    result = trainer("fit", "mnist_sample", "--data", data, "--no-pretrained", "--arch", "resnet18", "--bs", "8",
                     "--epochs", "1")
    assert "warning: skipping 3 unreadable of 39 images" in result.stderr and "zero_bytes.png" in result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    skipped = (run_dir / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in skipped) == ["notes.png", "truncated.png",
                                                                                   "zero_bytes.png"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["n_train"] == 24 + 4 and config["data"]["n_valid"] == 8 and config["data"]["n_skipped"] == 3
    from trainer.data.images import RGBImage

    sixteen = RGBImage.create(data / "train" / "3" / "sixteen_bit.png")
    assert sixteen.mode == "RGB" and np.asarray(sixteen).max() == gray.max()  # scaled, not clipped


def test_nothing_readable_left(trainer, isolated):
    data = isolated / "junk"
    for split in ("train", "valid"):
        for digit in ("3", "7"):
            (data / split / digit).mkdir(parents=True)
            (data / split / digit / "a.png").write_bytes(b"")
    message = one_line_error(trainer("fit", "mnist_sample", "--data", data, "--no-pretrained", expect=2))
    assert "none of the 4 images" in message and "can be read" in message
    assert no_runs_written(isolated)


def _tar_with(path, name, data=b"x", link_to=None):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo(name)
        if link_to:
            member.type, member.linkname = tarfile.SYMTYPE, link_to
            tar.addfile(member)
        else:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("name, link_to", [("/tmp/evil.txt", None), ("../evil.txt", None),
                                           ("mnist_png/link", "/etc/passwd")])
def test_archive_members_pointing_outside_are_refused(trainer, isolated, name, link_to):
    archive = isolated / "evil.tgz"
    _tar_with(archive, name, link_to=link_to)
    message = one_line_error(trainer("fit", "mnist", "--data", archive, expect=2))
    assert "refusing" in message
    assert not (isolated / "evil.txt").exists() and not (isolated.parent / "evil.txt").exists()
    extracted = isolated / "datasets" / ".extracted"
    assert not extracted.exists() or not any(extracted.iterdir()), "a half-extracted folder was left"


def test_two_processes_extracting_one_archive(fixtures, isolated):
    """Both get a complete copy, and only one copy is kept: extraction is renamed into place."""
    import tarfile

    archive = isolated / "mnist_png.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fixtures / "mnist_png", arcname="mnist_png")
    code = ("import sys; from pathlib import Path; from trainer.data.source import extract_archive\n"
            "print(extract_archive(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(archive)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(outputs) == 1
    extracted = isolated / "datasets" / ".extracted"
    assert [d.name for d in extracted.iterdir()] == [Path(outputs.pop()).name]
    assert len(list(extracted.rglob("*.png"))) == 40


def test_pickle_only_or_corrupt_model_is_refused(trainer, fixtures, isolated):
    run_dir = isolated / "runs" / "digits" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"recipe": {"name": "digits"}, "options": {"recipe": "digits"}}')
    (run_dir / "model.pkl").write_bytes(b"not a pickle")
    image = fixtures / "mnist_png" / "testing" / "3" / "3_0.png"
    message = one_line_error(trainer("predict", run_dir, image, expect=2))
    assert "no readable model.safetensors" in message and "--trust-pickle" in message
    message = one_line_error(trainer("predict", run_dir, image, "--trust-pickle", expect=2))
    assert "model.pkl could not be loaded" in message and "trainer fit" in message
    (run_dir / "model.json").write_text('{"arch": "resnet34", "classes": ["0", "1"], "recipe": "digits"}')
    (run_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    message = one_line_error(trainer("predict", run_dir, image, expect=2))
    assert "model.safetensors" in message and "train again" in message


STAMP = "20260102-030405"


@pytest.fixture
def one_second(monkeypatch):
    """The clock held on one second, for run ids: every run starts "in the same second"."""
    import time

    real = time.strftime

    def strftime(fmt, *when):
        return STAMP if fmt == "%Y%m%d-%H%M%S" and not when else real(fmt, *when)

    monkeypatch.setattr(time, "strftime", strftime)
    return STAMP


def test_a_run_started_in_the_same_second_gets_the_next_id(trainer, fixtures, isolated, one_second):
    """Run ids are start times to the second: a run that starts in the second of another one (whose directory,
    just made, is still empty) gets `-2`; that run is left alone, and the listing and latest know the order."""
    taken = isolated / "runs" / "mnist_sample" / one_second
    taken.mkdir(parents=True)
    run_dir = run_dir_of(trainer("fit", "mnist_sample", "--data", fixtures / "mnist_sample", "--no-pretrained", "--arch",
                                 "resnet18", "--bs", "8", "--epochs", "1", "--no-interpret", "--quiet"))
    assert run_dir.name == f"{one_second}-2" and (run_dir / "summary.json").is_file()
    assert list(taken.iterdir()) == []
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    listed = json.loads(trainer("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [f"{one_second}-2", one_second]  # newest first


def test_run_ids_started_together_never_collide(isolated, one_second):
    """Eight starts released at once by a barrier, all in one second: eight directories, none shared."""
    import threading

    from trainer.runs.store import new_run_dir

    together, made = threading.Barrier(8), []

    def start():
        together.wait()
        made.append(new_run_dir(isolated / "runs", "digits"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(path.name for path in made) == sorted([one_second] + [f"{one_second}-{n}" for n in range(2, 9)])
    assert all(path.is_dir() for path in made)
