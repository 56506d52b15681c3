"""Archive bombs: refused before anything is kept, by declared size, by the bytes written, by member count."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import class_folders, one_line_error

from trainer.data.source import extract_archive


def zip_bomb(path: Path, size: int) -> Path:
    """A zip of one `size`-byte file of zeros (deflate: about 1/1000 of it), plus a real image."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb/train/3/zeros.png", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(size // 2**20):
                member.write(chunk)
    return path


def tar_bomb(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("bomb/train/3/zeros.png")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    return path


def nothing_kept(root: Path) -> bool:
    extracted = root / "datasets" / ".extracted"
    return not extracted.exists() or not any(extracted.iterdir())


@pytest.mark.parametrize("make", [zip_bomb, tar_bomb])
def test_a_bomb_is_refused_and_nothing_kept(trainer, isolated, make):
    archive = make(isolated / f"bomb{'.zip' if make is zip_bomb else '.tgz'}", 64 * 2**20)
    assert archive.stat().st_size < 64 * 2**20 / 100  # more than the default 100x
    message = one_line_error(trainer("fit", "mnist_sample", "--data", archive, expect=2))
    assert "refusing to extract" in message and "TRAINER_MAX_EXTRACT_RATIO" in message
    assert nothing_kept(isolated)


def test_the_absolute_cap(isolated, monkeypatch):
    archive = tar_bomb(isolated / "big.tgz", 3 * 2**20)
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_RATIO", "1e9")
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_BYTES", str(2**20))
    with pytest.raises(Exception, match="TRAINER_MAX_EXTRACT_BYTES"):
        extract_archive(archive)
    assert nothing_kept(isolated)
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_BYTES", str(4 * 2**20))
    assert (extract_archive(archive) / "bomb" / "train" / "3" / "zeros.png").stat().st_size == 3 * 2**20


def test_bytes_are_counted_while_extracting(isolated, monkeypatch):
    """Headers can lie: with the declared sizes taken at their word (the up-front check switched off), the
    bytes written still stop the extraction, and the partial copy is removed."""
    from trainer.data.archives import Budget

    archive = tar_bomb(isolated / "liar.tgz", 8 * 2**20)
    monkeypatch.setattr(Budget, "check_declared", lambda self, members, declared: None)
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_BYTES", str(2**20))
    with pytest.raises(Exception, match="extracts to more than"):
        extract_archive(archive)
    assert nothing_kept(isolated)


def test_too_many_members(trainer, isolated, monkeypatch):
    class_folders(isolated / "many" / "train", ["3", "7"], 6)
    archive = isolated / "many.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(isolated / "many", arcname="many")
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_MEMBERS", "10")
    message = one_line_error(trainer("fit", "mnist_sample", "--data", archive, expect=2))
    assert "members" in message and "TRAINER_MAX_EXTRACT_MEMBERS" in message
    assert nothing_kept(isolated)


def test_a_bad_limit_is_one_line(trainer, isolated, monkeypatch):
    archive = tar_bomb(isolated / "small.tgz", 1024)
    monkeypatch.setenv("TRAINER_MAX_EXTRACT_RATIO", "lots")
    message = one_line_error(trainer("fit", "mnist_sample", "--data", archive, expect=2))
    assert "TRAINER_MAX_EXTRACT_RATIO must be a positive number" in message
