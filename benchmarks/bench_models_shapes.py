"""Every detector family on the shapes set with the same engine and the same CPU budget.

    python benchmarks/bench_models_shapes.py [--minutes 4] [--size 256] [--models plaindet-t detr-r18 ... | all]

Each model trains from random weights (nothing can be downloaded here) on 1,500 shapes images for
``--minutes`` of wall time (``TrainConfig.time_limit``), batch 8, constant learning rate after
warmup with EMA weights, one after another in this process; then its final weights are evaluated
on the 200 images of the test split (the validation split is the one settings are chosen on).
Prints a markdown table of test AP, steps done and the measured training time per step (the
run's training wall time, data loading included and the final evaluation not, over its steps).
The learning rate is each family's usual one (DETR-style set-prediction models use 1e-4, the dense
plaindet head 1e-3).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
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

    from plaindet.data.shapes import builtin_shapes
    from plaindet.engine.evaluate import evaluate
    from plaindet.engine.train import load_splits, train
    from plaindet.engine.train_config import TrainConfig

    base = TrainConfig(
        data="shapes", shapes_train=1500, shapes_val=200, shapes_test=200, image_size=args.size, batch_size=8, epochs=100,
        warmup_steps=50, min_lr_ratio=1.0, ema_decay=0.998, eval_every=1000, time_limit=args.minutes,
        augment={"crop": 0.0, "zoom_out": 0.0},
    )  # fmt: skip
    datasets = load_splits(base)
    folder = builtin_shapes(train=base.shapes_train, val=base.shapes_val, test=base.shapes_test, seed=base.seed)
    if args.models == ["all"]:
        from plaindet.models.factory import list_models

        args.models = list_models()
    rows = []
    for name in args.models:
        cfg = dataclasses.replace(base, model=name, lr=LR[name.rsplit("-", 1)[0]], out=str(args.out / name))
        last = train(cfg, datasets=datasets)  # eval_every > epochs: only the final epoch is evaluated, so this is it
        test = evaluate(folder, "test", weights=Path(cfg.out) / "best.safetensors", image_size=args.size).metrics.stats
        rows.append((name, cfg.lr, last["step"], last["time"] / max(last["step"], 1), test))
        print(f"{name}: {last['step']} steps, test AP {test['AP']:.3f}", flush=True)

    print(f"\nshapes set, {args.size} px, batch 8, {args.minutes:g} min of training each, {args.threads} threads; the 200 test images")
    print("| model | lr | steps | s/step | AP | AP50 | AP75 |")
    print("|---|---|---|---|---|---|---|")
    for name, lr, steps, step_s, m in rows:
        print(f"| {name} | {lr:g} | {steps} | {step_s:.2f} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} |")


if __name__ == "__main__":
    main()
