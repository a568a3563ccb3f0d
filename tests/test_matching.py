"""Batched set matching: the exact solver against scipy problem by problem, the Sinkhorn solver's
validity and agreement, and the DETR criterion's batched matching against the per-layer,
per-image loop that DETR runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from plaindet.models.set_criterion import SetCriterion, SetLossConfig, pad_targets
from plaindet.ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from plaindet.ops.matching import batched_min_cost_assignment, min_cost_assignment, sinkhorn_assignment


def padded_problems(generator: torch.Generator, counts: list[int], q: int, ties: bool = False) -> torch.Tensor:
    """``(N, Q, max(counts))`` costs; with ``ties`` small integers (many equal costs). Padding holds
    garbage (huge values) that a correct solver never looks at."""
    g_max = max(counts)
    if ties:
        cost = torch.randint(0, 3, (len(counts), q, g_max), generator=generator).float()
    else:
        cost = torch.rand(len(counts), q, g_max, generator=generator) * 10 - 3
    for i, g in enumerate(counts):
        cost[i, :, g:] = 1e6 * torch.rand(q, g_max - g, generator=generator)
    return cost


def check_assignment(match: torch.Tensor, counts: list[int], q: int) -> None:
    """One-to-one, in range, ``-1`` exactly on padding and on the targets left over when G > Q."""
    for i, g in enumerate(counts):
        row = match[i]
        assert (row[g:] == -1).all()
        used = row[:g][row[:g] >= 0]
        assert len(used) == min(g, q), f"problem {i}: {len(used)} of {g} targets matched with {q} queries"
        assert len(set(used.tolist())) == len(used)
        assert ((used >= 0) & (used < q)).all()


def assignment_cost(cost: torch.Tensor, match_row: torch.Tensor, g: int) -> float:
    targets = torch.arange(g)[match_row[:g] >= 0]
    return float(cost[match_row[targets], targets].sum())


@pytest.mark.parametrize(("q", "counts", "ties"), [(30, [5, 0, 17, 30, 1], False), (30, [5, 0, 17, 30, 1], True), (6, [9, 6, 2, 0], False), (6, [9, 6, 2, 0], True)])
def test_exact_batched_assignment_is_optimal_problem_by_problem(q, counts, ties):
    g = torch.Generator().manual_seed(0)
    cost = padded_problems(g, counts, q, ties)
    match = batched_min_cost_assignment(cost, counts)
    assert match.shape == (len(counts), max(counts)) and match.dtype == torch.int64
    check_assignment(match, counts, q)
    for i, n in enumerate(counts):
        if n == 0:
            continue
        rows, cols = linear_sum_assignment(cost[i, :, :n].numpy())
        optimal = float(cost[i, :, :n].numpy()[rows, cols].sum())
        assert assignment_cost(cost[i], match[i], n) == pytest.approx(optimal, abs=1e-4)


def test_exact_assignment_handles_all_empty_and_rejects_non_finite():
    assert batched_min_cost_assignment(torch.zeros(3, 10, 0), [0, 0, 0]).shape == (3, 0)
    assert (batched_min_cost_assignment(torch.zeros(2, 10, 4), [0, 0]) == -1).all()
    cost = torch.rand(2, 10, 4)
    cost[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        batched_min_cost_assignment(cost, [4, 4])
    cost[1, 3, 2] = float("inf")  # in padding of a problem with 2 targets: ignored
    assert batched_min_cost_assignment(cost, [4, 2]).shape == (2, 4)
    with pytest.raises(ValueError, match="target counts"):
        batched_min_cost_assignment(cost, [4])


@pytest.mark.parametrize(("q", "counts", "ties"), [(30, [5, 0, 17, 30, 1], False), (30, [5, 0, 17, 30, 1], True), (6, [9, 6, 2, 0], False)])
def test_sinkhorn_assignment_is_always_a_valid_one_to_one_assignment(q, counts, ties):
    g = torch.Generator().manual_seed(1)
    cost = padded_problems(g, counts, q, ties)
    match = sinkhorn_assignment(cost, counts, epsilon=0.01, iterations=30)
    check_assignment(match, counts, q)


def test_sinkhorn_equals_exact_on_well_separated_costs():
    """A planted assignment of cost ~0 among costs in [1, 2]: both must find it."""
    g = torch.Generator().manual_seed(2)
    q, counts = 40, [12, 3, 20, 0, 7, 20]
    cost = 1 + torch.rand(len(counts), q, max(counts), generator=g)
    for i, n in enumerate(counts):
        planted = torch.randperm(q, generator=g)[:n]
        cost[i, planted, torch.arange(n)] = 0.05 * torch.rand(n, generator=g)
    exact = batched_min_cost_assignment(cost, counts)
    approx = sinkhorn_assignment(cost, counts)
    assert torch.equal(exact, approx)


def test_sinkhorn_mostly_agrees_on_random_costs():
    """Uniform random costs have many near-ties; the default settings still land within 0.5% of optimal."""
    g = torch.Generator().manual_seed(3)
    counts = [20] * 8
    cost = torch.rand(8, 100, 20, generator=g)
    exact = batched_min_cost_assignment(cost, counts)
    approx = sinkhorn_assignment(cost, counts)
    same = (exact == approx).float().mean().item()
    gap = sum(assignment_cost(cost[i], approx[i], 20) - assignment_cost(cost[i], exact[i], 20) for i in range(8))
    total = sum(assignment_cost(cost[i], exact[i], 20) for i in range(8))
    assert same > 0.95 and 0 <= gap / total < 0.005


# ------------------------------------------------------------------------------------------------
# The criterion's one-call matching against DETR's loop


def detr_loop_match(logits, boxes, targets, image_wh, weights=(1.0, 5.0, 2.0)):
    """DETR's matcher, layer by layer and image by image: ``[layer][image] -> (pred_idx, gt_idx)``."""
    tgt_boxes, tgt_labels, _, counts = pad_targets(targets, image_wh)
    result = []
    for layer_logits, layer_boxes in zip(logits, boxes):
        per_image = []
        for i, n in enumerate(counts):
            prob = layer_logits[i].softmax(-1)
            tb = tgt_boxes[i, :n]
            cost = (
                -weights[0] * prob[:, tgt_labels[i, :n]]
                + weights[1] * torch.cdist(layer_boxes[i], tb, p=1)
                - weights[2] * generalized_box_iou(cxcywh_to_xyxy(layer_boxes[i]), cxcywh_to_xyxy(tb))
            )
            per_image.append((cost, min_cost_assignment(cost)))
        result.append(per_image)
    return result


