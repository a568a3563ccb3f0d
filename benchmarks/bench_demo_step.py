"""Training steps per second of the demo's recipe, through the engine, against another checkout.

    python benchmarks/bench_demo_step.py [--steps 60] [--threads 2] [--against /path/to/other/checkout/src]

Runs ``plaindet demo``'s training run (plaindet-t from random weights, shapes at 256 px, batch 8,
bf16 autocast: :func:`plaindet.demo.demo_config`) for ``--steps`` optimizer steps through
:func:`plaindet.engine.train.train`, and times every step from the end of one to the end of the next:
the data loader's wait, forward, loss with matching, backward, clipping, AdamW and EMA, all of it.
The first ``--skip`` steps (warm-up, and any compilation) are reported apart. Each source tree runs
in a fresh child process on the same images, ``--against`` (e.g. a second checkout of an older
commit) first, then this one, so the two are measured in one run and compared as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(steps: int, threads: int, data: str, out: str, overrides: dict) -> dict:
    import dataclasses

    import torch

    torch.set_num_threads(threads)
    import logging

    logging.getLogger("plaindet").setLevel(logging.ERROR)
    import plaindet
    from plaindet.demo import DemoSettings, demo_config
    from plaindet.engine import train as engine

    stamps: list[float] = []
    original = engine._Run.optimizer_step

    def timed_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    engine._Run.optimizer_step = timed_step
    cfg = dataclasses.replace(demo_config(DemoSettings(), data, out), max_steps=steps, **overrides)
    start = time.perf_counter()
    engine.train(cfg)
    return {"source": str(Path(plaindet.__file__).parent.parent), "stamps": [s - start for s in stamps], "total": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10, help="first steps left out of the median (warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--against", type=Path, help="another checkout's src/ folder, measured in the same run")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="TrainConfig overrides for this tree's run")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, out, steps, overrides = args.child
        print(json.dumps(child(int(steps), args.threads, data, out, json.loads(overrides))))
        return

    from plaindet.data.shapes import ensure_shapes
    from plaindet.demo import DemoSettings

    s = DemoSettings()
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_shapes(Path(tmp) / "shapes", train=s.train_images, val=s.val_images, test=s.test_images)
        runs = []
        here = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        trees = ([(args.against, {})] if args.against else []) + [(Path(__file__).resolve().parent.parent / "src", here)]
        for i, (src, overrides) in enumerate(trees):
            env = {**os.environ, "PYTHONPATH": str(src)}
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(data), str(Path(tmp) / f"run{i}"), str(args.steps), json.dumps(overrides)]
            result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            runs.append((src, overrides, json.loads(result.stdout.strip().splitlines()[-1])))

    print(f"demo recipe (plaindet-t, 256 px, batch 8, bf16 autocast), {args.steps} steps, {args.threads} threads")
    print("| source | overrides | first step s | steps 2..{0} s | median s/step after {0} | steps/s | vs first row |".format(args.skip))
    print("|---|---|---|---|---|---|---|")
    base = None
    for src, overrides, r in runs:
        stamps = r["stamps"]
        deltas = [b - a for a, b in zip(stamps, stamps[1:])]
        median = statistics.median(deltas[args.skip - 1 :])
        base = base or median
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-"
        print(f"| {r['source']} | {label} | {stamps[0]:.1f} | {stamps[args.skip - 1] - stamps[0]:.1f} | {median:.3f} | {1 / median:.2f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
