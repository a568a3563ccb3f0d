"""Distillation on the shapes set: a student trained with a teacher against the same student without,
at the same budget (same optimizer steps, batch size and image size).

    python benchmarks/bench_distill.py [--labeled 300] [--unlabeled 1200] [--teacher-steps 1200] [--student-steps 500]

1. The teacher (``--teacher``, default plaindet-s) trains on the labeled images only.
2. Student A (``--student``, default plaindet-t) trains on the labeled images only.
3. Student B, same model and steps, trains on the labeled images (ground truth plus the teacher's
   extra boxes) and the unlabeled images labeled by the teacher (``plaindet distill``'s recipe).
All three are evaluated on the same 200 images of the test split, which no setting was chosen on. Prints
a table of test AP and the optimizer steps each run did; every run is from random
weights (nothing can be downloaded here), so absolute APs are low; the comparison is the point.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="plaindet-s")
    ap.add_argument("--student", default="plaindet-t")
    ap.add_argument("--labeled", type=int, default=300)
    ap.add_argument("--unlabeled", type=int, default=1200)
    ap.add_argument("--teacher-steps", type=int, default=1200)
    ap.add_argument("--student-steps", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.35)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_distill"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.data.shapes import builtin_shapes
    from plaindet.engine.distill import DistillConfig, distill_datasets
    from plaindet.engine.evaluate import evaluate
    from plaindet.engine.train import load_splits, train
    from plaindet.engine.train_config import TrainConfig
    from plaindet.models.factory import load_model

    base = TrainConfig(
        data="shapes", shapes_train=args.labeled + args.unlabeled, shapes_val=200, shapes_test=200, image_size=args.image_size, batch_size=args.batch,
        lr=1e-3, warmup_steps=50, min_lr_ratio=1.0, ema_decay=0.998, eval_every=1000, epochs=1000,
        augment={"crop": 0.0, "zoom_out": 0.0},
    )  # fmt: skip
    full, val = load_splits(base)
    folder = builtin_shapes(train=base.shapes_train, val=base.shapes_val, test=base.shapes_test, seed=base.seed)
    labeled = copy.copy(full)
    labeled.samples = full.samples[: args.labeled]

    def run(name: str, model: str, steps: int, train_set) -> tuple[int, dict, float]:
        """Train for ``steps``; returns the steps done, the test split's metrics and the wall time."""
        cfg = dataclasses.replace(base, model=model, max_steps=steps, out=str(args.out / name))
        t = time.time()
        last = train(cfg, datasets=(train_set, val))  # only the final epoch is evaluated, on val
        elapsed = time.time() - t
        test = evaluate(folder, "test", weights=Path(cfg.out) / "best.safetensors", image_size=args.image_size).metrics.stats
        return last["step"], test, elapsed

    rows = []
    steps, teacher_test, t_teacher = run("teacher", args.teacher, args.teacher_steps, labeled)
    rows.append((f"teacher {args.teacher}", f"{args.labeled} labeled", steps, teacher_test, t_teacher))
    steps, plain, t_plain = run("student_plain", args.student, args.student_steps, labeled)
    rows.append((f"student {args.student}", f"{args.labeled} labeled", steps, plain, t_plain))

    teacher = load_model(args.out / "teacher" / "best.safetensors")
    dcfg = DistillConfig(teacher=str(args.out / "teacher" / "best.safetensors"), unlabeled_from_train=args.unlabeled, threshold=args.threshold)
    t = time.time()
    mixed = distill_datasets(dcfg, full, teacher)
    t_label = time.time() - t
    steps, distilled, t_dist = run("student_distilled", args.student, args.student_steps, mixed)
    rows.append((f"student {args.student} + teacher", f"{args.labeled} labeled + {args.unlabeled} teacher-labeled", steps, distilled, t_dist + t_label))

    print(f"\nshapes, {args.image_size} px, batch {args.batch}, {args.threads} threads; AP on the 200 test images; steps: optimizer steps done")
    print("| model | training images | steps | AP | AP50 | AP75 | time |")
    print("|---|---|---|---|---|---|---|")
    for name, data, steps, m, secs in rows:
        print(f"| {name} | {data} | {steps} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {secs / 60:.1f} min |")
    print(f"\nstudent test AP with the teacher minus without: {distilled['AP'] - plain['AP']:+.3f}")


if __name__ == "__main__":
    main()
