"""Label audit: find wrong labels from a model's predictions, rank them, and suggest a fix for each.

:func:`audit` compares the labels of a :class:`~plaindet.data.sample.DetectionDataset` with a
model's predictions on the same images (COCO results in the dataset's own ids; out-of-sample
predictions, from a model that never trained on the image, hide fewer errors) and scores five kinds
of issue. Every score is in ``[0, 1]``, low meaning "likely wrong"; an issue is reported when its
score is below :attr:`AuditConfig.threshold` (0.5), and each score is built so that 0.5 sits on the
rule stated below (with the default settings).

Issue types (``kind``), what they mean and the fix suggested:

- ``overlooked``: a confident prediction overlaps no label of any class (IoU below
  ``overlap_iou``): suggest adding the predicted box. Score ``1 - confidence`` mapped so that a
  confidence of ``min_confidence`` scores 0.5.
- ``spurious``: a label where the model sees nothing of any class: the support
  ``max_j confidence_j * IoU_j`` over all predictions is below ``spurious_support``: suggest removing it.
- ``wrong_class``: a prediction of another class overlaps the label (IoU at least ``match_iou``) and
  no confident prediction of the label's class does: score ``1 - other * (1 - same)``, ``other`` and
  ``same`` the best confidences of the other class and of the label's class: suggest the other class.
- ``badly_located``: the best confident same-class prediction (confidence at least ``min_confidence``,
  IoU at least ``overlap_iou``) overlaps the label only partly: its IoU ``q`` is below ``loc_iou``;
  score ``q`` mapped so ``loc_iou`` scores 0.5: suggest the predicted box.
- ``duplicate``: two labels of one class overlap by at least ``duplicate_iou`` and the model does
  not see two objects there: suggest removing the one the predictions support less.

An image's score is the lowest score of its issues (1 when it has none). The report ranks images and
suggestions by score, lowest first, and :func:`apply_suggestions` writes a corrected copy of the
dataset, in its own format, into a new folder; the original files are never written.

Box contract: every box here is absolute ``x1, y1, x2, y2`` pixels of the displayed image, as in
:class:`~plaindet.data.sample.Sample`; a suggestion's ``box`` too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from plaindet.data.results import coco_results, read_predictions
from plaindet.data.sample import DetectionDataset, Sample
from plaindet.config import setting
from plaindet.errors import ConfigError, DatasetError, UserError

KINDS = ("overlooked", "spurious", "wrong_class", "badly_located", "duplicate")
ACTIONS = {"overlooked": "add", "spurious": "remove", "wrong_class": "relabel", "badly_located": "move", "duplicate": "remove"}
_FORMAT_VERSION = 1
BLIND_SHARE = 0.5  # above this share of labels flagged spurious, the report warns that the model sees too little


@dataclass(frozen=True)
class AuditConfig:
    """The thresholds of the audit: the single source of its defaults (``plaindet data audit``'s
    options are derived from these fields). Every value is in ``[0, 1]``."""

    threshold: float = setting(0.5, help="Report an issue when its score (0-1, low = likely wrong) is below this.")
    min_confidence: float = setting(0.5, help="Confidence at which a prediction counts as confident.")
    match_iou: float = setting(0.5, help="IoU at which a prediction and a label are one object.")
    overlap_iou: float = setting(0.25, help="Below this IoU a prediction and a label do not touch.")
    loc_iou: float = setting(0.65, help="A confident same-class match below this IoU is badly located.")
    spurious_support: float = setting(0.1, help="A label whose best confidence x IoU over all predictions is below this is spurious.")
    duplicate_iou: float = setting(0.7, help="Two labels of one class overlapping this much may be one object.")
    nms_iou: float = setting(0.5, help="Overlooked-object candidates overlapping a higher-scored one this much are one object.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"audit setting {f.name} must be in [0, 1], got {value}")
        if not self.overlap_iou < self.loc_iou or self.min_confidence in (0.0, 1.0) or self.spurious_support == 0.0:
            raise ConfigError("audit settings need overlap_iou < loc_iou, 0 < min_confidence < 1 and spurious_support > 0")


@dataclass
class Issue:
    """One likely label error and its fix.

    ``image_index``: position of the image in the dataset's samples; ``image_id``, ``file``: its id
    and image file. ``label_index``: position of the label in the sample's boxes (``None`` for
    ``overlooked``, which has no label). ``box``/``label``: that label's box and class (or, for
    ``overlooked``, the predicted box and class). ``suggestion``: ``{"action": "add"|"remove"|
    "relabel"|"move", "box": [x1, y1, x2, y2], "label": k}`` (the box and class the label should
    have; ``None`` values for ``remove``). ``evidence``: the numbers the score came from.
    """

    id: int
    kind: str
    score: float
    image_index: int
    image_id: int
    file: str
    label_index: int | None
    box: list[float]
    label: int
    suggestion: dict
    evidence: dict = field(default_factory=dict)


@dataclass
class AuditReport:
    """What :func:`audit` found on one split.

    ``issues``: every reported issue (score below ``config.threshold``), lowest score first, ``id``
    ``1..N`` in that order. ``candidates``: every scored candidate, reported or not, for measuring the
    scores (an AUROC needs the high ones too). ``image_scores``: ``(image_index, score)`` for every
    image, lowest first. ``warnings``: for the reader of the report (e.g. in-sample predictions).
    """

    dataset: DetectionDataset
    config: AuditConfig
    issues: list[Issue]
    candidates: list[Issue]
    image_scores: list[tuple[int, float]]
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Reported issues per kind, every kind present."""
        return {kind: sum(i.kind == kind for i in self.issues) for kind in KINDS}

    def to_dict(self) -> dict:
        """The content of ``suggestions.json``: dataset, split, settings, classes, issues, images."""
        d = self.dataset
        return {
            "format": "plaindet-audit",
            "version": _FORMAT_VERSION,
            "dataset": str(d.root),
            "dataset_format": d.format,
            "split": d.split,
            "config": asdict(self.config),
            "class_names": list(d.class_names),
            "warnings": list(self.warnings),
            "counts": self.counts(),
            "issues": [_issue_dict(i, d) for i in self.issues],
            "images": [
                {"image_index": k, "image_id": int(d.samples[k].image_id), "file": str(d.samples[k].image_path), "score": round(s, 6)}
                for k, s in self.image_scores
            ],
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_csv(self) -> str:
        """One row per reported issue: id, kind, score, image_id, file, label_index, class, box, the
        suggested action, class and box (boxes as ``x1 y1 x2 y2``)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "kind", "score", "image_id", "file", "label_index", "class", "box", "action", "suggested_class", "suggested_box"])
        names = self.dataset.class_names
        for i in self.issues:
            s = i.suggestion
            writer.writerow([
                i.id, i.kind, f"{i.score:.4f}", i.image_id, i.file, "" if i.label_index is None else i.label_index,
                names[i.label], _box_text(i.box), s["action"], "" if s["label"] is None else names[s["label"]],
                "" if s["box"] is None else _box_text(s["box"]),
            ])  # fmt: skip
        return buf.getvalue()


def _box_text(box: Sequence[float]) -> str:
    return " ".join(f"{v:.1f}" for v in box)


def _issue_dict(issue: Issue, dataset: DetectionDataset) -> dict:
    out = asdict(issue)
    out["class"] = dataset.class_names[issue.label]
    s = issue.suggestion
    out["suggestion"] = {**s, "class": None if s["label"] is None else dataset.class_names[s["label"]]}
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Scoring


def _ramp(x: np.ndarray | float, lo: float, mid: float) -> np.ndarray:
    """Piecewise linear: ``lo -> 0``, ``mid -> 0.5``, ``1 -> 1``, clipped to ``[0, 1]`` outside."""
    x = np.asarray(x, dtype=np.float64)
    below = 0.5 * (x - lo) / max(mid - lo, 1e-9)
    above = 0.5 + 0.5 * (x - mid) / max(1.0 - mid, 1e-9)
    return np.clip(np.where(x < mid, below, above), 0.0, 1.0)


@dataclass
class _Predictions:
    """One image's predictions: ``boxes (P, 4)`` xyxy pixels, ``scores (P,)``, ``labels (P,)`` contiguous."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of xyxy boxes, with the package's box op."""
    import torch

    from plaindet.ops.boxes import box_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def _nms_keep(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    overlaps = _iou(boxes[order], boxes[order])
    kept: list[int] = []
    for pos in range(len(order)):
        if all(overlaps[pos, k] < iou for k in kept):
            kept.append(pos)
    return order[kept]


def _score_image(sample: Sample, pred: _Predictions, cfg: AuditConfig) -> list[tuple[str, float, int | None, list, int, dict, dict]]:
    """Every candidate issue of one image: ``(kind, score, label_index, box, label, suggestion, evidence)``.

    Crowd regions are not labels of single objects: they are neither audited nor counted as covering
    a prediction.
    """
    keep = ~sample.iscrowd
    label_idx = np.flatnonzero(keep)
    gt_boxes, gt_labels = sample.boxes[keep].astype(np.float64), sample.labels[keep]
    crowd_boxes = sample.boxes[sample.iscrowd].astype(np.float64)
    iou = _iou(gt_boxes, pred.boxes)  # (G, P)
    same = gt_labels[:, None] == pred.labels[None, :]
    conf = pred.scores[None, :]
    out = []

    for g in range(len(gt_boxes)):
        index, box, label = int(label_idx[g]), gt_boxes[g].tolist(), int(gt_labels[g])
        # spurious: no prediction of any class here.
        support = float((conf[0] * iou[g]).max(initial=0.0))
        score = float(_ramp(support, 0.0, cfg.spurious_support))
        out.append(("spurious", score, index, box, label, {"action": "remove", "box": None, "label": None}, {"support": support}))

        # wrong class: a matching prediction of another class, and no confident one of this class.
        matching = iou[g] >= cfg.match_iou
        other = matching & ~same[g]
        if other.any():
            j = int(np.flatnonzero(other)[np.argmax(pred.scores[other])])
            other_conf = float(pred.scores[j])
            same_conf = float(pred.scores[matching & same[g]].max(initial=0.0))
            score = 1.0 - other_conf * (1.0 - same_conf)
            suggestion = {"action": "relabel", "box": box, "label": int(pred.labels[j])}
            out.append(("wrong_class", score, index, box, label, suggestion, {"other_score": other_conf, "same_score": same_conf}))

        # badly located: the best confident same-class prediction overlaps only partly.
        confident = same[g] & (pred.scores >= cfg.min_confidence) & (iou[g] >= cfg.overlap_iou)
        if confident.any():
            j = int(np.flatnonzero(confident)[np.argmax(iou[g][confident])])
            q = float(iou[g, j])
            score = float(_ramp(q, cfg.overlap_iou, cfg.loc_iou))
            suggestion = {"action": "move", "box": pred.boxes[j].astype(np.float64).tolist(), "label": label}
            out.append(("badly_located", score, index, box, label, suggestion, {"iou": q, "pred_score": float(pred.scores[j])}))

    out += _duplicates(gt_boxes, gt_labels, label_idx, iou, same, pred, cfg)
    out += _overlooked(np.concatenate([gt_boxes, crowd_boxes]), pred, cfg)
    return out


def _duplicates(gt_boxes, gt_labels, label_idx, iou, same, pred: _Predictions, cfg: AuditConfig) -> list:
    """Pairs of same-class labels that overlap by ``duplicate_iou`` or more, unless two distinct
    confident predictions of that class match them (then there are two objects)."""
    out = []
    pair_iou = _iou(gt_boxes, gt_boxes)
    confident = pred.scores >= cfg.min_confidence
    for a in range(len(gt_boxes)):
        for b in range(a + 1, len(gt_boxes)):
            overlap = float(pair_iou[a, b])
            if gt_labels[a] != gt_labels[b] or overlap < cfg.duplicate_iou:
                continue
            seen = np.flatnonzero(confident & same[a] & ((iou[a] >= cfg.match_iou) | (iou[b] >= cfg.match_iou)))
            objects = len(_nms_keep(pred.boxes[seen], pred.scores[seen], cfg.duplicate_iou)) if len(seen) else 0
            # IoU duplicate_iou -> 0.5, identical boxes -> 0; two objects seen -> not a duplicate.
            score = 1.0 if objects >= 2 else 0.5 * (1.0 - overlap) / max(1.0 - cfg.duplicate_iou, 1e-9)
            # Remove the label the predictions support less (the later one on a tie).
            support_a = float((pred.scores * iou[a] * same[a]).max(initial=0.0))
            support_b = float((pred.scores * iou[b] * same[b]).max(initial=0.0))
            drop = a if support_a < support_b else b
            box, label = gt_boxes[drop].tolist(), int(gt_labels[drop])
            suggestion = {"action": "remove", "box": None, "label": None}
            evidence = {"iou": overlap, "other_label_index": int(label_idx[b if drop == a else a]), "objects_seen": objects}
            out.append(("duplicate", float(min(score, 1.0)), int(label_idx[drop]), box, label, suggestion, evidence))
    return out


def _overlooked(covering: np.ndarray, pred: _Predictions, cfg: AuditConfig) -> list:
    """Predictions that overlap no label by ``overlap_iou`` (one per object, after NMS)."""
    cover = _iou(pred.boxes, covering).max(axis=1, initial=0.0) if len(pred.boxes) else np.zeros(0)
    free = np.flatnonzero((cover < cfg.overlap_iou) & (pred.scores > 0.0))
    if len(free) == 0:
        return []
    kept = free[_nms_keep(pred.boxes[free], pred.scores[free], cfg.nms_iou)]
    out = []
    for j in kept:
        box, label = pred.boxes[j].astype(np.float64).tolist(), int(pred.labels[j])
        score = 1.0 - float(_ramp(pred.scores[j], 0.0, cfg.min_confidence))
        suggestion = {"action": "add", "box": box, "label": label}
        out.append(("overlooked", score, None, box, label, suggestion, {"pred_score": float(pred.scores[j]), "cover_iou": float(cover[j])}))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The audit


def group_predictions(dataset: DetectionDataset, predictions: Sequence[Mapping], where: str = "predictions") -> list[_Predictions]:
    """COCO results (dataset ids, ``bbox`` ``[x, y, w, h]``) as one :class:`_Predictions` per sample.

    Raises :class:`UserError` naming ``where`` and the first bad entry (see
    :func:`plaindet.data.results.coco_results`).
    """
    try:
        results = coco_results(predictions, {int(s.image_id) for s in dataset.samples}, set(dataset.category_ids))
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    position = {int(s.image_id): k for k, s in enumerate(dataset.samples)}
    contiguous = {int(c): k for k, c in enumerate(dataset.category_ids)}
    per_image: list[list[dict]] = [[] for _ in dataset.samples]
    for r in results:
        per_image[position[r["image_id"]]].append(r)
    grouped = []
    for rows in per_image:
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)], dtype=np.float64).reshape(-1, 4)
        scores = np.clip(np.asarray([r["score"] for r in rows], dtype=np.float64), 0.0, 1.0)
        labels = np.asarray([contiguous[r["category_id"]] for r in rows], dtype=np.int64)
        grouped.append(_Predictions(boxes, scores, labels))
    return grouped


def audit(
    dataset: DetectionDataset,
    predictions: Sequence[Mapping] | str | Path,
    config: AuditConfig | None = None,
    *,
    warnings: Sequence[str] = (),
) -> AuditReport:
    """Audit the labels of ``dataset`` against ``predictions`` (see the module docstring).

    Args:
        dataset: one split, e.g. from :func:`plaindet.data.load_dataset`.
        predictions: COCO results in the dataset's own ids (a list of ``{image_id, category_id,
            bbox [x, y, w, h], score}`` or a JSON file of them), ideally out-of-sample and with no
            score threshold (the low scores tell the spurious labels apart).
        config: the thresholds (default :class:`AuditConfig`).
        warnings: notes carried into the report.

    Returns:
        An :class:`AuditReport`, issues and images ranked lowest score first.

    Raises:
        UserError: a malformed prediction (naming it) or an unreadable predictions file.
    """
    cfg = config or AuditConfig()
    where = "predictions"
    if isinstance(predictions, (str, Path)):
        where, predictions = str(predictions), read_predictions(predictions)
    grouped = group_predictions(dataset, predictions, where)
    candidates: list[Issue] = []
    for k, (sample, pred) in enumerate(zip(dataset.samples, grouped)):
        for kind, score, label_index, box, label, suggestion, evidence in _score_image(sample, pred, cfg):
            candidates.append(Issue(0, kind, round(float(score), 6), k, int(sample.image_id), str(sample.image_path), label_index, box, label, suggestion, evidence))
    candidates.sort(key=lambda i: (i.score, i.image_index, KINDS.index(i.kind), -1 if i.label_index is None else i.label_index))
    issues = [i for i in candidates if i.score < cfg.threshold]
    for n, issue in enumerate(issues, start=1):
        issue.id = n
    lowest = np.ones(len(dataset.samples))
    for i in candidates:
        lowest[i.image_index] = min(lowest[i.image_index], i.score)
    image_scores = sorted(((k, float(s)) for k, s in enumerate(lowest)), key=lambda t: (t[1], t[0]))
    notes = list(warnings)
    blind = _blind_model_warning(candidates, cfg)
    if blind:
        notes.append(blind)
    return AuditReport(dataset, cfg, issues, candidates, image_scores, notes)


def _blind_model_warning(candidates: Sequence[Issue], cfg: AuditConfig) -> str | None:
    """A warning when the predictions support too few labels to audit them: where a model sees almost
    nothing, every label looks spurious and the ranking measures the model, not the labels."""
    spurious = [i.score < cfg.threshold for i in candidates if i.kind == "spurious"]  # one candidate per label
    if not spurious or sum(spurious) <= BLIND_SHARE * len(spurious):
        return None
    return (
        f"the predictions support only {len(spurious) - sum(spurious)} of the {len(spurious)} labels: the other "
        f"{sum(spurious)} ({sum(spurious) / len(spurious):.0%}) are flagged spurious, so the model sees too little to "
        "tell a wrong label from its own blindness and these issues say more about it than about the labels; audit "
        "again with a model that detects this data (longer training, or pretrained weights: backbone_weights=)"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Applying suggestions


def read_suggestions(path: str | Path) -> dict:
    """Read a ``suggestions.json`` written by :meth:`AuditReport.to_json`.

    Raises :class:`UserError` naming the file when it is missing, not JSON, or not an audit report.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read suggestions: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict) or data.get("format") != "plaindet-audit" or not isinstance(data.get("issues"), list):
        raise UserError(f"{path}: not a suggestions.json written by `plaindet data audit`")
    return data


