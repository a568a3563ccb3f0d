"""CPU inference latency of the plaindet variants (forward + top-k post-processing, no NMS).

    python benchmarks/bench_latency.py [--size 640] [--threads 2] [--models plaindet-t plaindet-s plaindet-b]

Prints a table: parameters (counted as ``plaindet models`` counts them, training-only auxiliary head
included), then median and p90 latency per image at batch 1, fp32 and bf16 autocast. The models
have random weights: latency does not depend on the weight values. Each model runs its warm-up
first; the machine is noisy, so compare numbers from the same run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch


def measure(model, x: torch.Tensor, dtype: torch.dtype | None, repeats: int, warmup: int) -> list[float]:
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(warmup + repeats):
            t = time.perf_counter()
            model.postprocess(model(x))
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["plaindet-t", "plaindet-s", "plaindet-b"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import plaindet
    from plaindet.models.factory import count_parameters

    logging.getLogger("plaindet").setLevel(logging.ERROR)  # random-weight warnings are expected here
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8)
    print(f"CPU latency, batch 1, {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'model':<12} {'params':>8} {'fp32 median':>12} {'fp32 p90':>10} {'bf16 median':>12} {'bf16 p90':>10}")
    for name in args.models:
        model = plaindet.create_model(name, num_classes=80).eval()
        params = count_parameters(model.config) / 1e6
        row = [f"{name:<12}", f"{params:>7.1f}M"]
        for dtype in (None, torch.bfloat16):
            t = sorted(measure(model, x, dtype, args.repeats, args.warmup))
            p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
            row += [f"{statistics.median(t) * 1000:>10.0f}ms", f"{p90 * 1000:>8.0f}ms"]
        print(" ".join(row), flush=True)


if __name__ == "__main__":
    main()
