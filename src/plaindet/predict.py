"""Inference on user images: any input type in, boxes in original pixels out.

The numpy steps (reading, resizing, padding, mapping boxes back) live in the torch-free
:mod:`plaindet.detections`, shared with the ONNX Runtime predictor; this module runs the PyTorch model.
"""

from __future__ import annotations

from typing import Any

import torch

from plaindet.detections import (  # noqa: F401 (Detections, to_rgb_array, resize_long_side re-exported)
    Detections,
    pad_batch,
    predict_in_batches,
    resize_long_side,
    to_rgb_array,
)


@torch.no_grad()
def predict_images(model, images: Any, *, threshold: float, image_size: int, batch_size: int = 8):
    """See :meth:`plaindet.models.detector.Detector.predict`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    div = model.size_divisor

    def run(resized):
        hmax = max(r.shape[0] for r in resized)
        wmax = max(r.shape[1] for r in resized)
        batch = torch.from_numpy(pad_batch(resized, -(-hmax // div) * div, -(-wmax // div) * div))
        return tuple(t.cpu().numpy() for t in model.postprocess(model(batch.to(device))))

    try:
        return predict_in_batches(
            images, run, image_size=image_size, batch_size=batch_size, threshold=threshold, class_names=model.config.class_names
        )
    finally:
        model.train(was_training)
