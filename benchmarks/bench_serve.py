"""Load test of ``plaindet serve``: throughput and latency at concurrency 1, 4 and 16, with micro-batching
on and off, under a mix of valid and broken request bodies; errors by status, and the server's memory.

    python benchmarks/bench_serve.py [--model plaindet-t] [--size 640] [--threads 2] [--requests 400]
        [--broken-share 0.5] [--concurrency 1 4 16] [--max-batch 8] [--batch-wait-ms 5] [--images DIR]

For each mode (micro-batching on: ``--max-batch 8 --batch-wait-ms 5``; off: ``--max-batch 1``) a fresh
``plaindet serve`` process is started on 127.0.0.1 (a free port) with a randomly initialized model
(80 classes; random weights do not change the cost) saved to a temporary folder. Then, for each
concurrency N, N client threads (persistent HTTP/1.1 connections, stdlib only) send ``--requests``
requests in all: ``--broken-share`` of them broken (a truncated JPEG, text, a zero-byte body, a
30,000 x 30,000 PNG header, a JSON body, an unknown model), the rest one photo each (coco128 when
found, else synthetic 640 x 480 images). The loop is bounded in count and in time
(``--time-limit`` seconds per level) and stops by itself; it targets only 127.0.0.1.

Printed: requests/s, valid images/s, p50/p99 latency of the valid requests, the mean batch the model
ran (from ``/v1/models``), the server's RSS after the level, responses by status; then the ratios the README quotes: images/s at the
highest concurrency with micro-batching vs without, p50 and p99 at concurrency 1 vs the model's own latency
(``plaindet benchmark``'s PyTorch fp32 worker, same threads and size, run here: the server's overhead),
5xx responses, crashes (the server process gone), and the server's RSS before and after each mode.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128" / "images" / "train2017"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def valid_images(folder: Path | None, count: int = 16) -> tuple[list[bytes], str]:
    files = sorted(folder.glob("*.jpg"))[:count] if folder and folder.is_dir() else []
    if files:
        return [f.read_bytes() for f in files], f"{len(files)} coco128 photos"
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out, f"{count} synthetic 640x480 JPEGs"


def broken_bodies(photo: bytes) -> list[tuple[str, bytes, str]]:
    """``(query, body, content type)`` of each kind of broken request."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 1, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\x00" * 4000)) + chunk(b"IEND", b"")
    return [
        ("", photo[: len(photo) // 3], "image/jpeg"),
        ("", b"this is not an image", "image/png"),
        ("", b"", "image/jpeg"),
        ("", bomb, "image/png"),
        ("", b'{"url": "http://example.com/a.jpg"}', "application/json"),
        ("&model=nope", photo, "image/jpeg"),
    ]


def start_server(weights: Path, threads: int, max_batch: int, wait_ms: float, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [sys.executable, "-m", "plaindet", "serve", "--weights", f"bench={weights}", "--port", str(port), "--threads", str(threads),
            "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if get_json(port, "/readyz")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the server did not get ready in 300 s:\n{log.read_text()[-3000:]}")


def get_json(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def batch_stats(port: int) -> dict:
    return get_json(port, "/v1/models")[1]["models"][0]["stats"]


def load(port: int, concurrency: int, requests: int, broken_share: float, photos: list[bytes], time_limit: float) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; every ``1 / broken_share``-th is broken."""
    broken = broken_bodies(photos[0])
    every = round(1 / broken_share) if broken_share > 0 else 0
    lock = threading.Lock()
    sent = 0
    statuses: Counter = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + time_limit

    def next_index() -> int | None:
        nonlocal sent
        with lock:
            if sent >= requests or time.perf_counter() > stop_at:
                return None
            sent += 1
            return sent - 1

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (i := next_index()) is not None:
            is_broken = every and i % every == every - 1
            query, body, content_type = broken[(i // max(every, 1)) % len(broken)] if is_broken else ("", photos[i % len(photos)], "image/jpeg")
            start = time.perf_counter()
            try:
                conn.request("POST", f"/v1/detect?threshold=0.3{query}", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                status = "connection error"
                failures.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                statuses[status] += 1
                if not is_broken and status == 200:
                    latencies.append(elapsed)
        conn.close()

    before = batch_stats(port)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = batch_stats(port)
    latencies.sort()
    images = after["images"] - before["images"]
    return {
        "requests": sum(statuses.values()),
        "valid": len(latencies),
        "rps": sum(statuses.values()) / wall,
        "ips": len(latencies) / wall,
        "p50": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] if latencies else float("nan"),
        "mean_batch": images / max(1, after["batches"] - before["batches"]),
        "statuses": statuses,
        "failures": failures[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-t")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=400, help="Requests per concurrency level and mode.")
    parser.add_argument("--broken-share", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--time-limit", type=float, default=600.0, help="Seconds per level at most; the level stops early.")
    parser.add_argument("--images", type=Path, default=COCO128)
    args = parser.parse_args()

    import logging

    import plaindet
    from plaindet.export.benchmark import WorkerSpec, _run_worker

    logging.getLogger("plaindet").setLevel(logging.ERROR)
    photos, photo_note = valid_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        weights = plaindet.create_model(args.model, image_size=args.size).save(Path(tmp) / f"{args.model}.safetensors")
        own = _run_worker(WorkerSpec("torch", "fp32", size=args.size, batch=1, threads=args.threads, runs=10, warmup=2, weights=str(weights)))
        model_ms = 1000 * statistics.median(own["times"])
        print(f"{args.model} at {args.size} px, {args.threads} threads; {photo_note}; {args.requests} requests per level, "
              f"{args.broken_share:.0%} broken; model alone (plaindet benchmark's PyTorch fp32 worker): median {model_ms:.0f} ms\n")  # fmt: skip
        header = f"{'micro-batching':<22} {'conc.':>5} {'requests':>8} {'req/s':>7} {'images/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean batch':>10} {'RSS MB':>7}  responses"
        print(header)
        print("-" * len(header))
        results: dict = {}
        memory: dict = {}
        crashes = 0
        for mode, max_batch, wait_ms in (("on", args.max_batch, args.batch_wait_ms), ("off", 1, 0.0)):
            proc, port = start_server(weights, args.threads, max_batch, wait_ms, Path(tmp) / f"serve-{mode}.log")
            try:
                rss_start = rss_mb(proc.pid)
                total = 0
                for concurrency in args.concurrency:
                    r = load(port, concurrency, args.requests, args.broken_share, photos, args.time_limit)
                    results[mode, concurrency] = r
                    total += r["requests"]
                    label = f"on (max {max_batch}, {wait_ms:g} ms)" if mode == "on" else "off (max 1)"
                    shown = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items(), key=lambda kv: str(kv[0])))
                    rss = rss_mb(proc.pid) if proc.poll() is None else float("nan")
                    print(f"{label:<22} {concurrency:>5} {r['requests']:>8} {r['rps']:>7.2f} {r['ips']:>8.2f} {r['p50']:>7.0f} {r['p99']:>7.0f} {r['mean_batch']:>10.2f} {rss:>7.0f}  {shown}")
                    if r["failures"]:
                        print(f"    connection errors, e.g. {r['failures']}")
                alive = proc.poll() is None
                crashes += not alive
                memory[mode] = (rss_start, rss_mb(proc.pid) if alive else float("nan"), total)
            finally:
                proc.terminate()
                proc.wait(timeout=60)

    top = max(args.concurrency)
    server_errors = sum(n for r in results.values() for status, n in r["statuses"].items() if isinstance(status, int) and status >= 500)
    print()
    if ("on", top) in results and ("off", top) in results:
        print(f"images/s at concurrency {top}, micro-batching on vs off: {results['on', top]['ips']:.2f} vs {results['off', top]['ips']:.2f} "
              f"= {results['on', top]['ips'] / results['off', top]['ips']:.2f}x")  # fmt: skip
    for mode in ("on", "off"):
        if (mode, 1) in results:
            p50, p99 = results[mode, 1]["p50"], results[mode, 1]["p99"]
            print(f"concurrency 1, micro-batching {mode}: p50 {p50:.0f} ms, p99 {p99:.0f} ms vs the model alone {model_ms:.0f} ms: "
                  f"{p50 - model_ms:+.0f} / {p99 - model_ms:+.0f} ms of server (decoding, resizing, HTTP)")  # fmt: skip
    print(f"5xx responses: {server_errors}; crashes: {crashes}")
    for mode, (start_mb, end_mb, total) in memory.items():
        print(f"server RSS, micro-batching {mode}: {start_mb:.0f} MB after warm-up, {end_mb:.0f} MB after {total} requests ({end_mb - start_mb:+.0f} MB)")


if __name__ == "__main__":
    main()
