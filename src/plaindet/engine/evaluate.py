"""COCO box evaluation of a :class:`~plaindet.data.sample.DetectionDataset`.

The metrics are the standard COCO ones (``pycocotools.cocoeval.COCOeval`` with ``iouType="bbox"``),
computed by faster-coco-eval, whose C++ ``evaluate``/``accumulate`` give the same numbers as
pycocotools many times faster; ``backend="pycocotools"`` runs the reference implementation instead.

Data contracts
--------------
- Ground truth comes from the dataset: :func:`plaindet.data.coco.coco_dict` turns its samples
  (absolute ``xyxy`` boxes, contiguous labels) into a COCO dict with the dataset's own image and
  category ids, the same dict ``plaindet data convert`` writes.
- Predictions are COCO results, one dict per box, in the dataset's own ids::

      {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

  ``bbox`` is absolute pixels of the displayed image: top-left corner, width and height (``w, h >= 0``).
  ``category_id`` is ``dataset.category_ids[k]`` for contiguous class ``k``, not ``k`` itself.
  :meth:`plaindet.detections.Detections.to_coco` writes them, and
  :func:`plaindet.detections.predict_dataset` predicts a whole dataset with any backend.

Undefined metrics
-----------------
COCO writes ``-1`` for a metric with nothing to measure, e.g. ``APs`` when no ground-truth box is
small, or the AP of a class with no ground truth. ``-1`` is not a score, and averaging or plotting it
as one is a classic bug, so :class:`CocoMetrics` reports such a metric as ``None`` (``null`` in JSON);
every defined value is a float in ``[0, 1]``. The raw COCO numbers, ``-1`` included, stay in
``CocoMetrics.coco_stats`` for exact comparisons with pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plaindet.data.coco import coco_dict
from plaindet.data.results import coco_results, read_predictions
from plaindet.errors import UserError

if TYPE_CHECKING:
    from plaindet.data.sample import DetectionDataset

# The 12 numbers of ``COCOeval.summarize()`` for boxes, in its order: (name, IoU, area, max detections).
STANDARD_METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("AP", "0.50:0.95", "all", 100),
    ("AP50", "0.50", "all", 100),
    ("AP75", "0.75", "all", 100),
    ("APs", "0.50:0.95", "small", 100),
    ("APm", "0.50:0.95", "medium", 100),
    ("APl", "0.50:0.95", "large", 100),
    ("AR1", "0.50:0.95", "all", 1),
    ("AR10", "0.50:0.95", "all", 10),
    ("AR100", "0.50:0.95", "all", 100),
    ("ARs", "0.50:0.95", "small", 100),
    ("ARm", "0.50:0.95", "medium", 100),
    ("ARl", "0.50:0.95", "large", 100),
)
METRIC_NAMES: tuple[str, ...] = tuple(m[0] for m in STANDARD_METRICS)
BACKENDS = ("faster", "pycocotools")


@dataclass(frozen=True)
class ClassAP:
    """AP of one class: IoU 0.50:0.95 and 0.50, all areas, 100 detections per image.

    ``ap`` and ``ap50`` are ``None`` when the class has no (non-crowd) ground truth. ``num_gt`` counts
    non-crowd boxes only: crowd boxes are ignored regions, neither found nor missed.
    """

    index: int
    category_id: int
    name: str
    num_gt: int
    ap: float | None
    ap50: float | None


@dataclass
class CocoMetrics:
    """What :func:`evaluate_coco` measured.

    Attributes:
        stats: ``METRIC_NAMES`` -> value in ``[0, 1]``, or ``None`` where COCO reports ``-1``
            (nothing to measure, see the module docstring).
        per_class: one :class:`ClassAP` per dataset class, in class-index order.
        coco_stats: the 12 numbers of ``COCOeval.stats`` as COCO reports them (``-1`` = undefined).
        precision: ``float64`` array ``(T, R, K)``: COCO's interpolated precision at IoU threshold ``t``,
            recall threshold ``r``, for class ``k`` (class-index order, like ``per_class``), all areas,
            100 detections per image; ``-1`` for a class with no ground truth.
        iou_thresholds: ``(T,)`` = 0.50, 0.55, ..., 0.95.
        recall_thresholds: ``(R,)`` = 0.00, 0.01, ..., 1.00.
        num_images: images evaluated (all dataset images, with or without ground truth).
        num_predictions: predictions evaluated.
        backend: ``"faster"`` or ``"pycocotools"``.
    """

    stats: dict[str, float | None]
    per_class: list[ClassAP]
    coco_stats: list[float]
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    num_images: int
    num_predictions: int
    backend: str

    def to_dict(self) -> dict:
        """JSON-ready dict: the 12 metric keys (``AP`` ... ``ARl``; ``null`` = undefined) and ``per_class``."""
        out: dict = dict(self.stats)
        out["per_class"] = [
            {"class": c.name, "category_id": c.category_id, "num_gt": c.num_gt, "AP": c.ap, "AP50": c.ap50}
            for c in self.per_class
        ]
        out["num_images"] = self.num_images
        out["num_predictions"] = self.num_predictions
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string (undefined metrics are ``null``, never ``-1`` or ``NaN``)."""
        return json.dumps(self.to_dict(), indent=indent)

    def rich_tables(self) -> tuple:
        """The standard-metrics table and the per-class table as ``rich.table.Table`` objects."""
        from rich.table import Table

        standard = Table(title="COCO box metrics", title_justify="left")
        for column, justify in (("metric", "left"), ("IoU", "left"), ("area", "left"), ("max dets", "right")):
            standard.add_column(column, justify=justify)
        standard.add_column("value", justify="right")
        for name, iou, area, max_dets in STANDARD_METRICS:
            standard.add_row(name, iou, area, str(max_dets), _fmt(self.stats[name]))

        per_class = Table(title="Per-class AP (all areas, 100 dets)", title_justify="left")
        for column, justify in (("class", "left"), ("id", "right"), ("GT", "right"), ("AP", "right")):
            per_class.add_column(column, justify=justify)
        per_class.add_column("AP50", justify="right")
        for c in self.per_class:
            per_class.add_row(c.name, str(c.category_id), str(c.num_gt), _fmt(c.ap), _fmt(c.ap50))
        return standard, per_class

    def table(self, width: int = 100) -> str:
        """Both tables rendered as plain text (``-`` marks an undefined metric)."""
        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
        for t in self.rich_tables():
            console.print(t)
        return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _defined_mean(values: np.ndarray) -> float | None:
    """Mean of the entries that are not COCO's ``-1`` (undefined), or ``None`` when all are."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _defined(value: float) -> float | None:
    """COCO's ``-1`` (undefined) -> ``None``; anything else -> a Python float."""
    return None if value < 0 else float(value)


