"""Can a detector fit real images? Train on N coco128 train images and evaluate on the same N.

    python benchmarks/coco128_overfit.py [--model plaindet-t] [--images 16] [--epochs 100]
        [--image-size 512] [--target 0.9] [--set FIELD=JSON ...]
        [--data ../shared/data/coco128/object_detection/config.yaml] [--diagnose WEIGHTS]

A sanity check of the whole pipeline on real photos (80 COCO classes, small and crowded objects):
a detector that cannot memorize 16 images has a bug, or a recipe that does not learn. It prints
the per-epoch metrics line, the wall time at which AP50 on those images first reached ``--target``
and the best AP50. ``--set`` overrides a model-config field (``--set loss.classification='"focal"'``)
to compare options. The learning rate defaults to each family's usual one. It is a benchmark, not
a test: it needs ../shared and minutes of CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

LR = {"plaindet": 1e-3, "detr": 1e-4, "deperceiver": 1e-4, "patchtok": 3e-4}  # per family, as bench_models_shapes


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-t")
    parser.add_argument("--data", default=str(here.parent.parent / "shared/data/coco128/object_detection/config.yaml"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None, help="default: the family's usual rate")
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0, help="memorizing needs the backbone to move as fast as the rest")
    parser.add_argument("--eval-every", type=int, default=None, help="epochs between evaluations (default: epochs / 10)")
    parser.add_argument("--target", type=float, default=0.9, help="report when AP50 first reaches this")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a model-config override")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--diagnose", default=None, metavar="WEIGHTS", help="only print the diagnosis of this checkpoint (no training)")
    args = parser.parse_args()

    from plaindet.data import load_dataset
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, split="train")
    data.samples = data.samples[: args.images]
    print(f"{len(data)} images, {sum(len(s.boxes) for s in data)} boxes, {data.num_classes} classes")
    if args.diagnose:
        print(diagnose(Path(args.diagnose), data, args.image_size))
        return
    from bench_models_shapes import parse_sets  # the one --set parser of the benchmarks

    overrides = parse_sets(args.set)
    lr = args.lr if args.lr is not None else LR[args.model.rsplit("-", 1)[0]]
    cfg = TrainConfig(
        model=args.model,
        model_overrides=overrides,
        data=args.data,
        out=args.out or f"runs/coco128-overfit/{args.model}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=lr,
        image_size=args.image_size,
        warmup_steps=20,
        backbone_lr_mult=args.backbone_lr_mult,
        eval_every=args.eval_every or max(1, args.epochs // 10),
        # Memorizing is the point: no augmentation, so every epoch shows the exact evaluation images.
        augment={"hflip": 0.0, "crop": 0.0, "zoom_out": 0.0, "jitter": 0.0},
    )
    reached: list[dict] = []

    def on_epoch(record: dict) -> None:
        if not reached and record.get("AP50", -1.0) >= args.target:
            reached.append(dict(record))

    start = time.time()
    best = train(cfg, on_epoch, datasets=(data, data))
    when = f"AP50 >= {args.target:g} at epoch {reached[0]['epoch']}, {reached[0]['time']:.0f} s" if reached else f"AP50 never reached {args.target:g}"
    print(f"\n{args.model} (lr {lr:g}{', ' + ', '.join(args.set) if args.set else ''}) on {len(data)} coco128 train images, "
          f"evaluated on the same images: {when}; best AP50 {best['AP50']:.3f}, AP {best['AP']:.3f} "
          f"(epoch {best['epoch']}), {time.time() - start:.0f} s in all")
    print(diagnose(Path(cfg.out) / "best.safetensors", data, args.image_size))


def diagnose(weights: Path, data, image_size: int) -> str:
    """Where the best checkpoint's errors are: of each image's top ``n`` detections (``n`` = its
    labels), how many find a label (same class, IoU >= 0.5, each label once), and what the others
    are: a duplicate of a found object (same class), a wrong class on a label, a loose box (IoU 0.1
    to 0.5 with a label) or background.

    For a set-prediction model whose decoder starts from its dense head's boxes (``query_selection``),
    the same count for the dense head alone (its scores and boxes, greedy class-wise NMS at IoU 0.5):
    when the dense head finds far more than the decoder, the decoder's ranking is what fails."""
    import numpy as np

    import plaindet
    from plaindet.data.images import image_size as read_image_size

    model = plaindet.load(weights, device="cpu")
    dense_head = getattr(model, "dense_head", None) if getattr(model.config, "query_selection", False) else None
    captured: dict = {}
    if dense_head is not None:
        dense_head.register_forward_hook(lambda module, args, out: captured.update(out))
    counts = {"decoder": np.zeros(5, dtype=int), "dense": np.zeros(5, dtype=int)}  # found, duplicate, wrong, loose, background
    total = 0
    for sample in data.samples:
        det = model.predict(str(sample.image_path), threshold=0.0, image_size=image_size)
        gt_boxes = torch.as_tensor(sample.boxes, dtype=torch.float32)
        gt_labels = torch.as_tensor(sample.labels)
        total += len(sample.boxes)
        counts["decoder"] += _count(gt_boxes, gt_labels, torch.as_tensor(det.boxes, dtype=torch.float32).reshape(-1, 4), torch.as_tensor(det.labels), torch.as_tensor(det.scores))
        if dense_head is not None:
            width, height = read_image_size(sample.image_path)
            scale = max(width, height) / image_size  # predict resizes the long side and pads bottom/right
            scores, labels = captured["logits"][0].float().sigmoid().max(-1)
            boxes = captured["boxes"][0].float() * scale
            keep = _class_nms(boxes, scores, labels)
            counts["dense"] += _count(gt_boxes, gt_labels, boxes[keep], labels[keep], scores[keep])
    lines = []
    for name, (found, dup, wrong, loose, background) in counts.items():
        if name == "dense" and dense_head is None:
            continue
        what = "each image's top n detections (n = its labels)" if name == "decoder" else "the dense head alone (class-wise NMS at 0.5), its top n"
        lines.append(f"diagnosis, {what}: find {found} of {total} labels; the other {total - found}: {dup} duplicates of a found object, {wrong} wrong class, {loose} loose boxes (IoU 0.1-0.5 with a label), {background} background")
    return "\n".join(lines)


