"""Inference on user images: any input type in, boxes in original pixels out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataclasses import dataclass

import numpy as np
import torch

from plaindet.data.images import read_image
from plaindet.data.transforms import resize_image, resized_size, scale_boxes_to_original


@dataclass
class Detections:
    """Predictions for one image.

    ``boxes``: ``float32 (N, 4)`` xyxy in pixels of the original image; ``scores``: ``float32 (N,)``
    in [0, 1], sorted high to low; ``labels``: ``int64 (N,)`` contiguous class indices;
    ``class_names``: ``N`` names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)


def to_rgb_array(image: Any) -> np.ndarray:
    """One image as ``uint8 (H, W, 3)`` RGB.

    Accepts a path, a PIL image, a ``uint8``/float numpy array ``(H, W, 3)`` or ``(H, W)`` (float in
    [0, 1]), or a tensor ``(3, H, W)`` (``uint8``, or float in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        from PIL import ImageOps

        arr = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}: pass a path, PIL image, array or tensor")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image arrays must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(np.rint(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is ``long_side``, exactly as evaluation does."""
    return resize_image(image, resized_size(image.shape[0], image.shape[1], long_side))


def _as_list(images: Any) -> tuple[list[Any], bool]:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images), True
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


@torch.no_grad()
def predict_images(model, images: Any, *, threshold: float, image_size: int, batch_size: int = 8):
    """See :meth:`plaindet.models.detector.Detector.predict`."""
    items, is_list = _as_list(images)
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
            H, W = -(-hmax // div) * div, -(-wmax // div) * div
            batch = torch.zeros(len(resized), 3, H, W, dtype=torch.uint8)
            for i, r in enumerate(resized):
                batch[i, :, : r.shape[0], : r.shape[1]] = torch.from_numpy(r).permute(2, 0, 1)
            boxes, scores, labels = model.postprocess(model(batch.to(device)))
            for i, (a, r) in enumerate(zip(arrays, resized)):
                keep = scores[i] >= threshold
                b = scale_boxes_to_original(boxes[i][keep].cpu().numpy(), r.shape[:2], a.shape[:2])
                lab = labels[i][keep].cpu().numpy().astype(np.int64)
                names = [model.config.class_names[k] for k in lab]
                results.append(Detections(b, scores[i][keep].cpu().numpy().astype(np.float32), lab, names))
    finally:
        model.train(was_training)
    return results if is_list else results[0]
