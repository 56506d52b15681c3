"""The CPU/CUDA decisions (trainer/device.py), exercised with the inputs a GPU machine gives them.

No test here needs a GPU: each decision is a small function of what torch would report, and the
tests pass it the CUDA values. scripts/device_check.sh proves the same paths on a real GPU.
"""

from __future__ import annotations

import threading

import pytest
import torch

from trainer.config import FitConfig, resume_config
from trainer.device import (CPU_BF16_MIN_SIDE, CPU_CHANNELS_LAST_MIN_SIDE, cache_device, cpu_has_bf16, default_workers, device_spec,
                            pin_memory, precision_for)
from trainer.errors import BadInput

CPU, CUDA0, CUDA1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


@pytest.mark.parametrize("spec, local_rank, cuda_count, has_mps, expected", [
    ("auto", None, 0, False, "cpu"),
    ("auto", None, 0, True, "mps"),
    ("auto", None, 2, True, "cuda"),
    ("cpu", None, 2, False, "cpu"),
    ("cuda", None, 2, False, "cuda"),
    ("cuda:1", None, 2, False, "cuda:1"),
    ("mps", None, 0, True, "mps"),
    # distributed: each process on its own GPU, from 'auto' (what a resumed run asks) or 'cuda'
    ("auto", 0, 8, False, "cuda:0"),
    ("auto", 5, 8, False, "cuda:5"),
    ("cuda", 3, 8, False, "cuda:3"),
    ("auto", 1, 0, False, "cpu"),  # CPU processes (gloo)
    ("cpu", 1, 8, False, "cpu"),
])
def test_device_spec(spec, local_rank, cuda_count, has_mps, expected):
    assert device_spec(spec, local_rank, cuda_count, has_mps) == expected


