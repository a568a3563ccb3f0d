"""CPU inference latency of the plaindet variants, and how close each comes to this CPU's limit.

    python benchmarks/bench_latency.py [--size 640] [--threads 2] [--models plaindet-t plaindet-s plaindet-b] [--compare] [--compile]
        [--bf16 auto|on|off]

One process, one run: first torch's own matrix-multiply peak on this machine with the same threads
(fp32 and bf16, :func:`plaindet.export.benchmark.matmul_peak`; measured again after each row, whose
share is of the higher of the peaks just before and after it, since a shared VM's speed drifts), then for each model its parameters
(counted as ``plaindet models`` counts them, training-only auxiliary head included), its GFLOPs
per image (:func:`plaindet.flops.flop_counter`, 2 per multiply-add, attention included), and its
median and p90 latency at batch 1 (forward + top-k post-processing, no NMS), fp32 and bf16
autocast, with the GFLOP/s achieved and their share of the peak of that precision. ``--compare``
adds transformers' YOLOS-tiny and RT-DETR-R18 (random init from their configs, same input, same
threads; their forward only, on float pixels). ``--compile`` adds each plaindet model once more
through ``torch.compile`` (compiled at the warm-up calls, which are not timed; the same FLOPs).
Random weights do not change the cost.

bf16 is measured only where this CPU multiplies bf16 natively (AVX512-BF16 or AMX;
``--bf16 auto``, the default): elsewhere it is emulated at a few GFLOP/s, a single model takes many
minutes and its share of a 1 GFLOP/s "peak" means nothing, so the bf16 columns say "emulated" and the
fp32 rows (the peers' included) are done in minutes. ``--bf16 on`` measures it all the same.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch


def measure(call, dtype: torch.dtype | None, repeats: int, warmup: int) -> list[float]:
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(warmup + repeats):
            t = time.perf_counter()
            call()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["plaindet-t", "plaindet-s", "plaindet-b"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="add transformers' YOLOS-tiny and RT-DETR-R18")
    parser.add_argument("--compile", action="store_true", help="add each plaindet model through torch.compile")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="auto: only where the CPU multiplies bf16 natively")
    args = parser.parse_args()

    import plaindet
    from plaindet.engine.train import native_bf16
    from plaindet.export.benchmark import matmul_peak, reference_model
    from plaindet.flops import flop_counter
    from plaindet.models.factory import count_parameters

    logging.getLogger("plaindet").setLevel(logging.ERROR)  # random-weight warnings are expected here
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak(args.threads)
    print(f"CPU latency, batch 1, {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}")
    print(f"matmul peak at the start of this run: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; GFLOPs: 2 per multiply-add")
    print("each row's share is of the higher of the peaks measured just before and just after it")
    native = native_bf16(torch.device("cpu"))
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if args.bf16 == "on" or (args.bf16 == "auto" and native) else [])
    if len(precisions) == 1:
        why = "--bf16 off" if args.bf16 == "off" else "this CPU has no native bf16 (no AVX512-BF16 or AMX): emulated, not measured (--bf16 on to measure it)"
        print(f"bf16: {why}")
    print("| model | params | GFLOPs | fp32 median ms | p90 | GFLOP/s | of fp32 peak | bf16 median ms | p90 | GFLOP/s | of bf16 peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    entries = [(name, None) for name in args.models] + ([(f"{name} (torch.compile)", "compile") for name in args.models] if args.compile else [])
    if args.compare:
        entries += [("YOLOS-tiny (transformers)", "yolos-tiny"), ("RT-DETR-R18 (transformers)", "rtdetr-r18")]
    latency = {}
    for label, ref in entries:
        if ref in (None, "compile"):
            model = plaindet.create_model(label.split(" ")[0], num_classes=80).eval()
            params = count_parameters(model.config)
            x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8)
            forward = torch.compile(model) if ref == "compile" else model

            def call(model=model, forward=forward, x=x):
                return model.postprocess(forward(x))

            def counted(model=model, x=x):  # the eager graph: the same arithmetic, without compiling under the counter
                return model.postprocess(model(x))
        else:
            model = reference_model(ref)
            params = sum(p.numel() for p in model.parameters())
            x = torch.randn(1, 3, args.size, args.size)

            def call(model=model, x=x):
                return model(pixel_values=x)

            counted = call

        model.requires_grad_(False)  # inference only; the counter's module hooks would track autograd otherwise
        with torch.inference_mode(), flop_counter() as counter:
            counted()
        gflops = counter.get_total_flops() / 1e9
        row = [label, f"{params / 1e6:.1f}M", f"{gflops:.1f}"]
        for precision, dtype in precisions:
            t = measure(call, dtype, args.repeats, args.warmup)
            # A shared VM's speed drifts (this 2-core one gave 72 to 137 GFLOP/s from run to run): each
            # row's share is of the higher of the peaks measured just before and just after it.
            after = matmul_peak(args.threads, precisions=(precision,))[precision]
            row_peak, peak[precision] = max(peak[precision], after), after
            median, p90 = statistics.median(t), t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
            latency[(label, precision)] = median
            achieved = gflops / median
            row += [f"{median * 1000:.0f}", f"{p90 * 1000:.0f}", f"{achieved:.0f}", f"{100 * achieved / row_peak:.0f}%"]
        row += ["emulated", "", "", ""] * (2 - len(precisions))
        print("| " + " | ".join(row) + " |", flush=True)
    if args.compare:
        print("\n| latency ratio (model / peer, same precision) | " + " | ".join(f"{p} vs {lab}" for lab, r in entries if r and r != "compile" for p, _ in precisions) + " |")
        print("|---|" + "---|" * (len(precisions) * sum(1 for _, r in entries if r and r != "compile")))
        for name in [lab for lab, r in entries if r in (None, "compile")]:
            ratios = [f"{latency[(name, p)] / latency[(lab, p)]:.2f}x" for lab, r in entries if r and r != "compile" for p, _ in precisions]
            print(f"| {name} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