def read_accept(path: str | Path) -> set[int]:
    """Issue ids, one per line (blank lines and ``#`` comments ignored); :class:`UserError` names a bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    ids = set()
    for n, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit():
            raise UserError(f"{path}: line {n}: expected an issue id (a whole number), got {text!r}")
        ids.add(int(text))
    return ids


def corrected_dataset(dataset: DetectionDataset, issues: Sequence[Mapping], where: str = "suggestions") -> DetectionDataset:
    """A copy of ``dataset`` with the suggestions of ``issues`` (dicts as in ``suggestions.json``) applied.

    ``remove`` drops the label, ``relabel`` changes its class, ``move`` replaces its box, ``add``
    appends a box. A label removed is removed whatever else is suggested for it. ``dataset`` itself
    is not changed.

    Raises:
        DatasetError: an issue names an image or label the dataset does not hold, or a label whose
            box differs from the one audited (the dataset changed since the audit), naming both.
    """
    samples = [Sample(s.image_path, s.width, s.height, s.boxes.copy(), s.labels.copy(), s.image_id, s.iscrowd.copy(), None if s.areas is None else s.areas.copy()) for s in dataset.samples]
    by_id = {int(s.image_id): k for k, s in enumerate(samples)}
    removed: list[set[int]] = [set() for _ in samples]
    added: list[list[tuple[list, int]]] = [[] for _ in samples]
    for issue in issues:
        k = by_id.get(int(issue["image_id"]))
        if k is None:
            raise DatasetError(f"{where}: issue {issue.get('id')} names image id {issue['image_id']}, which {dataset.root} ({dataset.split}) does not hold")
        sample, s = samples[k], issue["suggestion"]
        if s["action"] == "add":
            added[k].append((s["box"], int(s["label"])))
            continue
        i = issue["label_index"]
        if i is None or not 0 <= i < len(sample.boxes) or not np.allclose(dataset.samples[k].boxes[i], issue["box"], atol=1e-3):
            raise DatasetError(
                f"{where}: issue {issue.get('id')}: label {i} of {sample.image_path} is not the box audited "
                f"({issue['box']}); the dataset changed since the audit, audit it again"
            )
        if s["action"] == "remove":
            removed[k].add(i)
        elif s["action"] == "relabel":
            sample.labels[i] = int(s["label"])
        elif s["action"] == "move":
            sample.boxes[i] = np.asarray(s["box"], dtype=np.float32)
            if sample.areas is not None:  # the dataset's own area no longer describes the box
                sample.areas[i] = float(np.prod(sample.boxes[i, 2:] - sample.boxes[i, :2]))
        else:
            raise DatasetError(f"{where}: issue {issue.get('id')}: unknown action {s['action']!r}")
    for sample, gone, new in zip(samples, removed, added):
        keep = np.asarray([i not in gone for i in range(len(sample.boxes))], dtype=bool)
        boxes = [sample.boxes[keep]] + [np.asarray([b], dtype=np.float32) for b, _ in new]
        sample.boxes = _clip(np.concatenate(boxes).reshape(-1, 4), sample)
        sample.labels = np.concatenate([sample.labels[keep], np.asarray([c for _, c in new], dtype=np.int64)])
        sample.iscrowd = np.concatenate([sample.iscrowd[keep], np.zeros(len(new), dtype=bool)])
        if sample.areas is not None:
            new_areas = [float((b[2] - b[0]) * (b[3] - b[1])) for b, _ in new]
            sample.areas = np.concatenate([sample.areas[keep], np.asarray(new_areas, dtype=np.float32)])
    return DetectionDataset(samples, dataset.class_names, dataset.category_ids, root=dataset.root, split=dataset.split, format=dataset.format)


def _clip(boxes: np.ndarray, sample: Sample) -> np.ndarray:
    """Predicted boxes clipped to the image, as the readers clip labels (the Sample contract)."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, sample.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, sample.height)
    return boxes