def _count(gt_boxes, gt_labels, boxes, labels, scores) -> "np.ndarray":
    """``[found, duplicate, wrong class, loose, background]`` among the top ``len(gt_boxes)`` of
    ``boxes``: loose overlaps a label by IoU 0.1 to 0.5, background by less."""
    import numpy as np

    from plaindet.ops.boxes import box_iou

    order = scores.argsort(descending=True)[: len(gt_boxes)]
    iou = box_iou(gt_boxes, boxes)
    used: set[int] = set()
    out = np.zeros(5, dtype=int)
    for j in order.tolist():
        over = iou[:, j] >= 0.5
        same = over & (gt_labels == labels[j])
        free = [k for k in same.nonzero().flatten().tolist() if k not in used]
        if free:
            used.add(max(free, key=lambda k: iou[k, j].item()))
        else:
            out[1 if same.any() else 2 if over.any() else 3 if (iou[:, j] >= 0.1).any() else 4] += 1
    out[0] = len(used)
    return out


def _class_nms(boxes, scores, labels, iou: float = 0.5, candidates: int = 300):
    """Greedy class-wise NMS over the ``candidates`` best-scored locations; kept indices, best first."""
    from plaindet.ops.boxes import box_iou

    order = scores.argsort(descending=True)[:candidates]
    overlaps = box_iou(boxes[order], boxes[order]) * (labels[order][:, None] == labels[order][None, :])
    kept: list[int] = []
    for pos in range(len(order)):
        if all(overlaps[pos, k] < iou for k in kept):
            kept.append(pos)
    return order[kept]


if __name__ == "__main__":
    main()
