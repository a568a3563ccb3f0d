"""Training throughput and peak memory of the engine's step on this CPU.

    python benchmarks/bench_train.py [--models plaindet-t plaindet-s] [--size 640] [--batch 2] [--threads 2]

One full optimizer step as the engine runs it (autocast forward, loss with matching, backward,
gradient clipping, AdamW step, EMA update) on batches of random 640x640 images with 5 random boxes
each, backbone trainable (as when built without pretrained weights) and frozen (as with CLIP
weights). Each configuration runs in a fresh child process, so its peak resident memory
(``VmHWM``, :func:`plaindet.export.benchmark.peak_rss_mb`) is its own. Prints images per second and peak memory, fp32 against bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(model_name: str, amp: str, size: int, batch: int, threads: int, steps: int, frozen: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from plaindet.engine.ema import ModelEMA
    from plaindet.engine.train import param_groups
    from plaindet.engine.train_config import TrainConfig
    from plaindet.export.benchmark import peak_rss_mb
    from plaindet.models.factory import create_model

    model = create_model(model_name, num_classes=80, image_size=size)
    if frozen:
        model.set_backbone_trainable(False)
    model.train()
    criterion = model.criterion()
    optimizer = torch.optim.AdamW(param_groups(model, TrainConfig()), lr=1e-4)
    ema = ModelEMA(model, 0.998)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(5, 2, generator=g) * size * 0.25
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 80, (5,), generator=g), "size": torch.tensor([size, size])})
    dtype = torch.bfloat16 if amp == "bf16" else None
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images, targets)
        loss = criterion(outputs, targets)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    from plaindet.flops import flop_counter

    with flop_counter() as counter:  # one more forward and backward, counted, not timed
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images, targets)
        criterion(outputs, targets)["loss"].backward()
    return {"img_s": batch / median, "step_s": median, "peak_mb": peak_rss_mb(), "gflops": counter.get_total_flops() / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["plaindet-t", "plaindet-s"])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak:
        from plaindet.export.benchmark import matmul_peak

        print(json.dumps(matmul_peak(args.threads)))
        return
    if args.child:
        name, amp, size, batch, threads, steps, frozen = args.child
        print(json.dumps(child(name, amp, int(size), int(batch), int(threads), int(steps), frozen == "1")))
        return

    def run(cmd: list[str]) -> dict:
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])

    peak = run([sys.executable, __file__, "--peak", "--threads", str(args.threads)])
    print(f"training step at {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, median of {args.steps} steps")
    print(f"matmul peak in this run: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; GFLOPs: 2 per multiply-add, forward and backward")
    print(f"{'model':<12} {'backbone':<10} {'amp':<5} {'img/s':>7} {'s/step':>7} {'peak MB':>8} {'bf16 speed-up':>14} {'GFLOPs':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for name in args.models:
        for frozen in (False, True):
            fp32 = None
            for amp in ("off", "bf16"):
                cmd = [sys.executable, __file__, "--child", name, amp, str(args.size), str(args.batch), str(args.threads), str(args.steps), "1" if frozen else "0"]
                r = run(cmd)
                ratio = "" if fp32 is None else f"{r['img_s'] / fp32['img_s']:.2f}x"
                fp32 = fp32 or r
                label = "frozen" if frozen else "trainable"
                precision = "fp32" if amp == "off" else "bf16"
                achieved = r["gflops"] / r["step_s"]
                print(
                    f"{name:<12} {label:<10} {precision:<5} {r['img_s']:>7.2f} {r['step_s']:>7.2f} {r['peak_mb']:>8.0f} {ratio:>14} "
                    f"{r['gflops']:>7.1f} {achieved:>8.1f} {100 * achieved / peak[precision]:>7.0f}%",
                    flush=True,
                )


if __name__ == "__main__":
    main()
