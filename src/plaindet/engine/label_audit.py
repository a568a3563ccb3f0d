"""``plaindet data audit``: the predictions a label audit needs, the audit, its report, and ``--apply``.

The predictions come from one of:

- ``weights``: a trained model run on the split (:func:`plaindet.detections.predict_dataset`). If it
  trained on these images its predictions are in-sample: it has memorised some of the wrong labels,
  which then look right, so the report says so (:func:`in_sample_warning`: it counts the audited
  images in the training split its run folder's ``config.yaml`` names, and warns that they may be
  in-sample when there is no such record).
- ``predictions``: a COCO results file in the dataset's own ids.
- ``folds``: K-fold cross-prediction (:func:`out_of_fold_predictions`): K models, each trained with
  the normal engine (:func:`plaindet.engine.train.train`) on K-1 folds and run on the fold it did not
  see, so every image gets out-of-sample predictions. Each fold's run folder is
  ``OUT/folds/fold_K``; an interrupted audit resumes each run (``resume="auto"``) and skips the
  folds whose predictions are already written.

The audit itself is :func:`plaindet.data.audit.audit`; the files are written by
:func:`plaindet.data.audit_report.write_report`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from plaindet.data.audit import AuditConfig, AuditReport, apply_suggestions, audit, read_accept
from plaindet.data.sample import DetectionDataset
from plaindet.engine.evaluate import predict_with_weights
from plaindet.errors import UserError

log = logging.getLogger("plaindet")

_IN_SAMPLE_WHY = "it has memorised some wrong labels, which then look right; --folds K gives out-of-sample predictions"
IN_SAMPLE_WARNING = f"predictions from a model trained on these images are in-sample: {_IN_SAMPLE_WHY}"


def in_sample_warning(weights: str | Path, dataset: DetectionDataset) -> str | None:
    """The report's warning about in-sample predictions from the model file ``weights``: how many of
    the audited images are in the training split named by the ``config.yaml`` of its run folder
    (``None`` when none is), or, without a readable record, that they may be in-sample. The built-in
    shapes set is not regenerated to find out: its runs get the second warning."""
    import yaml

    from plaindet.data.formats import load_dataset
    from plaindet.data.shapes import parse_builtin

    record = Path(weights).resolve().parent / "config.yaml"
    trained = None
    try:
        train = yaml.safe_load(record.read_text(encoding="utf-8"))["train"]
        if parse_builtin(str(train["data"])) is None:
            trained = load_dataset(train["data"], train["train_split"])
    except Exception as exc:  # no run folder, or its data moved: say what is not known
        log.debug("no usable training record for %s: %s", weights, exc)
    if trained is None:
        return (
            f"{weights} has no training record that names readable data ({record}): if it trained on these images, "
            f"its predictions are in-sample: {_IN_SAMPLE_WHY}"
        )
    seen = {Path(s.image_path).resolve() for s in trained.samples}
    inside = sum(Path(s.image_path).resolve() in seen for s in dataset.samples)
    if not inside:
        return None
    return f"{inside} of the {len(dataset)} audited images are in the training split of {weights} ({train['data']}, {train['train_split']}): {IN_SAMPLE_WARNING}"


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint, sorted index arrays covering ``range(n)``, of sizes differing by at most one
    (a seeded shuffle dealt round-robin)."""
    if not 2 <= folds <= n:
        raise UserError(f"--folds must be between 2 and the number of images ({n}), got {folds}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[k::folds]) for k in range(folds)]


def _subset(dataset: DetectionDataset, indices: np.ndarray) -> DetectionDataset:
    return DetectionDataset([dataset.samples[i] for i in indices], dataset.class_names, dataset.category_ids, root=dataset.root, split=dataset.split, format=dataset.format)


def out_of_fold_predictions(dataset: DetectionDataset, folds: int, out: str | Path, train_settings: dict[str, Any], *, seed: int = 0) -> list[dict]:
    """Out-of-sample COCO results for every image of ``dataset`` by K-fold training.

    ``train_settings``: :class:`~plaindet.engine.train_config.TrainConfig` fields for every fold's
    run (``model``, ``epochs`` or ``time_limit``, ``image_size``, ...); ``out``, ``resume`` and
    ``eval_every`` are set per fold (each run evaluates once, at its end, on its held-out fold: that
    AP is on the labels being audited, so it is logged, not a clean measure). Fold ``k`` holds out
    ``fold_indices(len(dataset), folds, seed)[k]``; its predictions are kept in
    ``OUT/folds/fold_k/predictions.json`` and reused when present.
    """
    from plaindet.config import apply_overrides
    from plaindet.weights import atomic_write

    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    results: list[dict] = []
    for k, held_out in enumerate(fold_indices(len(dataset), folds, seed)):
        run = Path(out) / "folds" / f"fold_{k}"
        done = run / "predictions.json"
        if done.is_file():
            log.info("fold %d/%d: predictions already written, reused (%s)", k + 1, folds, done)
            results += json.loads(done.read_text())
            continue
        train_part = _subset(dataset, np.setdiff1d(np.arange(len(dataset)), held_out))
        test_part = _subset(dataset, held_out)
        settings = {"data": str(dataset.root), "seed": seed, **train_settings, "out": str(run), "resume": "auto"}
        cfg = apply_overrides(TrainConfig(), settings, where="audit --folds")
        cfg = dataclasses.replace(cfg, eval_every=cfg.epochs)
        log.info("fold %d/%d: training %s on %d images, predicting the %d held out", k + 1, folds, cfg.model, len(train_part), len(test_part))
        train(cfg, datasets=(train_part, test_part))
        weights = run / "best.safetensors" if (run / "best.safetensors").is_file() else run / "last.safetensors"
        fold_results, _ = predict_with_weights(weights, test_part, device=cfg.device or None, batch_size=cfg.batch_size)
        atomic_write(done, lambda tmp, r=fold_results: Path(tmp).write_text(json.dumps(r)))
        results += fold_results
    return results


def run_audit(
    data: str | Path,
    split: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    predictions: str | Path | None = None,
    folds: int = 0,
    train_settings: dict[str, Any] | None = None,
    config: AuditConfig | None = None,
    device: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    console=None,
) -> AuditReport:
    """``plaindet data audit``: get the predictions (exactly one of ``weights``, ``predictions``,
    ``folds`` with ``train_settings``), audit ``split`` of ``data``, write the report into ``out``
    (``report.html``, ``suggestions.json``, ``suggestions.csv``, and with ``folds`` also
    ``predictions.json`` and ``folds/``) and print a summary. Raises :class:`UserError` on bad input."""
    from rich.console import Console

    from plaindet.data.audit_report import write_report
    from plaindet.data.formats import load_dataset

    console = console or Console()
    given = sum(x is not None for x in (weights, predictions)) + bool(folds)
    if given != 1:
        raise UserError("give one of --weights MODEL, --predictions RESULTS.json or --folds K --model NAME")
    dataset = load_dataset(data, split)
    warnings: list[str] = []
    out = Path(out)
    if weights is not None:
        results, warnings = predict_with_weights(weights, dataset, batch_size=batch_size, device=device)
        note = in_sample_warning(weights, dataset)
        if note:
            warnings.append(note)
    elif predictions is not None:
        results = Path(predictions)
    else:
        if not (train_settings or {}).get("model"):
            raise UserError("--folds needs --model NAME (a registered model, see `plaindet models`)")
        results = out_of_fold_predictions(dataset, folds, out, train_settings or {}, seed=seed)
        from plaindet.weights import atomic_write

        atomic_write(out / "predictions.json", lambda tmp: Path(tmp).write_text(json.dumps(results)))
    report = audit(dataset, results, config, warnings=warnings)
    paths = write_report(report, out)
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    counts = report.counts()
    console.print(
        f"{len(dataset)} images, {len(report.issues)} issues: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()), **plain
    )
    for w in report.warnings:
        console.print(f"warning: {w}", style="yellow", **plain)
    console.print(f"report written to {paths[2]}; suggestions in {paths[0]} and {paths[1]}", **plain)
    return report


def run_apply(suggestions: str | Path, out: str | Path, *, min_score: float | None = None, accept: str | Path | None = None, copy: bool = False, console=None) -> int:
    """``plaindet data audit --apply``: write the corrected copy and print what was done; returns 0."""
    from rich.console import Console

    console = console or Console()
    ids = read_accept(accept) if accept is not None else None
    result, applied = apply_suggestions(suggestions, out, min_score=min_score, accept=ids, copy=copy)
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    for s in result.splits:
        console.print(f"{s.name}: {s.images} images, {s.boxes} boxes", **plain)
    for note in result.notes:
        console.print(f"note: {note}", **plain)
    console.print(f"{applied} suggestions applied; corrected {result.to} dataset written to {result.out} (the original is unchanged)", **plain)
    return 0
