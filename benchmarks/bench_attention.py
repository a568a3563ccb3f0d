"""Attention kernels on this CPU, at the shapes the plaindet ViTs run: which path is fastest for each.

    python benchmarks/bench_attention.py [--threads 2] [--size 640] [--repeats 20] [--window 14] [--batch 1] [--train]

For each ViT width (Ti: 3 heads, S: 6, B: 12; head dim 64) at ``--size`` px, two shapes: a global
block (all ``(size/16)^2 + 1`` tokens) and a window block (windows of 14x14 patches plus the class
token, every window of the padded grid in one batch), for ``--batch`` images. Each shape is timed,
fp32 and bf16, forward only or, with ``--train``, forward and backward (the gradients of q, k and v),
through

- ``sdpa``: ``F.scaled_dot_product_attention`` (on CPU, its flash-attention kernel);
- ``matmul``: :func:`plaindet.models.layers.matmul_attention`, the path plaindet takes in CPU
  training: two batched matrix products with float32 scores and softmax.

Prints the median time, the attention's GFLOPs (2 per multiply-add: ``4 L^2 d`` per head) and the
GFLOP/s achieved, and the machine's matmul peak measured in the same run, for comparison.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--window", type=int, default=14)
    parser.add_argument("--batch", type=int, default=1, help="images")
    parser.add_argument("--train", action="store_true", help="time forward + backward")
    parser.add_argument("--models", nargs="+", default=["Ti", "S", "B"])
    args = parser.parse_args()

    from plaindet.export.benchmark import matmul_peak, time_calls
    from plaindet.models.layers import matmul_attention

    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.threads)
    grid = args.size // 16
    windows = math.ceil(grid / args.window) ** 2
    print(f"{args.size} px ({grid}x{grid} patches), {args.threads} threads; matmul peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"{'model':<6} {'block':<7} {'batch x heads x L':<20} {'dtype':<5} {'path':<7} {'ms':>8} {'GFLOPs':>7} {'GFLOP/s':>8}")
    mode = "forward + backward" if args.train else "forward"
    print(f"{mode}, batch {args.batch}; GFLOPs of the forward: 4 L^2 d per head (the backward is about twice that)")
    heads_of = {"Ti": 3, "S": 6, "B": 12}
    for name in args.models:
        heads = heads_of[name]
        for block, n, length in (("global", args.batch, grid * grid + 1), ("window", args.batch * windows, args.window**2 + 1)):
            flops = 4 * n * heads * length * length * 64 * (3 if args.train else 1)
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = (torch.randn(n, heads, length, 64, dtype=dtype, requires_grad=args.train) for _ in range(3))
                grad = torch.randn(n, heads, length, 64, dtype=dtype)
                for path, fn in (("sdpa", F.scaled_dot_product_attention), ("matmul", matmul_attention)):
                    if args.train:
                        def call(fn=fn):
                            fn(q, k, v).backward(grad)
                    else:
                        def call(fn=fn):
                            with torch.inference_mode():
                                fn(q, k, v)
                    seconds = statistics.median(time_calls(call, args.repeats, warmup=3))
                    label = "fp32" if dtype == torch.float32 else "bf16"
                    print(
                        f"{name:<6} {block:<7} {f'{n} x {heads} x {length}':<20} {label:<5} {path:<7} "
                        f"{seconds * 1e3:>8.2f} {flops / 1e9:>7.2f} {flops / seconds / 1e9:>8.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
