"""Box-aware augmentation: resize, letterbox, crop, zoom-out, flip and color jitter, on albumentations.

Every transform here takes and returns the same data:

- ``image``: ``uint8`` array ``(H, W, 3)``, RGB. Normalization belongs to the model, not here.
- ``bboxes``: ``float32`` array ``(N, 4)``, absolute ``x1, y1, x2, y2`` pixels (albumentations'
  ``pascal_voc`` format), and ``labels``: ``(N,)``, one entry per box (the ``label_fields``).

Geometry
--------
- Resizing keeps the aspect ratio: the long side becomes exactly ``size`` and the short side
  ``round(short * size / long)`` (:func:`resized_size`; our own rule, so that
  :func:`scale_boxes_to_original` can invert it exactly).
- Letterbox pads the resized image to a ``size x size`` square at the **bottom and right**: the
  image stays at the top-left corner, so mapping boxes back is a pure scale, with no offset. The
  batch collation pads the same way.
- Box filtering rule (training): after every geometric step, boxes are clipped to the image, and a
  box is kept only when at least ``min_visibility`` (default 0.3) of its area is still inside the
  image and it is at least 1 px wide and high. In practice only the random crop removes boxes. The
  eval transform keeps every box.

Reproducibility
---------------
:class:`TransformedDataset` gives each sample its own random generators, derived from
``(seed, epoch, index)`` and handed to the albumentations pipeline before the sample is transformed
(``Compose.set_random_state``). The augmentation of sample ``i`` in epoch ``e`` is therefore the same
whatever the number of data-loader workers and whatever order the samples are drawn in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric.pad import Pad
from albumentations.core.transforms_interface import DualTransform

from plaindet.data.images import read_image
from plaindet.data.resize import resize_image, resized_size, scale_boxes_to_original
from plaindet.data.sample import DetectionDataset

__all__ = [
    "PadToSquare",
    "ResizeLongSide",
    "TransformedDataset",
    "ZoomOut",
    "eval_transform",
    "resized_size",
    "scale_boxes_to_original",
    "train_transform",
]

# Gray fill for letterbox and zoom-out canvases: close to the ImageNet mean, so after the model's
# normalization the filled area is near zero instead of a strong black edge.
DEFAULT_FILL = 114


class ResizeLongSide(DualTransform):
    """Resize so the long side is ``size`` (or, per sample, one of ``sizes`` chosen uniformly).

    Albumentations' ``LongestMaxSize`` truncates ``long * (size / long)``, which gives ``size - 1``
    for many image sizes; this transform makes the long side exact (see :func:`resized_size`).
    Boxes need no change: albumentations keeps them normalized to the image size internally.
    Downscaling uses area interpolation (no aliasing), upscaling bilinear.
    """

    def __init__(self, size: int | Sequence[int], p: float = 1.0) -> None:
        super().__init__(p=p)
        sizes = [size] if isinstance(size, (int, np.integer)) else list(size)
        if not sizes or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"ResizeLongSide: sizes must be positive integers, got {size!r}")
        self.size = size
        self._sizes = [int(s) for s in sizes]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        long_side = self._sizes[0] if len(self._sizes) == 1 else self.py_random.choice(self._sizes)
        return {"out_hw": resized_size(height, width, long_side)}

    def apply(self, img: np.ndarray, out_hw: tuple[int, int], **params: Any) -> np.ndarray:
        return resize_image(img, out_hw)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalized coordinates do not change under a resize


class PadToSquare(Pad):
    """Pad at the bottom and right to a square whose side is the image's long side (letterbox).

    The image stays at the top-left corner, so boxes do not move and mapping predictions back to
    the original image is a pure scale.
    """

    def __init__(self, fill: float | tuple[float, ...] = DEFAULT_FILL, p: float = 1.0) -> None:
        super().__init__(padding=0, fill=fill, border_mode=cv2.BORDER_CONSTANT, p=p)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        side = max(height, width)
        return {"pad_top": 0, "pad_bottom": side - height, "pad_left": 0, "pad_right": side - width}


class ZoomOut(DualTransform):
    """Shrink the image by a random factor ``r`` in ``[1, max_ratio]`` onto a canvas of its own size.

    The shrunk image is placed at a uniformly random position and the rest is filled with ``fill``.
    This is the classic SSD "zoom out" (place the image on a canvas ``r`` times larger, at a random
    position) followed by a resize back to the input size, done in one step at the current
    resolution, so it is cheap when applied after the resize. It makes objects smaller and teaches
    the model about small objects; boxes only shrink and move, none is lost.
    """

    def __init__(self, max_ratio: float = 2.0, fill: float | tuple[float, ...] = DEFAULT_FILL, p: float = 0.5) -> None:
        super().__init__(p=p)
        if max_ratio < 1:
            raise ValueError(f"ZoomOut: max_ratio must be >= 1, got {max_ratio}")
        self.max_ratio = max_ratio
        self.fill = fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        inner_h, inner_w = max(1, round(height / ratio)), max(1, round(width / ratio))
        x0 = self.py_random.randint(0, width - inner_w)
        y0 = self.py_random.randint(0, height - inner_h)
        return {"inner_hw": (inner_h, inner_w), "offset": (x0, y0)}

    def apply(self, img: np.ndarray, inner_hw: tuple[int, int], offset: tuple[int, int], **params: Any) -> np.ndarray:
        (inner_h, inner_w), (x0, y0) = inner_hw, offset
        small = cv2.resize(img, (inner_w, inner_h), interpolation=cv2.INTER_AREA)
        canvas = np.empty_like(img)
        canvas[...] = np.asarray(self.fill, dtype=img.dtype)
        canvas[y0 : y0 + inner_h, x0 : x0 + inner_w] = small.reshape((inner_h, inner_w) + img.shape[2:])
        return canvas

    def apply_to_bboxes(
        self, bboxes: np.ndarray, inner_hw: tuple[int, int], offset: tuple[int, int], **params: Any
    ) -> np.ndarray:
        # Boxes are normalized to the image size; a pixel x lands at x * inner_w / width + x0.
        height, width = params["shape"][:2]
        (inner_h, inner_w), (x0, y0) = inner_hw, offset
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * inner_w + x0) / width
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * inner_h + y0) / height
        return out


def _bbox_params(min_visibility: float, min_side: float) -> A.BboxParams:
    # clip=True: boxes that touch or cross the border by float error are clipped instead of
    # rejected. filter_invalid_bboxes drops degenerate boxes instead of raising.
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        clip=True,
        filter_invalid_bboxes=True,
        min_visibility=min_visibility,
        min_width=min_side,
        min_height=min_side,
    )


def train_transform(
    size: int = 640,
    *,
    scales: Sequence[int] | None = None,
    letterbox: bool = False,
    hflip: float = 0.5,
    crop: float = 0.5,
    crop_fraction: float = 0.3,
    zoom_out: float = 0.2,
    zoom_out_max: float = 2.0,
    jitter: float = 0.8,
    min_visibility: float = 0.3,
    fill: int = DEFAULT_FILL,
) -> A.Compose:
    """The training augmentation pipeline (see the module docstring for the data contract).

    In order: random crop (at the original resolution, where it is a cheap slice), resize to a long
    side of ``size`` (or one of ``scales`` per sample), zoom-out, horizontal flip, color jitter,
    then the optional letterbox pad.

    Args:
        size: long side of the output image.
        scales: when given, each sample's long side is chosen uniformly from these (multi-scale
            training) and ``size`` is not used.
        letterbox: pad to a square at the bottom-right (``size x size``, or ``s x s`` for the chosen
            scale ``s``).
        hflip: probability of a horizontal flip.
        crop: probability of a random crop; the crop removes up to ``crop_fraction`` of the width
            from each of the left and right sides, and likewise of the height.
        zoom_out: probability of :class:`ZoomOut`, shrinking the image by up to ``zoom_out_max``.
        jitter: probability of photometric jitter (brightness, contrast, saturation +-20/20/30 %,
            hue +-0.015 of the color wheel).
        min_visibility: a box is dropped when less than this fraction of its area remains in the
            image (after the crop); kept boxes are clipped to the image.
        fill: gray level of the letterbox and zoom-out canvas.
    """
    steps: list[A.BasicTransform] = []
    if crop > 0:
        f = crop_fraction
        steps.append(A.RandomCropFromBorders(crop_left=f, crop_right=f, crop_top=f, crop_bottom=f, p=crop))
    steps.append(ResizeLongSide(list(scales) if scales else size))
    if zoom_out > 0:
        steps.append(ZoomOut(zoom_out_max, fill=fill, p=zoom_out))
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if jitter > 0:
        # Jitter before the letterbox pad so the pad stays the plain fill gray.
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.3, hue=0.015, p=jitter))
    if letterbox:
        steps.append(PadToSquare(fill))
    return A.Compose(steps, bbox_params=_bbox_params(min_visibility, min_side=1.0))


def eval_transform(size: int = 640, letterbox: bool = False, *, fill: int = DEFAULT_FILL) -> A.Compose:
    """The deterministic evaluation pipeline: resize to a long side of ``size``, optionally letterbox.

    No box is dropped. Predictions on the transformed image map back to the original image with
    :func:`scale_boxes_to_original` (same ``letterbox``).
    """
    steps: list[A.BasicTransform] = [ResizeLongSide(size)]
    if letterbox:
        steps.append(PadToSquare(fill))
    return A.Compose(steps, bbox_params=_bbox_params(min_visibility=0.0, min_side=0.0))


class TransformedDataset(torch.utils.data.Dataset):
    """A map-style dataset that reads each sample's image and applies a box-aware transform.

    ``dataset[i]`` returns a dict:

    - ``image``: ``uint8`` array ``(h, w, 3)``, RGB, C-contiguous; not normalized.
    - ``boxes``: ``float32`` array ``(N, 4)``, absolute ``x1, y1, x2, y2`` pixels of ``image``.
    - ``labels``: ``int64`` array ``(N,)``, contiguous class indices.
    - ``iscrowd``: ``bool`` array ``(N,)`` (all False unless ``keep_crowd``).
    - ``image_id``: ``int``, the sample's ``image_id``.
    - ``orig_size``: ``(H, W)`` of the original (EXIF-oriented) image; ``size``: ``(h, w)`` of ``image``.

    Args:
        dataset: the samples.
        transform: an albumentations ``Compose`` with ``bbox_params`` in ``pascal_voc`` format and
            ``label_fields=["labels"]`` (as :func:`train_transform` and :func:`eval_transform` build),
            or ``None`` for no transform.
        seed: base seed of the per-sample augmentation randomness (non-negative).
        keep_crowd: keep crowd boxes (for evaluation); by default they are dropped, since crowd
            regions are not training targets.
    """

    def __init__(
        self, dataset: DetectionDataset, transform: A.Compose | None, *, seed: int = 0, keep_crowd: bool = False
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.keep_crowd = keep_crowd
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of ``epoch``. Call it before each epoch's loader pass."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        image = read_image(sample.image_path)
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        keep = np.ones(len(sample.boxes), dtype=bool) if self.keep_crowd else ~sample.iscrowd
        boxes, labels, iscrowd = sample.boxes[keep], sample.labels[keep], sample.iscrowd[keep]

        if self.transform is not None:
            # A fresh generator per (seed, epoch, index), handed to every step of the pipeline:
            # the result does not depend on worker count or on which samples were drawn before.
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            py_rng = random.Random(int(rng.integers(2**63)))
            self.transform.set_random_state(rng, py_rng)
            # Box indices travel as the label field, so whatever boxes the transform drops, each
            # survivor's label and crowd flag can be looked up.
            out = self.transform(image=image, bboxes=boxes, labels=np.arange(len(boxes)))
            survivors = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels, iscrowd = labels[survivors], iscrowd[survivors]

        return {
            "image": np.ascontiguousarray(image),  # a flip leaves negative strides torch cannot take
            "boxes": boxes,
            "labels": labels,
            "iscrowd": iscrowd,
            "image_id": int(sample.image_id),
            "orig_size": orig_size,
            "size": (int(image.shape[0]), int(image.shape[1])),
        }