# --------------------------------------------------------------------------------------------------
# Predictions


# --------------------------------------------------------------------------------------------------
# Evaluation


def _coco_api(backend: str):
    """(COCO, COCOeval) classes of ``backend``, imported lazily."""
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError as err:
            raise ImportError(
                "backend='pycocotools' needs pycocotools: pip install pycocotools (or plaindet[dev])"
            ) from err
        return COCO, COCOeval
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _indexed(coco_cls, dataset_dict: dict):
    # Built from a dict directly instead of `COCO.loadRes`: loadRes rewrites the caller's dicts in
    # place, and pycocotools' loadRes crashes on an empty result list (it reads `anns[0]`).
    coco = coco_cls()
    coco.dataset = dataset_dict
    coco.createIndex()
    return coco


def evaluate_coco(
    dataset: DetectionDataset,
    predictions: Sequence[Mapping],
    *,
    per_class: bool = True,
    backend: str = "faster",
) -> CocoMetrics:
    """COCO box metrics of ``predictions`` against ``dataset``.

    Args:
        dataset: the ground truth. Every image counts, including images without boxes: a prediction
            on such an image is a false positive, as in pycocotools.
        predictions: COCO results in the dataset's own ids (see the module docstring). An empty list is
            valid: every defined AP and AR is 0.
        per_class: compute ``CocoMetrics.per_class`` (cheap; ``False`` leaves it empty).
        backend: ``"faster"`` (faster-coco-eval, default) or ``"pycocotools"`` (reference, slower).

    Returns:
        :class:`CocoMetrics`; ``stats`` values are in ``[0, 1]`` or ``None`` (undefined).

    Raises:
        ValueError: a malformed prediction (which one and why), a dataset without images, or an unknown
            backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset has no images to evaluate on")
    gt = coco_dict(dataset)
    results = coco_results(
        predictions, {img["id"] for img in gt["images"]}, {cat["id"] for cat in gt["categories"]}
    )
    dt = {"images": gt["images"], "categories": gt["categories"], "annotations": results}

    coco_cls, eval_cls = _coco_api(backend)
    # pycocotools prints progress to stdout; faster-coco-eval takes a print function instead.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = _indexed(coco_cls, gt), _indexed(coco_cls, dt)
        if backend == "faster":
            coco_eval = eval_cls(coco_gt, coco_dt, iouType="bbox", print_function=lambda *args: None)
        else:
            coco_eval = eval_cls(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()

    coco_stats = [float(s) for s in coco_eval.stats[: len(METRIC_NAMES)]]
    params = coco_eval.params
    # precision is [T, R, K, A, M]; A = 0 is area "all", M = -1 is 100 detections. K follows
    # params.catIds, which is sorted; reorder it to the dataset's class order.
    column = {cat: k for k, cat in enumerate(params.catIds)}
    order = [column[int(cid)] for cid in dataset.category_ids]
    precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)[:, :, order, 0, -1]

    classes: list[ClassAP] = []
    if per_class:
        num_gt = np.zeros(dataset.num_classes, dtype=np.int64)
        for sample in dataset.samples:
            np.add.at(num_gt, sample.labels[~sample.iscrowd], 1)
        for k, (cid, name) in enumerate(zip(dataset.category_ids, dataset.class_names)):
            # Same rule as COCOeval.summarize: average the entries that are not -1 (-1 = no ground truth).
            p = precision[:, :, k]
            ap = _defined_mean(p)
            ap50 = _defined_mean(p[0])
            classes.append(ClassAP(k, int(cid), name, int(num_gt[k]), ap, ap50))

    return CocoMetrics(
        stats={name: _defined(value) for name, value in zip(METRIC_NAMES, coco_stats)},
        per_class=classes,
        coco_stats=coco_stats,
        precision=precision,
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
        num_images=len(gt["images"]),
        num_predictions=len(results),
        backend=backend,
    )


# --------------------------------------------------------------------------------------------------
# Plots


def plot_pr_curves(metrics: CocoMetrics, out_dir: str | Path, *, classes_per_page: int = 40) -> list[Path]:
    """Write precision-recall curves as PNG files and return their paths.

    - ``pr_all.png``: the mean over classes (with ground truth) at IoU 0.50 and averaged over
      IoU 0.50:0.95; the area under the latter is the AP.
    - ``pr_classes_01.png``, ``pr_classes_02.png``, ...: a grid of small panels, one per class (8
      columns, ``classes_per_page`` panels per page, so 80 COCO classes make two readable pages), each
      with the same two curves and the class's AP and AP50 in its title.

    Uses matplotlib's object API with the Agg canvas (``Figure.savefig``) rather than ``pyplot``, so it
    works headless and leaves the caller's matplotlib backend and pyplot state untouched.
    """
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recall = metrics.recall_thresholds
    written: list[Path] = []

    def draw(ax, curves: np.ndarray | None, title: str, fontsize: float) -> None:
        # curves: (T, R) precision of one class or of the class mean, or None without ground truth.
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=fontsize)
        ax.tick_params(labelsize=fontsize - 1)
        ax.grid(alpha=0.3)
        if curves is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=fontsize, color="gray")
            return
        ax.plot(recall, curves[0], lw=1.2, label="IoU 0.50")
        ax.plot(recall, curves.mean(axis=0), lw=1.2, ls="--", label="mean over IoU 0.50:0.95")

    defined = [k for k in range(metrics.precision.shape[2]) if (metrics.precision[:, :, k] > -1).all()]
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    mean_curves = metrics.precision[:, :, defined].mean(axis=2) if defined else None
    draw(ax, mean_curves, f"All classes: AP {_fmt(metrics.stats['AP'])}, AP50 {_fmt(metrics.stats['AP50'])}", 10)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if mean_curves is not None:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    written.append(out_dir / "pr_all.png")
    fig.savefig(written[-1])

    classes = metrics.per_class
    cols = 8
    for page, start in enumerate(range(0, len(classes), classes_per_page), start=1):
        chunk = classes[start : start + classes_per_page]
        rows = math.ceil(len(chunk) / cols)
        fig = Figure(figsize=(2.0 * cols, 1.9 * rows + 0.4), dpi=100)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(chunk) :]:
            ax.set_visible(False)
        for ax, c in zip(axes.flat, chunk):
            curves = metrics.precision[:, :, c.index] if c.ap is not None else None
            draw(ax, curves, f"{c.name} (n={c.num_gt})\nAP {_fmt(c.ap)}  AP50 {_fmt(c.ap50)}", 7)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if not handles:  # the first class may have no ground truth: borrow any panel's legend
            for ax in axes.flat:
                handles, labels = ax.get_legend_handles_labels()
                if handles:
                    break
        if handles:
            fig.legend(handles, labels, loc="upper right", fontsize=8, ncols=2)
        fig.suptitle("precision (y) vs recall (x) per class", fontsize=9, x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        written.append(out_dir / f"pr_classes_{page:02d}.png")
        fig.savefig(written[-1])
    return written


# --------------------------------------------------------------------------------------------------
# The entry point: a dataset, and weights to run or predictions to score


def predict_with_weights(
    weights: str | Path, dataset: Any, *, image_size: int | None = None, batch_size: int = 8, device: str | None = None
) -> tuple[list[dict], list[str]]:
    """Load the model file ``weights`` (anything :func:`plaindet.load` reads; ``device`` default: cuda
    if available, cpu for ``.onnx``) and run it on every image of ``dataset`` with
    :func:`predict_dataset`. Returns the COCO results and warnings for the user (class names that
    differ from the dataset's: classes are matched by index).

    Raises :class:`~plaindet.errors.UserError` when the model's class count differs from the dataset's.
    """
    import plaindet
    from plaindet.detections import predict_dataset

    if device is None and Path(weights).suffix.lower() != ".onnx":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = plaindet.load(weights, device=device or "cpu")
    names = list(predictor.class_names)
    if len(names) != dataset.num_classes:
        raise UserError(
            f"{weights} has {len(names)} classes ({', '.join(names)}) but {dataset.root} has "
            f"{dataset.num_classes} ({', '.join(dataset.class_names)})"
        )
    warnings = []
    if names != list(dataset.class_names):
        warnings.append(f"the model's class names {names} differ from the dataset's {dataset.class_names}; classes are matched by index")
    return predict_dataset(predictor, dataset, image_size=image_size, batch_size=batch_size), warnings


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: the ``metrics``, the ``dataset`` they were measured on, the COCO
    ``results`` scored, and ``warnings`` for the user (e.g. class names that differ)."""

    metrics: CocoMetrics
    dataset: DetectionDataset
    results: list
    warnings: list[str]


def evaluate(
    data: str | Path,
    split: str = "val",
    *,
    weights: str | Path | None = None,
    predictions: str | Path | Sequence[Mapping] | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> Evaluation:
    """COCO metrics on ``split`` of the dataset ``data``, of a model or of its predictions.

    Exactly one of:

    - ``weights``: any model file :func:`plaindet.load` reads (``.safetensors`` for PyTorch,
      ``.onnx`` for ONNX Runtime), run on every image through
      :func:`plaindet.detections.predict_dataset` (long side ``image_size``, default the model's; no
      score threshold). Its classes are matched to the dataset's by index.
    - ``predictions``: COCO results in the dataset's own ids, a JSON file or a list of dicts.

    Raises:
        UserError: an unusable input (unreadable dataset, weights or predictions file, a class count
            that differs from the model's, a malformed result), naming the file.
    """
    if (weights is None) == (predictions is None):
        raise UserError("give either weights (a model to run) or predictions (COCO results), not both or neither")
    from plaindet.data import load_dataset

    dataset = load_dataset(data, split=split)
    warnings: list[str] = []
    if weights is not None:
        results, warnings = predict_with_weights(weights, dataset, image_size=image_size, batch_size=batch_size, device=device)
        where = str(weights)
    else:
        results = read_predictions(predictions) if isinstance(predictions, (str, Path)) else list(predictions)
        where = str(predictions) if isinstance(predictions, (str, Path)) else "predictions"
    try:
        metrics = evaluate_coco(dataset, results)
    except ValueError as e:
        message = str(e)
        raise UserError(message if message.startswith(where) else f"{where}: {message}") from None
    return Evaluation(metrics, dataset, results, warnings)


def run_eval(
    data: str | Path,
    split: str = "val",
    *,
    weights: str | Path | None = None,
    predictions: str | Path | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    save_predictions: str | Path | None = None,
    output: str | Path | None = None,
    plots: str | Path | None = None,
    console=None,
) -> Evaluation:
    """``plaindet eval``: :func:`evaluate`, then print the COCO tables and write what was asked for:
    the COCO results scored (``save_predictions``), the metrics as JSON (``output``) and
    precision-recall plots (``plots``). Raises :class:`~plaindet.errors.UserError` on bad input."""
    from rich.console import Console

    out = console or Console()
    plain = {"markup": False, "highlight": False, "soft_wrap": True}  # paths may hold [brackets]
    result = evaluate(
        data, split, weights=weights, predictions=predictions, image_size=image_size, batch_size=batch_size, device=device
    )
    for warning in result.warnings:
        Console(stderr=True).print(f"warning: {warning}", style="yellow", **plain)
    metrics, dataset = result.metrics, result.dataset
    if save_predictions is not None:
        path = Path(save_predictions)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.results))
        out.print(f"predictions written to {path}", **plain)
    out.print(
        f"{metrics.num_predictions} predictions on {metrics.num_images} images, "
        f"{dataset.num_classes} classes ({data}, split {split!r})",
        **plain,
    )
    for table in metrics.rich_tables():
        out.print(table)
    if None in metrics.stats.values() or any(c.ap is None for c in metrics.per_class):
        out.print("- = undefined: no ground truth to measure (COCO's -1; null in the JSON)", **plain)
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(metrics.to_json() + "\n")
        out.print(f"metrics written to {output}", **plain)
    if plots is not None:
        paths = plot_pr_curves(metrics, plots)
        out.print(f"{len(paths)} precision-recall plots written to {plots}", **plain)
    return result