def select_issues(data: Mapping, *, min_score: float | None = None, accept: set[int] | None = None) -> list[dict]:
    """The issues of a ``suggestions.json`` to apply: all of them, those scored below ``min_score``
    (the lower the surer), or the ids in ``accept``; not both options."""
    if min_score is not None and accept is not None:
        raise UserError("give --min-score or --accept, not both")
    issues = list(data["issues"])
    if accept is not None:
        unknown = accept - {int(i["id"]) for i in issues}
        if unknown:
            raise UserError(f"--accept names issue ids not in the suggestions: {sorted(unknown)[:10]}")
        return [i for i in issues if int(i["id"]) in accept]
    if min_score is not None:
        return [i for i in issues if float(i["score"]) < min_score]
    return issues


def apply_suggestions(
    suggestions: str | Path, out: str | Path, *, min_score: float | None = None, accept: set[int] | None = None, copy: bool = False
):
    """Write the audited dataset, with the chosen suggestions applied, as a new dataset in ``out``.

    Every split is written (the audited one corrected, the others as they are), in the dataset's own
    format: COCO (the built-in shapes set is COCO), YOLO or Pascal VOC; what the format cannot hold
    (crowd regions in YOLO, a class left without boxes in VOC) is in the result's ``notes``. Writing
    goes through :func:`plaindet.data.convert.write_datasets`: staged in a hidden folder and renamed
    when complete, images hard-linked (or copied), and the original files are only read.

    Returns ``(result, applied)``: the :class:`~plaindet.data.convert.ConvertResult` and how many
    suggestions were applied. Raises :class:`UserError` on an unreadable suggestions file or a
    dataset that no longer matches it, and :class:`DatasetError` when ``out`` is not new or empty.
    """
    from plaindet.data.convert import write_datasets
    from plaindet.data.formats import list_splits, load_dataset

    data = read_suggestions(suggestions)
    chosen = select_issues(data, min_score=min_score, accept=accept)
    root = data["dataset"]
    datasets = []
    for name in list_splits(root):
        dataset = load_dataset(root, name)
        if dataset.split == data["split"]:
            dataset = corrected_dataset(dataset, chosen, where=str(suggestions))
        datasets.append(dataset)
    to = data["dataset_format"] if data["dataset_format"] in ("yolo", "voc") else "coco"
    result = write_datasets(datasets, to, out, copy=copy)
    return result, len(chosen)
