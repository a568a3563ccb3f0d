"""``plaindet eval --weights``: predict a dataset with a saved detector, then evaluate like ``--predictions``.

The predictions are written as a COCO results file (to ``save_predictions``, or a temporary file) and
handed to :func:`plaindet.engine.evaluate.run_eval`, so both ways of evaluating print and write exactly
the same tables, JSON and plots.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def run_eval_model(
    weights: str | Path,
    data: str | Path,
    split: str = "val",
    *,
    image_size: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    save_predictions: str | Path | None = None,
    output: str | Path | None = None,
    plots: str | Path | None = None,
) -> int:
    """Evaluate the detector saved at ``weights`` on ``split`` of ``data``; returns the exit code.

    0 on success; 2 when an input can't be used (an unreadable checkpoint or dataset, or a class count
    that differs from the model's), with the reason on stderr. ``image_size`` defaults to the model's.
    Predictions use the dataset's own image and category ids; at most ``max_detections`` per image,
    no score threshold (COCO AP needs the low-scored tail).
    """
    import torch
    from rich.console import Console

    import plaindet
    from plaindet.checkpoint import CheckpointError
    from plaindet.data import load_dataset
    from plaindet.engine.evaluate import run_eval
    from plaindet.engine.validate import predict_dataset

    err = Console(stderr=True)

    def fail(message: str) -> int:
        err.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = plaindet.load(weights, device=device)
    except (CheckpointError, ValueError) as e:  # ValueError: weights that don't fit their own config
        return fail(str(e))
    try:
        dataset = load_dataset(data, split=split)
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        return fail(f"cannot load dataset {data} (split {split!r}): {e}")
    if model.config.num_classes != dataset.num_classes:
        return fail(
            f"{weights} has {model.config.num_classes} classes ({', '.join(model.config.class_names)}) but "
            f"{data} has {dataset.num_classes} ({', '.join(dataset.class_names)})"
        )
    if list(model.config.class_names) != list(dataset.class_names):
        err.print(
            f"warning: the model's class names {model.config.class_names} differ from the dataset's "
            f"{dataset.class_names}; classes are matched by index",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    results = predict_dataset(model, dataset, image_size=image_size, batch_size=batch_size)
    if save_predictions is not None:
        path = Path(save_predictions)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results))
        return run_eval(data, split=split, predictions=path, output=output, plots=plots)
    with tempfile.TemporaryDirectory(prefix="plaindet-eval-") as tmp:
        path = Path(tmp) / "predictions.json"
        path.write_text(json.dumps(results))
        return run_eval(data, split=split, predictions=path, output=output, plots=plots)
