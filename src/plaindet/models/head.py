"""A dense detection head: class logits and one box at every location of every pyramid level.

After OneNet (Sun et al. 2021, "What Makes for End-to-End Object Detection?"): the head itself is
an ordinary dense head; what makes it end-to-end is training with one-to-one assignment whose cost
includes the box location (see :mod:`plaindet.ops.matching`), so at inference a plain top-k over the
scores needs no NMS.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from plaindet.models.layers import LayerNorm2d


def _tower(channels: int, depth: int) -> nn.Sequential:
    # Depthwise-separable convs keep the head cheap at stride 8, where most locations are.
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
            LayerNorm2d(channels),
            nn.GELU(),
        ]
    return nn.Sequential(*layers)


def level_centers(h: int, w: int, stride: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel centers ``(h * w, 2)`` as ``(x, y)`` of a stride-``stride`` grid, row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).reshape(-1, 2)


class DenseHead(nn.Module):
    """Shared across levels; predicts per location class logits and distances to the box sides.

    Args:
        channels: channels of every pyramid level.
        num_classes: number of object classes (no background class: scores are sigmoids).
        strides: stride of each level, in the order the levels are given.
        depth: conv layers in each of the class and box towers.
        prior_prob: initial foreground probability, so the focal loss starts near its optimum for
            the overwhelming background (RetinaNet's initialization).

    Input: a list of ``(B, channels, H_l, W_l)`` maps. Output dict:
        ``logits``: ``(B, L, num_classes)`` raw class logits, ``L = sum(H_l * W_l)``.
        ``boxes``: ``(B, L, 4)`` ``xyxy`` in input-image pixels.
        ``centers``: ``(L, 2)`` location centers ``(x, y)`` in pixels; ``strides``: ``(L,)``.
    """

    def __init__(self, channels: int, num_classes: int, strides: tuple[int, ...], depth: int = 2, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.cls_tower = _tower(channels, depth)
        self.box_tower = _tower(channels, depth)
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, 4, 3, padding=1)
        # A learned scale per level lets levels with different strides share one box predictor.
        self.level_scales = nn.Parameter(torch.ones(len(self.strides)))
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.normal_(self.box_out.weight, std=0.01)
        # exp(log 2) * stride: initial boxes span four strides, a middle size for every level.
        nn.init.constant_(self.box_out.bias, math.log(2.0))

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        logits, boxes, centers, strides = [], [], [], []
        for i, (x, stride) in enumerate(zip(features, self.strides)):
            b, _, h, w = x.shape
            logits.append(self.cls_out(self.cls_tower(x)).flatten(2).transpose(1, 2))
            # Distances to the left, top, right and bottom sides in units of the stride; computed in
            # float32 because exp overflows bf16's range long before float32's.
            raw = self.box_out(self.box_tower(x)).flatten(2).transpose(1, 2).float()
            ltrb = torch.exp((raw * self.level_scales[i]).clamp(max=10.0)) * stride
            c = level_centers(h, w, stride, x.device)
            boxes.append(torch.cat((c - ltrb[..., :2], c + ltrb[..., 2:]), dim=-1))
            centers.append(c)
            strides.append(torch.full((h * w,), float(stride), device=x.device))
        return {
            "logits": torch.cat(logits, 1),
            "boxes": torch.cat(boxes, 1),
            "centers": torch.cat(centers, 0),
            "strides": torch.cat(strides, 0),
        }
