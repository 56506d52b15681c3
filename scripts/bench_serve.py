"""Benchmark a running `trainer serve`: requests/s and latency (p50, p95) for single images and batches.

    trainer serve digits --port 8000 &
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --images datasets/digits/testing

Each scenario sends `--requests` POST /predict requests from `--concurrency` client threads, each
request with `batch` images picked in turn from the folder, after a few warm-up requests. Every
answer must be 200 with one result per image, or the script stops. A benchmark, not a test: the
figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import statistics
import time
from pathlib import Path

import httpx


def scenario(url: str, images: list[tuple[str, bytes]], batch: int, requests: int, concurrency: int) -> dict:
    pool = itertools.cycle(images)
    bodies = [[next(pool) for _ in range(batch)] for _ in range(requests)]
    with httpx.Client(timeout=300) as client:

        def send(files) -> float:
            start = time.perf_counter()
            answer = client.post(f"{url}/predict", files=[("files", f) for f in files])
            took = time.perf_counter() - start
            if answer.status_code != 200 or len(answer.json()["results"]) != len(files):
                raise SystemExit(f"bad answer {answer.status_code}: {answer.text[:200]}")
            return took

        for files in bodies[:3]:  # warm-up: first requests pay one-time costs
            send(files)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as workers:
            latencies = sorted(workers.map(send, bodies))
        wall = time.perf_counter() - start
    return {"batch": batch, "requests": requests, "concurrency": concurrency, "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 2), "images_per_s": round(requests * batch / wall, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, required=True, help="A folder of images (searched recursively).")
    parser.add_argument("--batches", default="1,16", help="Images per request, comma-separated.")
    parser.add_argument("--requests", type=int, default=200, help="Requests per scenario (after 3 warm-up ones).")
    parser.add_argument("--concurrency", default="1,8", help="Client threads, comma-separated.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:256]
    if not files:
        raise SystemExit(f"no .png/.jpg images under {args.images}")
    images = [(p.name, p.read_bytes()) for p in files]
    health = httpx.get(f"{args.url}/health", timeout=30).json()
    print(f"server: {health['recipe']} · {health['model']} on {health['device']}; {len(images)} images")
    rows = []
    print(f"{'batch':>5} {'clients':>7} {'requests/s':>10} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for batch in map(int, args.batches.split(",")):
        for concurrency in map(int, args.concurrency.split(",")):
            row = scenario(args.url, images, batch, args.requests, concurrency)
            rows.append(row)
            print(f"{batch:>5} {concurrency:>7} {row['requests_per_s']:>10} {row['images_per_s']:>9} "
                  f"{row['p50_ms']:>8} {row['p95_ms']:>8}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"server": health, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
