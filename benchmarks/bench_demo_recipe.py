"""The demo's recipe on the validation split: where :class:`plaindet.demo.DemoSettings` are chosen.

    python benchmarks/bench_demo_recipe.py [--minutes 8] [--threads 2] [--set batch_size=4 ...] [--seed 0]

Trains ``plaindet demo``'s run (:func:`plaindet.demo.demo_config`: plaindet-t from random weights on
the demo's 1,500 shapes images) for ``--minutes`` of training (``TrainConfig.time_limit``; 0: the
settings' epochs), then evaluates the saved model on the 200 ``valid`` images at the settings'
``eval_size``, as the demo evaluates the ``test`` images, and the share of the training steps' wall
time the model spent waiting for batches (the data pipeline's idle time for the model). ``--set`` changes a ``DemoSettings`` field
(a JSON value), so two recipes are compared at the same wall-clock budget, one run each. The
``test`` split is never read here: the demo reports it, and no setting is chosen on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget (0: the settings' epochs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a DemoSettings field")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.data import load_dataset
    from plaindet.data.shapes import ensure_shapes
    from plaindet.demo import DemoSettings, demo_config
    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate_coco
    from plaindet.engine.logs import run_data_wait
    from plaindet.engine.train import train
    from plaindet.models.factory import load_model

    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    s = dataclasses.replace(DemoSettings(), **changes)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data = ensure_shapes(root / "data", train=s.train_images, val=s.val_images, test=s.test_images, seed=args.seed)
        torch.manual_seed(args.seed)
        record: dict = {}  # the last epoch's (train returns the best one's)
        train(demo_config(s, data, root / "run", args.seed, time_limit=args.minutes), record.update)
        valid = load_dataset(data, split="valid")
        model = load_model(root / "run" / "best.safetensors")
        stats = evaluate_coco(valid, predict_dataset(model, valid)).stats
        waited = run_data_wait(root / "run")  # the model idle, waiting for batches
    label = ", ".join(args.set) or "the demo's settings"
    print(
        f"{label}: {record['step']} steps in {record['time'] / 60:.1f} min ({args.threads} threads); valid AP {stats['AP']:.3f}, "
        f"AP50 {stats['AP50']:.3f}, AP75 {stats['AP75']:.3f}, APs {stats['APs']:.3f}, APm {stats['APm']:.3f}, APl {stats['APl']:.3f} "
        f"at {s.eval_size} px; {100 * waited:.1f}% of the step time waiting for data"
    )


if __name__ == "__main__":
    main()
