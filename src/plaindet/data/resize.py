"""The resize rule shared by training, evaluation and inference, and its inverse for boxes.

numpy and OpenCV only, no torch: the ONNX Runtime predictor (:mod:`plaindet.export.ort`) resizes
through here too, so a deployed model sees exactly the pixels PyTorch was evaluated on.
:mod:`plaindet.data.transforms` re-exports these functions.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

__all__ = ["resize_image", "resized_size", "scale_boxes_to_original"]


def resized_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(height, width)`` after resizing so that the long side is ``long_side``, aspect ratio kept.

    The long side becomes exactly ``long_side``; the short side is rounded to the nearest pixel
    (at least 1). :class:`~plaindet.data.transforms.ResizeLongSide` and
    :func:`scale_boxes_to_original` both use this rule.
    """
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``img`` to ``out_hw``: area interpolation when shrinking (no aliasing), bilinear when growing.

    Training, evaluation and :meth:`Detector.predict` all resize through here, so a deployed model
    sees exactly the pixels it was evaluated on.
    """
    if img.shape[:2] == tuple(out_hw):
        return img
    downscale = out_hw[0] * out_hw[1] < img.shape[0] * img.shape[1]
    interpolation = cv2.INTER_AREA if downscale else cv2.INTER_LINEAR
    out = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=interpolation)
    return out.reshape(tuple(out_hw) + img.shape[2:])  # cv2 drops a trailing channel axis of size 1


def scale_boxes_to_original(boxes, size: tuple[int, int], orig_size: tuple[int, int], letterbox: bool = False):
    """Map ``x1, y1, x2, y2`` pixel boxes from an :func:`~plaindet.data.transforms.eval_transform` image to the original image.

    Args:
        boxes: ``(..., 4)`` absolute xyxy pixels in the transformed image (numpy or torch).
        size: ``(h, w)`` of the transformed image (the dataset item's ``size``); with ``letterbox``
            the padded square, whose side is the resize target.
        orig_size: ``(h, w)`` of the original image (the dataset item's ``orig_size``).
        letterbox: whether the transform padded to a square (top-left placement, so no offset).

    Returns:
        Boxes of the same type and shape, float32, in original pixels, clipped to the image.
    """
    orig_h, orig_w = (int(v) for v in orig_size)
    h, w = (int(v) for v in size)
    if letterbox:
        h, w = resized_size(orig_h, orig_w, max(h, w))  # the image part of the padded square
    scale = [orig_w / w, orig_h / h, orig_w / w, orig_h / h]
    upper = [orig_w, orig_h, orig_w, orig_h]
    # A torch tensor can only exist once torch is imported; looking it up keeps this module torch-free.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(boxes, torch.Tensor):
        out = boxes.float() * boxes.new_tensor(scale, dtype=torch.float32)
        return torch.minimum(out.clamp(min=0), out.new_tensor(upper))
    out = np.asarray(boxes, dtype=np.float32) * np.asarray(scale, dtype=np.float32)
    return np.clip(out, 0, np.asarray(upper, dtype=np.float32))
