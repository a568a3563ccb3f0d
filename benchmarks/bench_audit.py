"""Label audit vs cleanlab's ObjectLab on errors we inject ourselves (issue 15), then the payoff.

    OMP_NUM_THREADS=1 python benchmarks/bench_audit.py [--train 400] [--folds 3] [--fold-minutes 8]
        [--payoff-minutes 7] [--seed 0] [--out runs/bench_audit]

1. Clean labels: the built-in shapes set (``--train`` training images, 100 ``valid``, 200 ``test``),
   whose labels are exactly right.
2. Injected errors in the training split only, per box, seeded: 10% dropped (overlooked), 5% given
   another class (wrong class), 5% moved or resized to IoU 0.3-0.6 with the original (badly located),
   3% of the untouched boxes get a jittered copy at IoU 0.75-0.95 (duplicate), and boxes numbering 5%
   of the labels are added on background, touching no object (spurious).
3. Out-of-sample predictions for every training image: ``--folds`` plaindet-t models, each trained
   by the normal engine for ``--fold-minutes`` on the other folds (the demo's recipe), via
   :func:`plaindet.engine.label_audit.out_of_fold_predictions`. Both tools get exactly these
   predictions, with no score threshold.
4. Both tools on them: :func:`plaindet.data.audit` and cleanlab's ``find_label_issues`` and
   ``get_label_quality_scores``, plus ObjectLab's per-type box scores
   (``compute_overlooked_box_scores``, ``compute_swap_box_scores``, ``compute_badloc_box_scores``)
   and the per-type flags ``find_label_issues`` ORs together (read with its private helpers; their
   union is checked to equal its output).

Everything is measured per image, the level cleanlab flags at: an image is positive for a type when
one of its labels got that error (``any``: any error). A tool's image score for a type is the lowest
box score of that type in the image (1 when it has none; ``any``: plaindet's image score, cleanlab's
``get_label_quality_scores``). Printed per type and tool: positive images, images flagged at the
tool's own default threshold, recall and precision of those flags, precision at N (N = positive
images; the N lowest-scored images) and the AUROC of the scores (positives against every other image).
cleanlab has no spurious or duplicate type: n/a.

5. The payoff: plaindet-t trained for ``--payoff-minutes`` on the noisy labels and on the noisy
   labels with every reported suggestion applied, evaluated on the clean ``test`` split.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

KINDS = ("overlooked", "spurious", "wrong_class", "badly_located", "duplicate")
RATES = {"drop": 0.10, "wrong_class": 0.05, "badly_located": 0.05, "duplicate": 0.03, "spurious": 0.05}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def perturb(box, size, rng, lo, hi):
    """A box of IoU in [lo, hi] with ``box``, shifted and rescaled at random, inside the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    for _ in range(1000):
        sw, sh = np.exp(rng.uniform(-0.7, 0.7, 2))
        dx, dy = rng.uniform(-0.6, 0.6, 2) * (w, h)
        cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
        nw, nh = w * sw, h * sh
        new = [max(0.0, cx - nw / 2), max(0.0, cy - nh / 2), min(size[0], cx + nw / 2), min(size[1], cy + nh / 2)]
        if new[2] - new[0] > 2 and new[3] - new[1] > 2 and lo <= iou(box, new) <= hi:
            return new
    return None