@pytest.mark.parametrize("spec, local_rank, cuda_count, has_mps, message", [
    ("cuda", None, 0, False, "no CUDA GPU"),
    ("cuda:2", None, 2, False, "only 2 CUDA device(s)"),
    ("cuda", 4, 2, False, "only 2 CUDA device(s)"),  # more ranks than GPUs
    ("cuda:0", 1, 2, False, "each of the distributed processes needs its own"),  # every rank on one GPU
    ("mps", None, 0, False, "MPS backend is not available"),
])
def test_device_spec_refusals(spec, local_rank, cuda_count, has_mps, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        device_spec(spec, local_rank, cuda_count, has_mps)


@pytest.mark.parametrize("spec, device_type, cuda_bf16, cpu_bf16, side, expected", [
    ("auto", "cuda", True, False, 28, ("bf16", False)),
    ("auto", "cuda", False, False, 224, ("fp16", False)),
    ("fp16", "cuda", True, False, 224, ("fp16", False)),
    ("fp32", "cuda", True, False, 224, ("fp32", False)),
    ("bf16", "cuda", True, False, 224, ("bf16", False)),
    # the CPU: bf16 autocast + channels_last where the CPU has bf16 units and the images are large enough
    ("auto", "cpu", False, True, 224, ("bf16", True)),
    ("auto", "cpu", False, True, CPU_BF16_MIN_SIDE, ("bf16", True)),
    ("auto", "cpu", False, True, CPU_BF16_MIN_SIDE - 1, ("fp32", False)),
    ("auto", "cpu", False, True, 28, ("fp32", False)),
    ("auto", "cpu", False, True, None, ("fp32", False)),
    ("auto", "cpu", False, False, 224, ("fp32", True)),  # no bf16 instructions: channels_last alone pays
    ("auto", "cpu", False, False, CPU_CHANNELS_LAST_MIN_SIDE, ("fp32", True)),
    ("auto", "cpu", False, False, CPU_CHANNELS_LAST_MIN_SIDE - 1, ("fp32", False)),
    ("auto", "cpu", False, False, 28, ("fp32", False)),
    ("fp32", "cpu", False, False, 224, ("fp32", True)),
    ("bf16", "cpu", False, True, 28, ("bf16", True)),  # forced
    ("bf16", "cpu", False, False, 224, ("bf16", True)),  # forced, though slow without the instructions
    ("fp32", "cpu", False, True, 224, ("fp32", True)),
    ("fp32", "cpu", False, True, 64, ("fp32", False)),
    ("auto", "mps", False, False, 224, ("fp32", False)),
])
def test_precision_for(spec, device_type, cuda_bf16, cpu_bf16, side, expected):
    precision = precision_for(spec, device_type, cuda_bf16, cpu_bf16, side)
    assert (precision.name, precision.channels_last) == expected and precision.reason


@pytest.mark.parametrize("spec, device_type", [("fp16", "cpu"), ("fp16", "mps"), ("bf16", "mps")])
def test_precision_refusals(spec, device_type):
    with pytest.raises(BadInput, match="needs a GPU"):
        precision_for(spec, device_type, False, True, 224)


@pytest.mark.parametrize("flags, expected", [
    ("fpu vme avx512f avx512_bf16 amx_tile amx_bf16 amx_int8", True),  # Sapphire Rapids
    ("fpu vme avx512f avx512_bf16", True),  # Cooper Lake, Zen 4
    ("fpu vme avx2 avx512f avx512bw", False),  # AVX-512 without bf16
    ("fpu vme avx2", False),
])
def test_cpu_has_bf16(flags, expected):
    assert cpu_has_bf16(f"processor\t: 0\nflags\t\t: {flags}\n") is expected


@pytest.mark.parametrize("batch_device, train_device, expected", [
    (CPU, CUDA0, True),  # host batches to a GPU: pinned, so the copy is asynchronous
    (CUDA0, CUDA0, False),  # the decoded cache on the GPU: pinning a CUDA tensor raises
    (CUDA1, CUDA1, False),
    (CPU, CPU, False),
    (CPU, None, False),
    (CPU, torch.device("mps"), False),
    (torch.device("meta"), CUDA0, False),
])
def test_pin_memory(batch_device, train_device, expected):
    assert pin_memory(batch_device, train_device) is expected


@pytest.mark.parametrize("train_device, nbytes, expected", [
    (CUDA0, 10**6, CUDA0),
    (CUDA1, 2 * 1024**3, CUDA1),
    (CUDA0, 2 * 1024**3 + 1, CPU),  # too big for the GPU: batches are copied from host memory
    (CPU, 10**6, CPU),
])
def test_cache_device(train_device, nbytes, expected):
    assert cache_device(train_device, nbytes) == expected


def test_default_workers():
    assert default_workers("cpu", 16) == 0
    assert default_workers("cuda", 16) == 8
    assert default_workers("cuda", 2) == 2


def test_a_device_resident_cache_is_never_pinned(fixtures):
    """The decoded-image cache on a GPU feeds batches that are already there: its loaders must not pin them
    (torch's loader would raise on the first batch). A meta tensor stands in for the GPU-resident cache."""
    from trainer.data.cache import cached_loader
    from trainer.data.loaders import build_dls
    from trainer.recipes import get_recipe

    recipe = get_recipe("mnist_sample")
    cfg = FitConfig("mnist_sample", bs=4, workers=0).resolve(recipe)
    dls = build_dls(recipe, fixtures / "mnist_sample", cfg, CPU)
    dls.train.device = CUDA0  # as a GPU run has it (never iterated here)
    labels = torch.zeros(len(dls.train_ds), dtype=torch.long)
    on_host = cached_loader(dls.train, torch.zeros(len(dls.train_ds), 3, 28, 28, dtype=torch.uint8), labels)
    on_gpu = cached_loader(dls.train, torch.empty(len(dls.train_ds), 3, 28, 28, dtype=torch.uint8, device="meta"),
                           labels)
    assert on_host.pin_memory and on_host.fake_l.pin_memory
    assert not on_gpu.pin_memory and not on_gpu.fake_l.pin_memory


def config_of(options: dict, asked: dict | None) -> dict:
    config = {"options": options, "data": {"path": "/data/mnist_sample"}}
    if asked is not None:
        config["asked"] = asked
    return config


def test_resume_re_resolves_the_machine_options():
    """A run resolved to cuda:0 with 8 workers resumes from what was asked (auto), so under --nproc each rank
    takes its own GPU, and on a CPU-only machine it runs on the CPU."""
    trained = FitConfig("mnist_sample", epochs=3, lr=0.01, bs=64, arch="resnet18", device="cuda:0",
                        precision="bf16", workers=8, seed=42).to_dict()
    asked = FitConfig("mnist_sample", epochs=3, arch="resnet18").to_dict()
    cfg = resume_config(config_of(trained, asked))
    assert (cfg.device, cfg.precision, cfg.workers) == ("auto", "auto", None)
    assert (cfg.epochs, cfg.lr, cfg.arch, cfg.seed, cfg.data) == (3, 0.01, "resnet18", 42, "/data/mnist_sample")
    assert [device_spec(cfg.device, rank, 8, False) for rank in range(3)] == ["cuda:0", "cuda:1", "cuda:2"]
    assert device_spec(cfg.device, None, 0, False) == "cpu"
    # an explicit --device / --precision on resume is honoured
    cfg = resume_config(config_of(trained, asked), device="cpu", precision="fp32")
    assert (cfg.device, cfg.precision) == ("cpu", "fp32")
    # runs recorded before "asked" existed: the machine options go back to auto
    assert resume_config(config_of(trained, None)).device == "auto"
    # what the user asked explicitly stays asked
    pinned = {**asked, "device": "cuda", "workers": 2}
    assert (resume_config(config_of(trained, pinned)).device, resume_config(config_of(trained, pinned)).workers) \
        == ("cuda", 2)


def test_one_process_at_a_time_fetches_the_data(isolated, monkeypatch):
    """Two processes (here threads, each with its own lock handle) asking for data that is not there yet:
    one downloads, the other waits and then finds it. The download goes on only once a second thread has
    arrived, either in the download too (no lock: both download, and the test fails) or at the lock, found
    taken: an event, not a length of time."""
    import fcntl
    import tempfile

    import fastai.data.external as external

    from trainer.data.source import locate
    from trainer.recipes import get_recipe
    from helpers import class_folders

    monkeypatch.delenv("TRAINER_OFFLINE")
    monkeypatch.setattr(tempfile, "tempdir", str(isolated))  # a lock folder of its own, out of other runs' way
    target = isolated / "fastai_home" / "data" / "mnist_sample"
    two_arrived = threading.Barrier(2)  # the timeouts below only bound a hang, and fail the test
    calls, found_taken = [], threading.local()
    real_flock = fcntl.flock

    def flock(handle, operation):
        if operation & fcntl.LOCK_EX:
            try:
                return real_flock(handle, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                if not getattr(found_taken, "said", False):
                    found_taken.said = True
                    two_arrived.wait(timeout=120)
        return real_flock(handle, operation)

    def fake_untar_data(url, *args, **kwargs):
        calls.append(url)
        two_arrived.wait(timeout=120)
        class_folders(target / "train", ["3", "7"], 2)
        class_folders(target / "valid", ["3", "7"], 1)
        return target

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(external, "untar_data", fake_untar_data)
    found, errors = [], []

    def fetch():
        try:
            found.append(locate(get_recipe("mnist_sample"), None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and found == [target, target]
    assert len(calls) == 1


DEVICE_COMMANDS = {  # each command that takes --device, with what it needs besides it
    "interpret": lambda run, tmp: ["interpret", run],
    "evaluate": lambda run, tmp: ["evaluate", run, "--data", tmp / "test"],
    "predict": lambda run, tmp: ["predict", run, tmp / "test" / "3" / "3_0.png"],
    "serve": lambda run, tmp: ["serve", run, "--port", "0"],
    "fit": lambda run, tmp: ["fit", "digits", "--epochs", "1"],
}


@pytest.mark.parametrize("spec", ["foo", ""])
@pytest.mark.parametrize("command", list(DEVICE_COMMANDS))
def test_every_command_refuses_an_unknown_device_alike(command, spec, digits_run_copy, trainer, tmp_path):
    """One device parser (device_spec): the same line and exit 2 from every command, before anything is loaded
    or written."""
    from helpers import class_folders, one_line_error

    run_dir, _ = digits_run_copy
    class_folders(tmp_path / "test", range(10), 1)
    before = sorted(p.name for p in run_dir.iterdir())
    runs_before = sorted(p.name for p in run_dir.parent.iterdir())
    result = trainer(*DEVICE_COMMANDS[command](run_dir, tmp_path), "--device", spec, expect=2)
    line = one_line_error(result)
    assert f"unknown --device '{spec}'" in line and "use one of auto, cpu, cuda, cuda:N, mps" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == runs_before  # fit started no run
