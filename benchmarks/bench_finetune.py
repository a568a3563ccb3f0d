"""Finetuning a frozen backbone, measured (issue 17): each recipe on a target task with other classes
than the backbone's source task, same steps per row.

    python benchmarks/bench_finetune.py [--model plaindet-t] [--backbone-weights W] [--source-steps 400]
        [--source-images 1000] [--steps 150] [--sizes 50 200 1000] [--image-size 256] [--recipes all] [--out runs/bench_finetune]

Source: without ``--backbone-weights``, a detector trained from random weights for ``--source-steps``
steps on ``--source-images`` (1,000) built-in shapes images of the five kinds the target lacks (star, cross, ring,
hexagon, diamond); its backbone is the pretrained backbone below (with ``--backbone-weights``, e.g.
CLIP weights on a machine that has them, that file instead: recipes 3 and 5 then adapt a random
neck, and recipe 6 is skipped, as there is no source detector).

Target (``--target shapes``): the default shapes classes (circle, square, triangle), the first N
training images for each N in ``--sizes``, evaluated on the 200 test images. ``--target coco128``
(real photos, 80 classes, from ``--coco128``): its 128 images split in order into 64 train, 32
validation and 32 test images (a COCO copy with links to the images, in ``--out``); a shapes source
transfers little to photos, which is what those rows measure. ``--target PATH``: any dataset with
train, valid and test splits. Every recipe trains ``--steps`` steps (batch 8, bf16 autocast as the engine does by default,
``--image-size`` px, constant rate after warmup, EMA), at the learning rate the engine uses by
default:

1. ``random``: from random weights (the default without weights; the backbone trains at its 0.1 rate);
2. ``frozen``: the pretrained backbone frozen, a new neck and head trained;
   ``frozen-init``: the same from the source detector's neck and head (its class layer new): what
   recipes 3 and 5 start from, so 2 against 3 is LoRA against plain training, not a new neck
   against a pretrained one (with ``--backbone-weights`` it is recipe 2);
3. ``lora-neck``: the backbone frozen, the source detector's neck frozen with LoRA on it (rank 8),
   the head trained (its class layer new);
4. ``lora-backbone``: LoRA on the frozen backbone, a new neck and head trained;
5. ``lora-both``: LoRA on both (the source's neck under the neck adapters);
6. ``full``: the whole source detector trained, backbone included (the reference the founding
   note rules out).

Prints, per recipe and size: AP on the 50 validation images (the split a default is chosen on), test AP and AP50, trainable parameters, the size of ``last.safetensors``
(what a finetune stores; the frozen backbone lives once beside it), s/step and the peak resident
memory of the process so far.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

RECIPES = ("random", "frozen", "frozen-init", "lora-neck", "lora-backbone", "lora-both", "full")
SOURCE_CLASSES = "star,cross,ring,hexagon,diamond"


def recipe_settings(recipe: str, backbone: str | None, source_detector: str | None, rank: int) -> dict:
    """The TrainConfig fields of one recipe."""
    neck_from = {"init": source_detector} if source_detector else {}
    return {
        "random": {},
        "frozen": {"backbone_weights": backbone},
        "frozen-init": {"backbone_weights": backbone, **neck_from},
        "lora-neck": {"backbone_weights": backbone, **neck_from, "lora_rank": rank, "lora_targets": "neck"},
        "lora-backbone": {"backbone_weights": backbone, "lora_rank": rank, "lora_targets": "backbone"},
        "lora-both": {"backbone_weights": backbone, **neck_from, "lora_rank": rank, "lora_targets": "both"},
        # The whole source detector trains, its backbone at the backbone's rate (its backbone trained
        # before, so it trains here too; a backbone given as weights is always frozen).
        "full": {"init": source_detector},
    }[recipe]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-t")
    parser.add_argument("--backbone-weights", default=None)
    parser.add_argument("--source-steps", type=int, default=400)
    parser.add_argument("--source-images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--recipes", nargs="+", default=["all"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target", default="shapes", help="shapes, coco128, or a dataset with train/valid/test splits")
    parser.add_argument("--coco128", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/coco128/object_detection/config.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_finetune"))
    args = parser.parse_args()
    recipes = RECIPES if args.recipes == ["all"] else tuple(args.recipes)

    import torch

    from plaindet.data import load_dataset
    from plaindet.data.shapes import builtin_shapes
    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate_coco
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig
    from plaindet.models.factory import load_model

    torch.set_num_threads(args.threads)
    common = dict(model=args.model, image_size=args.image_size, batch_size=8, warmup_steps=20, min_lr_ratio=1.0, eval_every=0)

    source_detector = None
    backbone = args.backbone_weights
    if backbone is None:
        src_out = args.out / f"source-{args.model}"
        from plaindet.engine.train_state import TrainState

        done = (src_out / "last.safetensors").is_file() and TrainState(src_out / "last.safetensors").progress["step"] >= args.source_steps
        if not done:  # (a finished source of this budget is reused: rows can be added later)
            train(TrainConfig(data=f"shapes:classes={SOURCE_CLASSES}", shapes_train=args.source_images, shapes_val=50, shapes_test=0, shapes_dir=str(args.out / "shapes-source"),
                              out=str(src_out), epochs=1000, max_steps=args.source_steps, **common))  # fmt: skip
        source_detector = backbone = str(src_out / "last.safetensors")

    if args.target == "shapes":
        target = builtin_shapes(train=max(args.sizes), val=50, test=200, folder=args.out / "shapes-target")
    elif args.target == "coco128":
        target = _split_coco128(args.coco128, args.out / "coco128-split")
    else:
        target = Path(args.target)
    tag = "" if args.target == "shapes" else f"{target.name}-"
    valid, test = load_dataset(target, split="valid"), load_dataset(target, split="test")
    rows = []
    for n in args.sizes:
        for recipe in recipes:
            out = args.out / f"{args.model}-{tag}{recipe}-{n}"
            if recipe in ("full", "frozen-init") and source_detector is None:
                print(f"{recipe}: needs a source detector (not --backbone-weights); skipped", flush=True)
                continue
            settings = recipe_settings(recipe, backbone, source_detector, args.rank)
            start = time.time()
            train(TrainConfig(data=str(target), val_split="valid", out=str(out), epochs=1000, max_steps=args.steps, max_train_images=n, **common, **settings))
            seconds = time.time() - start
            model = load_model(out / "last.safetensors")
            stats = evaluate_coco(test, predict_dataset(model, test, image_size=args.image_size)).stats
            valid_ap = evaluate_coco(valid, predict_dataset(model, valid, image_size=args.image_size)).stats["AP"]
            rows.append(
                {
                    "recipe": recipe, "images": min(n, len(load_dataset(target, split="train"))), "valid_AP": valid_ap, "AP": stats["AP"], "AP50": stats["AP50"], "trainable": _trainable(out),
                    "ckpt_MB": (out / "last.safetensors").stat().st_size / 1e6, "s_step": seconds / args.steps,
                    "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.model} on {args.target}, {args.steps} steps per row, batch 8, {args.image_size} px; source: {args.backbone_weights or f'shapes {SOURCE_CLASSES}, {args.source_steps} steps'}")
    print("| recipe | images | valid AP | test AP | test AP50 | trainable | last.safetensors | s/step | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['recipe']} | {r['images']} | {r['valid_AP']:.3f} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['trainable'] / 1e6:.2f}M | {r['ckpt_MB']:.1f} MB | {r['s_step']:.2f} | {r['peak_MB']:.0f} MB |")


def _split_coco128(config: Path, folder: Path) -> Path:
    """coco128's 128 images in order as 64 train, 32 valid and 32 test images, a COCO copy linking them."""
    from plaindet.data import DetectionDataset, load_dataset
    from plaindet.data.convert import write_datasets

    if not folder.is_dir():
        data = load_dataset(config, split="train")
        if len(data.samples) != 128:
            raise SystemExit(f"{config}: expected coco128's 128 train images, found {len(data.samples)}")
        parts = {"train": data.samples[:64], "valid": data.samples[64:96], "test": data.samples[96:]}
        write_datasets([DetectionDataset(v, data.class_names, data.category_ids, root=data.root, split=k, format=data.format) for k, v in parts.items()], "coco", folder)
    return folder


def _trainable(out: Path) -> int:
    """Trainable parameters of a run: the optimizer's first moments, one per trained parameter."""
    from plaindet.engine.train_state import TrainState

    ckpt = TrainState(out / "last.safetensors")
    return sum(v.numel() for k, v in ckpt.tensors.items() if k.startswith("optim.") and k.endswith(".exp_avg"))


if __name__ == "__main__":
    main()
