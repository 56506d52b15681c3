"""An export that a SIGKILL cut short leaves temporary files beside its target: the next export removes them."""

from __future__ import annotations

from pathlib import Path


def test_the_next_export_removes_stale_temporaries(trainer, digits_run_copy):
    run_dir, _ = digits_run_copy
    stale = [run_dir / ".model.torchscript.k1ll3d.tmp", run_dir / ".model.torchscript.json.x9.tmp"]
    other = run_dir / ".metrics.csv.a1.tmp"  # another file's: not this export's to remove
    for path in (*stale, other):
        path.write_bytes(b"half")
    path = Path(trainer("export", run_dir, "--format", "torchscript").stdout.strip().splitlines()[-1])
    assert path == run_dir / "model.torchscript" and path.is_file()
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in run_dir.glob(".model.*")) == []
