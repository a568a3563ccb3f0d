"""Running a detector over a dataset: COCO results in the dataset's ids, and their metrics."""

from __future__ import annotations

import torch

from plaindet.data.collate import make_loader
from plaindet.data.sample import DetectionDataset
from plaindet.data.transforms import TransformedDataset, eval_transform, scale_boxes_to_original


@torch.no_grad()
def predict_dataset(
    model,
    dataset: DetectionDataset,
    *,
    image_size: int | None = None,
    batch_size: int = 8,
    score_threshold: float = 0.0,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> list[dict]:
    """Predict every image of ``dataset``; returns COCO results ``{image_id, category_id, bbox, score}``.

    Images are resized like :func:`~plaindet.data.transforms.eval_transform` (long side
    ``image_size``), boxes are mapped back to original pixels and written ``[x, y, w, h]``;
    ``category_id`` is the dataset's own id (``dataset.category_ids``). At most
    ``model.config.max_detections`` per image (COCO's AP uses 100).
    """
    image_size = image_size or model.config.image_size
    if len(model.config.category_ids) != dataset.num_classes:
        raise ValueError(f"the model has {model.config.num_classes} classes but the dataset has {dataset.num_classes}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = make_loader(
        TransformedDataset(dataset, eval_transform(image_size)),
        batch_size,
        shuffle=False,
        seed=0,
        num_workers=num_workers,
        size_divisor=model.size_divisor,
    )
    results: list[dict] = []
    try:
        for batch in loader:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(batch["images"].to(device))
            boxes, scores, labels = model.postprocess(outputs)
            for b, s, lab, tgt in zip(boxes.cpu(), scores.cpu(), labels.cpu(), batch["targets"]):
                keep = s >= score_threshold
                b = scale_boxes_to_original(b[keep], tuple(tgt["size"]), tuple(tgt["orig_size"]))
                for (x1, y1, x2, y2), score, k in zip(b.tolist(), s[keep].tolist(), lab[keep].tolist()):
                    results.append(
                        {
                            "image_id": int(tgt["image_id"]),
                            "category_id": int(dataset.category_ids[k]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score),
                        }
                    )
    finally:
        model.train(was_training)
    return results


def evaluate_model(model, dataset: DetectionDataset, **kwargs):
    """COCO metrics of ``model`` on ``dataset`` (see :func:`predict_dataset` for ``kwargs``)."""
    from plaindet.engine.evaluate import evaluate_coco

    return evaluate_coco(dataset, predict_dataset(model, dataset, **kwargs))
