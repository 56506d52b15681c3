"""The image scan in worker processes finds exactly what the serial scan finds, in the same order, for the same reasons;
and it tells its progress as trainer.progress steps."""

from __future__ import annotations

import io
import os

import numpy as np
from helpers import class_folders, pid_after_a_moment
from PIL import Image

from trainer.data import images
from trainer.data.images import find_unreadable, image_files, scan
from trainer.progress import counted_map
from trainer.training.events import Event, Recorder


def mixed_folder(root):
    """Good PNGs and JPEGs of two classes, with corrupt, truncated, zero-byte and non-image files among them."""
    class_folders(root, ["a", "b"], 12)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(photo, "JPEG")
    jpeg = photo.getvalue()
    good = (root / "a" / "0_0.png").read_bytes()
    for k in range(6):
        (root / "b" / f"photo{k}.jpg").write_bytes(jpeg)
    files = {"a/zero.png": b"", "b/half.png": good[: len(good) // 2], "a/text.png": b"this is not an image",
             "b/half.jpg": jpeg[: len(jpeg) // 3], "a/header.png": good[:8], "b/junk.jpg": rng.bytes(500),
             "a/head.jpg": jpeg[:20]}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return sorted(files)


def test_the_parallel_scan_finds_exactly_the_serial_scans_unreadable_files(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    bad = mixed_folder(root)
    files = image_files(root)
    assert len(files) == 24 + 6 + len(bad)

    serial = find_unreadable(files, workers=1)
    parallel = find_unreadable(files, workers=2)  # in worker processes
    assert parallel == serial  # the same files, in the same order, for the same reasons
    assert sorted(p.relative_to(root).as_posix() for p, _ in serial) == bad
    assert [p for p, _ in serial] == [f for f in files if f in {p for p, _ in serial}]  # the listing's order
    assert all(why for _, why in serial)

    total, found = scan(root, workers=4)  # the whole scan (the data root's cache is empty): the same answer
    assert total == len(files) and found == serial


def test_the_scan_runs_in_worker_processes_in_order():
    pids = counted_map(pid_after_a_moment, range(2_000), 2, None, "scan", processes=True)
    assert len(pids) == 2_000 and os.getpid() not in pids and len(set(pids)) == 2  # both workers took some
    assert counted_map(str, range(3_000), 2, None, "scan", processes=True) == [str(i) for i in range(3_000)]
    assert images.scan_workers(10) == 1 and images.scan_workers(70_000) == max(1, min(32, os.cpu_count()))


def test_the_scan_publishes_a_step_with_its_count(tmp_path):
    root = tmp_path / "photos"
    bad = mixed_folder(root)
    recorder = Recorder()
    total, found = scan(root, progress=lambda kind, **data: recorder(Event(kind, data)))
    steps = [e.data for e in recorder.events]
    assert {e.kind for e in recorder.events} == {"step"} and all(s["step"] == "scan" for s in steps)
    assert steps[0]["state"] == "started" and steps[0]["done"] == 0 and steps[0]["total"] == total
    assert steps[-1] == {**steps[-1], "state": "finished", "done": total, "total": total, "unit": "images",
                         "detail": f"{len(bad)} unreadable"}
    assert all(s["state"] == "running" for s in steps[1:-1]) and len(steps) < 10  # a few a second, not per file
    recorder.events.clear()
    assert scan(root, progress=lambda kind, **data: recorder(Event(kind, data))) == (total, found)
    assert recorder.events == []  # unchanged data: the scan's cache answers, nothing is decoded
