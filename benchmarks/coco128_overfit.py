"""Can plaindet-t fit real images? Train on N coco128 train images and evaluate on the same N.

    python benchmarks/coco128_overfit.py [--data ../shared/data/coco128/object_detection/config.yaml]
        [--images 16] [--epochs 60] [--image-size 512]

A sanity check of the whole pipeline on real photos (80 COCO classes, small and crowded objects):
a detector that cannot memorize 16 images has a bug. It prints the per-epoch metrics line and the
final AP50 on those images. It is a benchmark, not a test: it needs ../shared and minutes of CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(here.parent.parent / "shared/data/coco128/object_detection/config.yaml"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0, help="memorizing needs the backbone to move as fast as the rest")
    parser.add_argument("--out", default="runs/coco128-overfit")
    args = parser.parse_args()

    from plaindet.data import load_dataset
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    data = load_dataset(args.data, split="train")
    data.samples = data.samples[: args.images]
    print(f"{len(data)} images, {sum(len(s.boxes) for s in data)} boxes, {data.num_classes} classes")
    cfg = TrainConfig(
        model="plaindet-t",
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        warmup_steps=20,
        backbone_lr_mult=args.backbone_lr_mult,
        eval_every=max(1, args.epochs // 6),
        # Memorizing is the point: no augmentation, so every epoch shows the exact evaluation images.
        augment={"hflip": 0.0, "crop": 0.0, "zoom_out": 0.0, "jitter": 0.0},
    )
    start = time.time()
    best = train(cfg, datasets=(data, data))
    print(f"\nplaindet-t on {len(data)} coco128 train images, evaluated on the same images: "
          f"AP50 {best['AP50']:.3f}, AP {best['AP']:.3f} (epoch {best['epoch']}, {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