def inject(dataset, rng):
    """The noisy copy of ``dataset`` and the truth: per image, the kind of each noisy label
    (``"clean"`` or an error kind) and the boxes dropped from it."""
    from plaindet.data.sample import DetectionDataset, Sample

    samples, kinds, dropped = [], [], []
    k = dataset.num_classes
    for s in dataset.samples:
        boxes, labels, kind, gone = [], [], [], []
        size = (s.width, s.height)
        for box, label in zip(s.boxes.astype(float).tolist(), s.labels.tolist()):
            r = rng.random()
            if r < RATES["drop"]:
                gone.append(box)
                continue
            if r < RATES["drop"] + RATES["wrong_class"]:
                boxes.append(box), labels.append(int((label + rng.integers(1, k)) % k)), kind.append("wrong_class")
                continue
            if r < RATES["drop"] + RATES["wrong_class"] + RATES["badly_located"]:
                moved = perturb(box, size, rng, 0.3, 0.6)
                if moved is not None:
                    boxes.append(moved), labels.append(label), kind.append("badly_located")
                    continue
            boxes.append(box), labels.append(label), kind.append("clean")
            if rng.random() < RATES["duplicate"]:
                copy = perturb(box, size, rng, 0.75, 0.95)
                if copy is not None:
                    boxes.append(copy), labels.append(label), kind.append("duplicate")
        samples.append([s, boxes, labels, kind])
        dropped.append(gone)
    # Spurious labels: on background, touching no original object.
    total = sum(len(s.boxes) for s in dataset.samples)
    added = 0
    while added < round(RATES["spurious"] * total):
        i = int(rng.integers(len(samples)))
        s = samples[i][0]
        w, h = rng.uniform(20, 90, 2)
        x, y = rng.uniform(0, s.width - w), rng.uniform(0, s.height - h)
        box = [x, y, x + w, y + h]
        if all(iou(box, b) == 0.0 for b in s.boxes.astype(float).tolist() + samples[i][1]):
            samples[i][1].append(box), samples[i][2].append(int(rng.integers(k))), samples[i][3].append("spurious")
            added += 1
    noisy = [Sample(s.image_path, s.width, s.height, np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64), s.image_id) for s, b, lab, _ in samples]
    kinds = [kind for *_, kind in samples]
    return DetectionDataset(noisy, dataset.class_names, dataset.category_ids, root=dataset.root, split=dataset.split, format=dataset.format), kinds, dropped


def write(root: Path, train, others) -> Path:
    """A COCO dataset in ``root`` holding ``train`` and the untouched ``others`` splits."""
    import shutil

    from plaindet.data.convert import write_datasets

    if root.exists():
        shutil.rmtree(root)
    write_datasets([train, *others], "coco", root)
    return root


def cleanlab_inputs(dataset, results):
    """cleanlab's ``labels`` (``bboxes`` xyxy, ``labels``) and ``predictions`` (per image, one
    ``(M, 5)`` array ``x1 y1 x2 y2 score`` per class) from a dataset and COCO results."""
    from plaindet.data.audit import group_predictions

    labels = [{"bboxes": s.boxes.astype(np.float64), "labels": s.labels.astype(int)} for s in dataset.samples]
    predictions = []
    for p in group_predictions(dataset, results):
        per_class = np.empty(dataset.num_classes, dtype=object)  # one (M, 5) array per class, M varying
        for c in range(dataset.num_classes):
            m = p.labels == c
            per_class[c] = np.concatenate([p.boxes[m], p.scores[m, None]], axis=1).astype(np.float32).reshape(-1, 5)
        predictions.append(per_class)
    return labels, predictions


def cleanlab_scores(labels, predictions):
    """Per image: cleanlab's per-type image scores and default flags, its overall score and flags."""
    from cleanlab.object_detection import filter as clf
    from cleanlab.object_detection import rank

    aux = rank._get_valid_inputs_for_compute_scores(clf.ALPHA, labels, predictions)
    per_class_ap = clf._get_per_class_ap(labels, predictions)
    pred_thr = clf._process_class_list([rank._separate_prediction(p)[1] for p in predictions], per_class_ap)
    lab_thr = clf._process_class_list([rank._separate_label(lab)[1] for lab in labels], per_class_ap)
    per_type = {
        "overlooked": (rank.compute_overlooked_box_scores(alpha=clf.ALPHA, high_probability_threshold=clf.HIGH_PROBABILITY_THRESHOLD, auxiliary_inputs=aux), pred_thr, clf.OVERLOOKED_THRESHOLD_FACTOR),
        "wrong_class": (rank.compute_swap_box_scores(alpha=clf.ALPHA, high_probability_threshold=clf.HIGH_PROBABILITY_THRESHOLD, overlapping_label_check=True, auxiliary_inputs=aux), lab_thr, clf.SWAP_THRESHOLD_FACTOR),
        "badly_located": (rank.compute_badloc_box_scores(alpha=clf.ALPHA, low_probability_threshold=clf.LOW_PROBABILITY_THRESHOLD, auxiliary_inputs=aux), lab_thr, clf.BADLOC_THRESHOLD_FACTOR),
    }  # fmt: skip
    scores, flags = {}, {}
    for kind, (boxes, thresholds, factor) in per_type.items():
        scores[kind] = np.array([np.nanmin(np.r_[b, 1.0]) if len(b) else 1.0 for b in boxes])
        flagged = clf._find_label_issues_per_box([b.copy() for b in boxes], thresholds, factor)
        flags[kind] = clf._pool_box_scores_per_image(flagged) > 0
    flags["any"] = clf.find_label_issues(labels, predictions)
    assert np.array_equal(flags["any"], flags["overlooked"] | flags["wrong_class"] | flags["badly_located"])
    scores["any"] = rank.get_label_quality_scores(labels, predictions, verbose=False)
    return scores, flags


