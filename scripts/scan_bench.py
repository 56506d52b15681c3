"""Time the image scan (the unreadable-file check before training: trainer.data.images.find_unreadable) serially
and in worker processes, and check that every run found the same unreadable files, in the same order, for the same reasons.

    python scripts/scan_bench.py                                # ../shared/data/mnist_png.tgz: 70,000 PNGs
    python scripts/scan_bench.py --archive other.tgz            # another archive, extracted to a temporary folder
    python scripts/scan_bench.py --data photos/                 # a folder as it is (never modified)
    python scripts/scan_bench.py --workers 1,2,4,8 --repeats 3  # the process counts to time (1: the serial scan)

An archive is extracted into a temporary folder (removed at the end, also on an error or Ctrl-C), and --damage
files there are replaced by broken ones (zero bytes, cut in half, text), so the runs have something to agree on.
The files are read once, untimed, before the first timed scan: every run then reads them from the page cache and
times the decoding, not the disk. Each repeat times every worker count in turn; the best and the median of the
repeats are printed, with the speed-up over the serial scan and the CPU as /proc/cpuinfo names it. A benchmark,
not a test: run it on a quiet machine. Why processes: PIL releases the GIL while it inflates or decodes pixels,
not while it opens a file and parses its header in Python; a 28 px MNIST PNG is mostly the latter, so threads
were slower than one (70,000 PNGs on 2 cores: 10-11 s against 5-6 s serially).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist_png.tgz"


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def damage(files: list[Path], n: int) -> list[Path]:
    """Break `n` files spread over the listing (in a temporary copy only): zero bytes, cut in half, text."""
    broken = files[:: max(1, len(files) // n)][:n] if n else []
    for k, path in enumerate(broken):
        data = path.read_bytes()
        path.write_bytes([b"", data[: len(data) // 2], b"not an image"][k % 3])
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="a .tgz/.tar/.zip of images")
    where.add_argument("--data", type=Path, help="a folder of images, scanned as it is")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                        help="comma-separated process counts (1: serial; default: 1 and this machine's CPU count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--damage", type=int, default=6, help="files broken in an extracted archive's copy")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if 1 not in workers:
        workers.insert(0, 1)  # the serial scan is what the others are checked against

    import warnings

    warnings.filterwarnings("ignore")
    import PIL

    from trainer.data.images import find_unreadable, image_files

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the temporary folder is removed then too
    temporary = None
    try:
        if args.data is not None:
            root, source = args.data, str(args.data)
        else:
            temporary = Path(tempfile.mkdtemp(prefix="scan_bench-"))
            start = time.perf_counter()
            shutil.unpack_archive(str(args.archive), temporary, filter="data")
            root, source = temporary, str(args.archive)
            print(f"extracted {args.archive} in {time.perf_counter() - start:.1f} s", flush=True)
        files = image_files(root)
        broken = damage(files, args.damage) if temporary is not None else []
        for path in files:  # into the page cache: the scans time decoding, not the disk
            path.read_bytes()
        print(f"{source}: {len(files):,} images{f', {len(broken)} broken on purpose' if broken else ''}")
        print(f"CPU: {cpu()} ({os.cpu_count()} cores); Python {platform.python_version()}, Pillow {PIL.__version__}")

        seconds: dict[int, list[float]] = {w: [] for w in workers}
        expected = None
        for repeat in range(args.repeats):
            for w in workers:
                start = time.perf_counter()
                found = find_unreadable(files, workers=w)
                seconds[w].append(time.perf_counter() - start)
                if expected is None:
                    expected = found
                elif found != expected:
                    raise SystemExit(f"error: {w} workers found {len(found)} unreadable files, the serial scan "
                                     f"{len(expected)}: the scans disagree")
                print(f"  repeat {repeat + 1}: {w:>2} worker(s) {seconds[w][-1]:7.2f} s", flush=True)
        if broken and sorted(p for p, _ in expected) != sorted(broken):
            raise SystemExit(f"error: the scan found {len(expected)} unreadable files, {len(broken)} were broken")

        serial = min(seconds[1])
        print(f"\n{'workers':>8} {'best s':>8} {'median s':>9} {'images/s':>10} {'speed-up':>9}")
        for w in workers:
            best = min(seconds[w])
            print(f"{w:>8} {best:8.2f} {statistics.median(seconds[w]):9.2f} {len(files) / best:10,.0f} "
                  f"{serial / best:8.2f}x")
        print(f"every run found the same {len(expected)} unreadable files, in the same order, for the same reasons")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
