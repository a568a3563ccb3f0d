"""Inference on user images: any input type in, boxes in original pixels out.

The numpy steps (reading, resizing, padding, mapping boxes back) live in the torch-free
:mod:`plaindet.detections`, shared with the ONNX Runtime predictor; this module runs the PyTorch model.
"""

from __future__ import annotations

from typing import Any

import torch

from plaindet.detections import (  # noqa: F401 (Detections, to_rgb_array, resize_long_side re-exported)
    Detections,
    as_image_list,
    detections_for_image,
    pad_batch,
    resize_long_side,
    to_rgb_array,
)


@torch.no_grad()
def predict_images(model, images: Any, *, threshold: float, image_size: int, batch_size: int = 8):
    """See :meth:`plaindet.models.detector.Detector.predict`."""
    items, is_list = as_image_list(images)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    div = model.size_divisor
    results = []
    try:
        for start in range(0, len(items), batch_size):
            arrays = [to_rgb_array(im) for im in items[start : start + batch_size]]
            resized = [resize_long_side(a, image_size) for a in arrays]
            hmax = max(r.shape[0] for r in resized)
            wmax = max(r.shape[1] for r in resized)
            batch = torch.from_numpy(pad_batch(resized, -(-hmax // div) * div, -(-wmax // div) * div))
            boxes, scores, labels = (t.cpu().numpy() for t in model.postprocess(model(batch.to(device))))
            for i, (a, r) in enumerate(zip(arrays, resized)):
                results.append(
                    detections_for_image(
                        boxes[i],
                        scores[i],
                        labels[i],
                        threshold=threshold,
                        resized_hw=r.shape[:2],
                        orig_hw=a.shape[:2],
                        class_names=model.config.class_names,
                    )
                )
    finally:
        model.train(was_training)
    return results if is_list else results[0]