def plaindet_scores(report, n_images):
    scores = {kind: np.ones(n_images) for kind in KINDS}
    flags = {kind: np.zeros(n_images, bool) for kind in KINDS}
    for c in report.candidates:
        scores[c.kind][c.image_index] = min(scores[c.kind][c.image_index], c.score)
    for i in report.issues:
        flags[i.kind][i.image_index] = True
    scores["any"] = np.ones(n_images)
    for k, s in report.image_scores:
        scores["any"][k] = s
    flags["any"] = np.any([flags[k] for k in KINDS], axis=0)
    return scores, flags


def row(positive, score, flag):
    from sklearn.metrics import roc_auc_score

    n = int(positive.sum())
    tp = int((flag & positive).sum())
    top = np.argsort(score, kind="stable")[:n]
    return {
        "positive": n, "flagged": int(flag.sum()),
        "recall": tp / n if n else float("nan"), "precision": tp / flag.sum() if flag.sum() else float("nan"),
        "p_at_n": positive[top].mean() if n else float("nan"),
        "auroc": roc_auc_score(positive, -score) if 0 < n < len(positive) else float("nan"),
    }  # fmt: skip


def label_agreement(dataset, clean) -> tuple[float, float]:
    """Precision and recall of ``dataset``'s labels against the clean labels (same class, IoU >= 0.9, one to one)."""
    tp = n_labels = n_clean = 0
    for s, c in zip(dataset.samples, clean.samples):
        n_labels += len(s.boxes)
        n_clean += len(c.boxes)
        used = set()
        for b, lab in zip(s.boxes.tolist(), s.labels.tolist()):
            for j, (cb, cl) in enumerate(zip(c.boxes.tolist(), c.labels.tolist())):
                if j not in used and cl == lab and iou(b, cb) >= 0.9:
                    used.add(j)
                    tp += 1
                    break
    return tp / max(n_labels, 1), tp / max(n_clean, 1)


def train_settings(minutes: float, seed: int) -> dict:
    """The demo's recipe (plaindet.demo.demo_config) with a time budget instead of epochs."""
    from plaindet.demo import DemoSettings

    s = DemoSettings()
    return {
        "model": "plaindet-t", "epochs": 1000, "time_limit": minutes, "batch_size": s.batch_size, "image_size": s.image_size,
        "lr": s.lr, "min_lr_ratio": s.min_lr_ratio, "seed": seed, "log_every": 50,
        "model_overrides": {"backbone": {"window_size": s.window_size}, "quality_targets": s.quality_targets, "image_size": s.eval_size},
        "augment": {"crop": 0.0, "zoom_out": 0.0},
    }  # fmt: skip


