"""Assigning ground-truth boxes to predictions.

One-to-one assignment is what lets a detector skip NMS: each object is claimed by exactly one
prediction, and every other prediction is trained as background. OneNet's lesson is that the cost
used to choose that prediction must include the box location, not only the class score; otherwise
the chosen prediction is not the best-localized one and duplicates survive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


# ------------------------------------------------------------------------------------------------
# Batched matching for set-prediction detectors (DETR and kin)
#
# DETR-style training matches the final and every auxiliary decoder output of every image: layers x
# batch assignment problems per step. The usual code (DETR, RT-DETR, D-FINE, RF-DETR) loops over
# layers, builds one cost matrix per layer against all targets of the batch (B*Q x sum(G), most of it
# thrown away), copies it to the host and solves per image. Here the caller builds every cost
# matrix in one batched tensor op (problems padded to the largest target count), and the solvers
# below take the whole stack: one device-to-host copy and one copy back for the exact solver, none
# for the Sinkhorn solver. Both return the same padded format, a query index per target.


def batched_min_cost_assignment(cost: Tensor, num_targets: Sequence[int]) -> Tensor:
    """Exact minimum-cost one-to-one assignments of a stack of padded problems.

    Args:
        cost: ``(N, Q, G)`` costs of giving target ``g`` to query ``q`` in problem ``n``; problem
            ``n`` uses only its first ``num_targets[n]`` columns, the rest is padding (ignored).
        num_targets: ``N`` target counts (host integers, so no device sync is needed to read them).

    Returns ``(N, G)`` int64 on ``cost``'s device: the query assigned to each target, ``-1`` for
    padding and, when a problem has more targets than queries, for the targets left unassigned.
    Each query is used at most once per problem and the total cost is minimal (scipy's exact
    Jonker-Volgenant solver, once per problem, on one host copy of the whole stack).
    """
    n, _, g_max = cost.shape
    if len(num_targets) != n:
        raise ValueError(f"{len(num_targets)} target counts for {n} problems")
    out = np.full((n, g_max), -1, dtype=np.int64)
    if g_max > 0 and n > 0:
        # (N, G, Q): each problem's valid rows are then one contiguous block with rows <= columns,
        # the orientation scipy solves without a transposed copy.
        c = cost.detach().float().transpose(1, 2).contiguous().cpu().numpy()
        for i, g in enumerate(num_targets):
            if g == 0:
                continue
            sub = c[i, :g]
            if not np.isfinite(sub).all():
                raise ValueError("matching cost contains NaN or inf (the model's outputs are not finite)")
            rows, cols = linear_sum_assignment(sub)
            out[i, rows] = cols
    return torch.from_numpy(out).to(cost.device, non_blocking=True)


@torch.no_grad()
def sinkhorn_assignment(
    cost: Tensor,
    num_targets: Sequence[int] | Tensor,
    epsilon: float = 3e-4,
    iterations: int = 60,
) -> Tensor:
    """Approximate one-to-one assignments of a stack of padded problems by entropic optimal transport,
    run batched on ``cost``'s device (no host copy, no sync).

    Args and return value as :func:`batched_min_cost_assignment` (``num_targets`` may also be a
    tensor on ``cost``'s device). ``epsilon``: the entropic regularization, relative to each
    problem's cost range (costs are rescaled to [0, 1]); smaller is closer to the exact assignment.
    The regularization starts at 1 and decays geometrically to ``epsilon`` over the first half of
    the ``iterations`` (epsilon scaling), which converges in far fewer iterations than starting at
    a small one. The defaults agree with the exact assignment on 99.6 to 100% of targets of DETR-like
    and uniformly random problems (``benchmarks/bench_matching.py``, ``tests/test_matching.py``).

    The transport problem is balanced with a dummy query and a dummy target: every real query and
    target carries mass 1, the dummy target absorbs the ``Q`` queries left unmatched (at cost 0), the
    dummy query the ``G`` targets left unmatched (at cost 2, above any real cost, so that every
    target is matched when ``G <= Q``). Padded targets carry no mass. The plan is then rounded to a
    valid assignment greedily, highest plan entry first, each query and target used at most once.
    """
    n, q, g_max = cost.shape
    device = cost.device
    if g_max == 0 or n == 0:
        return torch.full((n, g_max), -1, dtype=torch.int64, device=device)
    counts = torch.as_tensor(num_targets, device=device, dtype=torch.int64)
    valid = torch.arange(g_max, device=device)[None, :] < counts[:, None]  # (N, G)
    # No finiteness check: it would cost a device sync. A non-finite cost gives a valid but arbitrary
    # assignment (NaN entries are never taken), and the loss it feeds is non-finite anyway.
    c = cost.detach().float()

    # Rescale each problem to [0, 1] over its valid entries, so epsilon means the same everywhere.
    big = torch.finfo(torch.float32).max
    lo = c.masked_fill(~valid[:, None, :], big).amin(dim=(1, 2), keepdim=True)
    hi = c.masked_fill(~valid[:, None, :], -big).amax(dim=(1, 2), keepdim=True)
    lo = torch.where(valid.any(1)[:, None, None], lo, torch.zeros_like(lo))
    hi = torch.where(valid.any(1)[:, None, None], hi, torch.ones_like(hi))
    c = ((c - lo) / (hi - lo).clamp(min=1e-9)).masked_fill(~valid[:, None, :], 0.0)

    # Augmented (N, Q + 1, G + 1) problem: last row is the dummy query, last column the dummy target.
    aug = torch.zeros(n, q + 1, g_max + 1, device=device)
    aug[:, :q, :g_max] = c
    aug[:, q, :g_max] = 2.0
    log_a = torch.zeros(n, q + 1, device=device)
    log_a[:, q] = torch.log(counts.clamp(min=1).float())  # G of mass for the G targets left unmatched
    log_b = torch.where(valid, 0.0, -1e4)  # padded targets: (numerically) no mass
    log_b = torch.cat([log_b, torch.full((n, 1), math.log(q), device=device)], dim=1)

    f = torch.zeros(n, q + 1, device=device)
    g = torch.zeros(n, g_max + 1, device=device)
    anneal = max(iterations // 2, 1)
    decay = epsilon ** (1.0 / anneal) if epsilon < 1.0 else 1.0
    eps = 1.0
    for it in range(iterations):
        eps = max(epsilon, decay ** (it + 1))
        f = eps * (log_a - torch.logsumexp((g[:, None, :] - aug) / eps, dim=2))
        g = eps * (log_b - torch.logsumexp((f[:, :, None] - aug) / eps, dim=1))
    log_plan = (f[:, :q, None] + g[:, None, :g_max] - aug[:, :q, :g_max]) / eps  # (N, Q, G)

    # Greedy rounding: at most min(Q, G) rounds, each takes every problem's largest remaining entry.
    log_plan = log_plan.masked_fill(~valid[:, None, :], -math.inf)
    out = torch.full((n, g_max), -1, dtype=torch.int64, device=device)
    rows = torch.arange(n, device=device)
    for _ in range(min(q, g_max)):
        best, flat = log_plan.flatten(1).max(dim=1)
        take = best > -math.inf  # False once a problem has nothing left (or only NaN)
        qi, gi = flat // g_max, flat % g_max
        out[rows, gi] = torch.where(take, qi, out[rows, gi])
        # Retire the chosen query (row) and target (column); for a problem with nothing left this
        # writes -inf over -inf. Written without boolean indexing, so nothing here syncs the device.
        log_plan[rows, qi, :] = -math.inf
        log_plan[rows, :, gi] = -math.inf
    return out
