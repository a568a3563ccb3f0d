"""Box conversions and overlaps. Boxes are ``(..., 4)`` tensors; the format is in each name.

- ``xyxy``: ``x1, y1, x2, y2`` corners.
- ``cxcywh``: center and size.
Units (pixels or normalized to [0, 1]) pass through unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1), dim=-1)


def box_area(b: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes; degenerate boxes count as zero."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor, pairwise: bool) -> tuple[Tensor, Tensor]:
    if pairwise:
        a, b = a[..., :, None, :], b[..., None, :, :]
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor, *, pairwise: bool = True, eps: float = 1e-7) -> Tensor:
    """IoU of ``xyxy`` boxes: ``(..., N, M)`` for every pair, or ``(..., N)`` elementwise."""
    inter, union = _inter_union(a, b, pairwise)
    return inter / union.clamp(min=eps)


def generalized_box_iou(a: Tensor, b: Tensor, *, pairwise: bool = True, eps: float = 1e-7) -> Tensor:
    """GIoU (Rezatofighi et al. 2019) of ``xyxy`` boxes, in [-1, 1]; same shapes as :func:`box_iou`."""
    inter, union = _inter_union(a, b, pairwise)
    iou = inter / union.clamp(min=eps)
    if pairwise:
        a, b = a[..., :, None, :], b[..., None, :, :]
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=eps)
