"""Detection losses as plain functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "sum") -> Tensor:
    """Summed focal loss (Lin et al. 2017) of independent sigmoid classifiers.

    ``logits`` and ``targets`` have the same shape; ``targets`` in [0, 1] (soft targets allowed).
    ``reduction="none"`` returns the elementwise loss instead of its sum.
    Computed in float32: under bf16 autocast the ``(1 - p) ** gamma`` term loses the small values
    that the loss is all about.
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum() if reduction == "sum" else loss


def varifocal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.75, gamma: float = 2.0, reduction: str = "sum") -> Tensor:
    """Summed varifocal loss (Zhang et al. 2021, VarifocalNet) of independent sigmoid classifiers.

    ``targets`` in [0, 1]: a positive's target is its localization quality (the IoU of its box with
    the object's), 0 elsewhere. Positives weigh their binary cross-entropy by that target, so
    well-placed boxes learn the highest scores; negatives are down-weighted by ``alpha * p ** gamma``
    as in the focal loss. Computed in float32, like :func:`sigmoid_focal_loss`; ``reduction`` as there.
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    weight = torch.where(targets > 0, targets, alpha * p.pow(gamma)).detach()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight
    return loss.sum() if reduction == "sum" else loss


def focal_cost(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-class matching cost of labeling each prediction positive: focal(positive) - focal(negative).

    ``logits``: ``(..., K)``; returns the same shape. Lower is better. This is the classification
    term of OneNet's and Deformable DETR's matching cost: it charges what the focal loss would charge
    for calling the prediction foreground, minus what it would charge for leaving it background.
    """
    p = logits.float().sigmoid()
    eps = 1e-8
    pos = alpha * (1 - p) ** gamma * (-(p + eps).log())
    neg = (1 - alpha) * p**gamma * (-(1 - p + eps).log())
    return pos - neg


def loss_normalizer(count: float, device: torch.device | None = None) -> float:
    """The divisor that makes a per-object loss sum equal its global-batch mean under data parallelism.

    DDP averages gradients over the ``W`` processes, so each process divides its own loss sum by
    ``total / W``, where ``total`` is ``count`` summed over processes: the averaged gradient then
    equals that of one process holding the whole batch (``sum / total``). Without a process group
    this is ``max(count, 1)``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return max(t.item(), 1.0) / dist.get_world_size()
    return max(float(count), 1.0)

