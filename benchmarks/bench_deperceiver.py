"""DePerceiver against DETR: forward time and peak memory as the image grows.

    python benchmarks/bench_deperceiver.py [--sizes 512 800 1024] [--threads 2] [--repeats 3]
                                           [--device cpu|cuda] [--max-tokens 4096]

Two tables, batch 1, random weights (time and memory do not depend on the values):

1. **Full model** (ResNet-50, stride 32, as the registered ``detr-r50`` and ``deperceiver-r50``):
   forward time and peak memory.
2. **Encoder alone** on the feature tokens of stride 32, 16 and 8 (the ``downsample_factor`` a
   DePerceiver can read): DETR's 6-layer self-attention encoder (cost quadratic in the tokens)
   against the Perceiver IO encoder (256 latents, 6 latent blocks; cost linear in the tokens). DETR
   encoder runs with more than ``--max-tokens`` tokens are skipped (minutes on a CPU).

Each configuration runs in a fresh subprocess, so its memory high-water mark is its own. Memory on
CPU is the process's peak resident set (``VmHWM``, :func:`plaindet.export.benchmark.peak_rss_mb`:
``ru_maxrss`` would carry this script's own peak into the child) minus the resident set once the
model is built: what the forward pass adds. On CUDA it is ``torch.cuda.max_memory_allocated`` over the
forward, minus what was allocated before it. Time is the median of ``--repeats`` forwards after one
warm-up, inside ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(kind: str, name: str, size: int, stride: int, threads: int, repeats: int, device: str) -> dict:
    """One measurement in this (fresh) process; returns ms, peak and added MiB."""
    import torch

    from plaindet.export.benchmark import peak_rss_mb
    from plaindet.models.deperceiver import PerceiverEncoder
    from plaindet.models.detr import TransformerEncoder, sine_position_embedding
    from plaindet.models.factory import create_model

    logging.getLogger("plaindet").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if kind == "model":
        module = create_model(name, num_classes=80).eval().to(dev)
        inputs = (torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=dev),)
        tokens = (size // 32) ** 2
    else:
        d, tokens = 256, (size // stride) ** 2
        if name == "detr-encoder":
            module = TransformerEncoder(d, 8, 2048, 6, 0.0)
        else:
            module = PerceiverEncoder(d, 8, 2048, 256, 6, 0.0)
        module = module.eval().to(dev)
        pos = sine_position_embedding(size // stride, size // stride, d, dev)[None]
        inputs = (torch.randn(1, tokens, d, device=dev), pos)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            module(*inputs)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb()
    return {"ms": statistics.median(times) * 1000, "peak": peak, "added": peak - base, "tokens": tokens}


def run(args, kind: str, name: str, size: int, stride: int = 32) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, name, str(size), str(stride), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--device", args.device]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 800, 1024])
    parser.add_argument("--strides", nargs="+", type=int, default=[32, 16, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "NAME", "SIZE", "STRIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, name, size, stride = args.worker
        print(json.dumps(worker(kind, name, int(size), int(stride), args.threads, args.repeats, args.device)))
        return

    import torch

    mem = "peak RSS / added by forward" if args.device == "cpu" else "peak alloc / added by forward"
    print(f"batch 1, {args.device}, {args.threads} threads, torch {torch.__version__}; time: median of {args.repeats}; memory: {mem} (MiB)")
    print("\n1. Full model forward, ResNet-50, features at stride 32")
    header = f"{'size':>5} {'tokens':>7} | {'detr-r50':>9} {'memory':>13} | {'deperceiver-r50':>15} {'memory':>13}"
    print(header + "\n" + "-" * len(header))
    for size in args.sizes:
        a, b = run(args, "model", "detr-r50", size), run(args, "model", "deperceiver-r50", size)
        print(f"{size:>5} {a['tokens']:>7} | {a['ms']:>7.0f}ms {a['peak']:>6.0f} / {a['added']:>4.0f} | "
              f"{b['ms']:>13.0f}ms {b['peak']:>6.0f} / {b['added']:>4.0f}", flush=True)  # fmt: skip

    print("\n2. Encoder alone (hidden 256, FFN 2048, 6 layers; Perceiver: 256 latents)")
    header = f"{'size':>5} {'stride':>6} {'tokens':>7} | {'DETR encoder':>12} {'memory':>13} | {'Perceiver IO':>12} {'memory':>13} | {'time ratio':>10}"
    print(header + "\n" + "-" * len(header))
    for stride in args.strides:
        for size in args.sizes:
            tokens = (size // stride) ** 2
            b = run(args, "encoder", "perceiver", size, stride)
            if tokens <= args.max_tokens:
                a = run(args, "encoder", "detr-encoder", size, stride)
                detr = f"{a['ms']:>10.0f}ms {a['peak']:>6.0f} / {a['added']:>4.0f}"
                ratio = f"{a['ms'] / b['ms']:>9.1f}x"
            else:
                detr, ratio = f"{'skipped':>12} {'':>13}", f"{'':>10}"
            print(f"{size:>5} {stride:>6} {tokens:>7} | {detr} | {b['ms']:>10.0f}ms {b['peak']:>6.0f} / {b['added']:>4.0f} | {ratio}", flush=True)


if __name__ == "__main__":
    main()
