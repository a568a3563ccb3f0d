"""Assigning ground-truth boxes to predictions.

One-to-one assignment is what lets a detector skip NMS: each object is claimed by exactly one
prediction, and every other prediction is trained as background. OneNet's lesson is that the cost
used to choose that prediction must include the box location, not only the class score; otherwise
the chosen prediction is not the best-localized one and duplicates survive.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def min_cost_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of minimum total cost (exact, via scipy's Jonker-Volgenant solver).

    Args:
        cost: ``(P, G)`` cost of giving ground truth ``g`` to prediction ``p``.

    Returns ``(pred_idx, gt_idx)``, int64 tensors of length ``min(P, G)`` on ``cost``'s device, sorted
    by ``gt_idx``; each prediction and each ground truth appears at most once. When every ground truth
    has a different cheapest prediction this equals OneNet's per-object argmin; when two objects share
    their cheapest prediction, it resolves the collision at the least total cost.
    """
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64, device=cost.device)
        return empty, empty
    c = cost.detach().float().cpu().numpy()
    if not np.isfinite(c).all():
        raise ValueError("matching cost contains NaN or inf (the model's outputs are not finite)")
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    pred = torch.as_tensor(rows[order], dtype=torch.int64, device=cost.device)
    gt = torch.as_tensor(cols[order], dtype=torch.int64, device=cost.device)
    return pred, gt