def random_outputs(g, layers, b, q, k):
    logits = torch.randn(layers, b, q, k + 1, generator=g) * 3
    cxcy = torch.rand(layers, b, q, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(layers, b, q, 2, generator=g) * 0.3 + 0.05
    return logits, torch.cat([cxcy, wh], -1)


def random_targets(g, counts, w, h, k):
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, k, (n,), generator=g), "size": (h, w)})
    return targets


def test_criterion_matches_every_layer_like_detrs_loop():
    g = torch.Generator().manual_seed(4)
    layers, b, q, k = 3, 4, 25, 5
    logits, boxes = random_outputs(g, layers, b, q, k)
    targets = random_targets(g, [3, 0, 11, 25], 96, 64, k)
    image_wh = torch.tensor([96.0, 64.0])
    tgt_boxes, tgt_labels, _, counts = pad_targets(targets, image_wh)
    match = SetCriterion(k).match(logits, boxes, tgt_boxes, tgt_labels, counts)
    assert match.shape == (layers, b, 25)
    reference = detr_loop_match(logits, boxes, targets, image_wh)
    for layer in range(layers):
        for i, n in enumerate(counts):
            cost, (pred, gt) = reference[layer][i]
            ours = match[layer, i, :n]
            assert (match[layer, i, n:] == -1).all()
            assert len(set(ours.tolist())) == n
            assert float(cost[ours, torch.arange(n)].sum()) == pytest.approx(float(cost[pred, gt].sum()), abs=1e-4)


def test_criterion_sinkhorn_matcher_gives_valid_matches():
    g = torch.Generator().manual_seed(5)
    logits, boxes = random_outputs(g, 2, 3, 20, 4)
    targets = random_targets(g, [4, 0, 9], 64, 64, 4)
    tgt_boxes, tgt_labels, _, counts = pad_targets(targets, torch.tensor([64.0, 64.0]))
    match = SetCriterion(4, SetLossConfig(matcher="sinkhorn")).match(logits, boxes, tgt_boxes, tgt_labels, counts)
    check_assignment(match.flatten(0, 1), counts * 2, 20)


def test_unknown_matcher_is_an_error():
    with pytest.raises(ValueError, match="hungarian, sinkhorn"):
        SetLossConfig(matcher="greedy")


def test_exact_assignment_returns_on_the_cost_device_and_sorted_by_target():
    cost = torch.tensor([[[0.0, 5.0], [5.0, 0.0], [1.0, 1.0]]])
    match = batched_min_cost_assignment(cost, [2])
    assert match.tolist() == [[0, 1]] and match.device == cost.device
    np.testing.assert_array_equal(sinkhorn_assignment(cost, [2]).numpy(), [[0, 1]])
