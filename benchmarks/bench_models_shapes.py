"""Every detector family on the shapes set with the same engine and the same CPU budget.

    python benchmarks/bench_models_shapes.py [--minutes 4] [--size 256] [--models plaindet-t detr-r18 ... | all]

Each model trains from random weights (nothing can be downloaded here) on 1,500 shapes images for
``--minutes`` of wall time (``TrainConfig.time_limit``), batch 8, constant learning rate after
warmup with EMA weights, one after another in this process; then it is evaluated on the same 200
held-out images. Prints a markdown table of held-out AP, steps done and time per step. The learning
rate is each family's usual one (DETR-style set-prediction models use 1e-4, the dense plaindet head
1e-3).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

LR = {"plaindet": 1e-3, "detr": 1e-4, "deperceiver": 1e-4, "patchtok": 3e-4}  # per family
SMALL = ["plaindet-t", "detr-r18", "deperceiver-r18", "patchtok-ti"]  # the default: one per family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=SMALL, help="registered names, or all")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_models"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.engine.train import TrainConfig, load_splits, train

    base = TrainConfig(
        data="shapes", shapes_train=1500, shapes_val=200, image_size=args.size, batch_size=8, epochs=100,
        warmup_steps=50, min_lr_ratio=1.0, ema_decay=0.998, eval_every=1000, time_limit=args.minutes,
        augment={"crop": 0.0, "zoom_out": 0.0},
    )  # fmt: skip
    datasets = load_splits(base)
    if args.models == ["all"]:
        import plaindet

        args.models = plaindet.list_models()
    rows = []
    for name in args.models:
        cfg = dataclasses.replace(base, model=name, lr=LR[name.rsplit("-", 1)[0]], out=str(args.out / name))
        t = time.time()
        best = train(cfg, datasets=datasets)
        rows.append((name, cfg.lr, best, time.time() - t))
        print(f"{name}: AP {best.get('AP', float('nan')):.3f}", flush=True)

    print(f"\nshapes set, {args.size} px, batch 8, {args.minutes:g} min of training each, {args.threads} threads; 200 held-out images")
    print("| model | lr | steps | s/step | AP | AP50 | AP75 |")
    print("|---|---|---|---|---|---|---|")
    for name, lr, m, secs in rows:
        steps = m.get("step", 0)
        print(f"| {name} | {lr:g} | {steps} | {60 * args.minutes / max(steps, 1):.2f} | {m.get('AP', float('nan')):.3f} | {m.get('AP50', float('nan')):.3f} | {m.get('AP75', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
