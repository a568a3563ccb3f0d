"""Time COCO box evaluation on a synthetic COCO-sized validation set.

    python benchmarks/bench_eval.py                 # plaindet (faster-coco-eval) only
    python benchmarks/bench_eval.py --pycocotools   # also the pycocotools path, same data, same process

The data: ``--images`` images of 640x480 (default 5,000, like COCO val2017), about 7 boxes per image
over 80 classes, and about 20 predictions per image: jittered copies of most boxes with random scores
plus random false positives. Each timing is end to end, as a user calls it: build the ground truth
from the DetectionDataset, validate the results, evaluate, accumulate, summarize.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from plaindet.data.sample import DetectionDataset, Sample
from plaindet.data.coco import coco_dict
from plaindet.engine.evaluate import coco_results, evaluate_coco


def synthesize(num_images: int, num_classes: int, seed: int) -> tuple[DetectionDataset, list[dict]]:
    rng = np.random.default_rng(seed)
    category_ids = list(range(1, num_classes + 1))
    samples, predictions = [], []
    for image_id in range(1, num_images + 1):
        n = rng.poisson(7)
        wh = np.exp(rng.uniform(np.log(6), np.log(400), size=(n, 2))).clip(max=(639, 479))
        xy = rng.uniform(0, 1, size=(n, 2)) * (np.array([640, 480]) - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, num_classes, size=n)
        samples.append(Sample(f"{image_id:012d}.jpg", 640, 480, boxes, labels, image_id=image_id))

        # ~1.3 jittered detections per object, then false positives up to ~20 per image
        for box, label in zip(boxes, labels):
            for _ in range(rng.choice([0, 1, 2], p=[0.15, 0.4, 0.45])):
                w, h = box[2:] - box[:2]
                x, y = box[:2] + rng.normal(0, 0.08, size=2) * (w, h)
                w, h = (w, h) * np.exp(rng.normal(0, 0.1, size=2))
                predictions.append(
                    {"image_id": image_id, "category_id": category_ids[label], "bbox": [x, y, w, h], "score": rng.random()}
                )
        for _ in range(max(0, 20 - int(1.3 * n))):
            w, h = np.exp(rng.uniform(np.log(6), np.log(300), size=2))
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            predictions.append(
                {"image_id": image_id, "category_id": int(rng.integers(1, num_classes + 1)), "bbox": [x, y, w, h], "score": 0.5 * rng.random()}
            )
    # plain Python floats, as json.load returns them
    predictions = [
        {**p, "bbox": [float(v) for v in p["bbox"]], "score": float(p["score"])} for p in predictions
    ]
    names = [f"class{k}" for k in range(num_classes)]
    return DetectionDataset(samples, names, category_ids), predictions


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    parser.add_argument("--pycocotools", action="store_true", help="also time backend='pycocotools'")
    args = parser.parse_args()

    dataset, predictions = synthesize(args.images, args.classes, args.seed)
    boxes = sum(len(s.boxes) for s in dataset)
    print(f"{len(dataset)} images, {boxes} boxes, {args.classes} classes, {len(predictions)} predictions\n")

    # The two steps of ours that run in Python before the C++ evaluation, timed alone for reference.
    t_gt, gt = timed(lambda: coco_dict(dataset), args.repeat)
    image_ids, cat_ids = {i["id"] for i in gt["images"]}, set(dataset.category_ids)
    t_val, _ = timed(lambda: coco_results(predictions, image_ids, cat_ids), args.repeat)

    rows = []
    t_ours, ours = timed(lambda: evaluate_coco(dataset, predictions, backend="faster"), args.repeat)
    rows.append(("plaindet (faster-coco-eval)", t_ours, ours))
    if args.pycocotools:
        t_ref, ref = timed(lambda: evaluate_coco(dataset, predictions, backend="pycocotools"), args.repeat)
        rows.append(("plaindet (backend=pycocotools)", t_ref, ref))

    print(f"{'path':<32} {'time (s)':>9} {'vs ours':>8} {'AP':>7} {'AP50':>7} {'AR100':>7}")
    for name, seconds, metrics in rows:
        s = metrics.stats
        print(f"{name:<32} {seconds:>9.2f} {seconds / t_ours:>7.1f}x {s['AP']:>7.4f} {s['AP50']:>7.4f} {s['AR100']:>7.4f}")
    print(f"\nof which: ground truth dict {t_gt:.2f} s, validating the results {t_val:.2f} s")
    if args.pycocotools:
        diff = max(abs(a - b) for a, b in zip(rows[0][2].coco_stats, rows[1][2].coco_stats))
        print(f"largest difference over the 12 COCO stats: {diff:.2e}")


if __name__ == "__main__":
    main()