def payoff(data: Path, out: Path, minutes: float, seed: int) -> dict:
    from plaindet.config import apply_overrides
    from plaindet.engine.evaluate import evaluate
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    settings = {**train_settings(minutes, seed), "data": str(data), "val_split": "valid", "out": str(out), "resume": "auto"}
    cfg = apply_overrides(TrainConfig(), settings, where="bench")
    cfg = apply_overrides(cfg, {"eval_every": cfg.epochs}, where="bench")
    if not (out / "best.safetensors").is_file():
        train(cfg)
    return evaluate(data, "test", weights=out / "best.safetensors", device="cpu").metrics.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold-minutes", type=float, default=8.0)
    parser.add_argument("--payoff-minutes", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_audit"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from plaindet.data import audit, load_dataset
    from plaindet.data.audit import corrected_dataset
    from plaindet.data.shapes import ensure_shapes
    from plaindet.engine.label_audit import out_of_fold_predictions

    start = time.perf_counter()
    clean_root = ensure_shapes(args.out / "clean", train=args.train, val=100, test=200, seed=args.seed)
    clean = load_dataset(clean_root, "train")
    others = [load_dataset(clean_root, "valid"), load_dataset(clean_root, "test")]
    noisy, kinds, dropped = inject(clean, np.random.default_rng(args.seed))
    noisy_root = write(args.out / "noisy", noisy, others)
    # The audited dataset is the one on disk, read back; its images may come in another order.
    written = noisy
    noisy = load_dataset(noisy_root, "train")
    order = {int(s.image_id): k for k, s in enumerate(written.samples)}
    kinds = [kinds[order[int(s.image_id)]] for s in noisy.samples]
    dropped = [dropped[order[int(s.image_id)]] for s in noisy.samples]
    for s in noisy.samples:
        assert np.allclose(s.boxes, written.samples[order[int(s.image_id)]].boxes, atol=1e-3)
    clean.samples = [clean.samples[order[int(s.image_id)]] for s in noisy.samples]
    results = out_of_fold_predictions(noisy, args.folds, args.out / "audit", train_settings(args.fold_minutes, args.seed), seed=args.seed)
    predicted = time.perf_counter() - start

    report = audit(noisy, results)
    ours, our_flags = plaindet_scores(report, len(noisy))
    theirs, their_flags = cleanlab_scores(*cleanlab_inputs(noisy, results))

    positive = {kind: np.array([kind in k for k in kinds]) for kind in KINDS if kind != "overlooked"}
    positive["overlooked"] = np.array([len(d) > 0 for d in dropped])
    positive["any"] = np.any([positive[k] for k in KINDS], axis=0)
    injected = {kind: sum(k.count(kind) for k in kinds) for kind in KINDS if kind != "overlooked"}
    injected["overlooked"] = sum(len(d) for d in dropped)
    injected["any"] = sum(injected.values())

    print(f"\nshapes: {len(noisy)} training images, {sum(len(s.boxes) for s in clean.samples)} clean labels; injected errors: "
          + ", ".join(f"{injected[k]} {k}" for k in KINDS))  # fmt: skip
    print(f"predictions: {args.folds} folds, plaindet-t, {args.fold_minutes:g} min of training each (demo recipe, 256 px), "
          f"2 shared CPU cores, 1 thread; {len(results)} predictions; predicted in {predicted / 60:.1f} min")  # fmt: skip
    print("per image (positive: an image holding that error); flagged at each tool's default threshold\n")
    header = f"{'type':<14} {'tool':<9} {'positive':>8} {'flagged':>7} {'recall':>6} {'prec.':>6} {'P@N':>6} {'AUROC':>6}"
    print(header)
    print("-" * len(header))
    for kind in (*KINDS, "any"):
        for tool, scores, flags in (("plaindet", ours, our_flags), ("cleanlab", theirs, their_flags)):
            if kind not in scores:
                print(f"{kind:<14} {tool:<9} {'n/a':>8}")
                continue
            r = row(positive[kind], scores[kind], flags[kind])
            print(f"{kind:<14} {tool:<9} {r['positive']:>8} {r['flagged']:>7} {r['recall']:>6.3f} {r['precision']:>6.3f} {r['p_at_n']:>6.3f} {r['auroc']:>6.3f}")

    fixed = corrected_dataset(noisy, json.loads(report.to_json())["issues"])
    fixed_root = write(args.out / "fixed", fixed, others)
    print(f"\nlabels vs the clean ones (same class, IoU >= 0.9): precision / recall")
    for name, d in (("noisy", noisy), ("audited and fixed", fixed)):
        p, r = label_agreement(d, clean)
        print(f"  {name:<18} {p:.3f} / {r:.3f}")
    print(f"\npayoff: plaindet-t, {args.payoff_minutes:g} min each, AP on the clean test split (200 images)")
    for name, root in (("noisy labels", noisy_root), ("audited and fixed", fixed_root)):
        stats = payoff(root, args.out / f"train_{name.split()[0]}", args.payoff_minutes, args.seed)
        print(f"  {name:<18} AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}")
    print(f"\ntotal {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
