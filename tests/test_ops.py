"""Pure tensor ops (boxes, losses, matching, top-k decoding) against direct reference implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from plaindet.models.one_to_one import OneToOneCriterion
from plaindet.models.plaindet import topk_detections
from plaindet.ops.boxes import box_area, box_iou, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from plaindet.ops.losses import focal_cost, sigmoid_focal_loss, varifocal_loss
from plaindet.ops.matching import min_cost_assignment


def random_boxes(n: int, generator: torch.Generator, size: float = 100.0) -> torch.Tensor:
    """``(n, 4)`` valid xyxy boxes inside ``[0, size]``, float64."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size * 0.8
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size * 0.5 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


# Reference implementations: one pair of boxes at a time, in plain Python.


def naive_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def naive_giou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


# ------------------------------------------------------------------------------------------------
# Boxes


def test_box_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    xyxy = random_boxes(50, g)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-12)
    cxcywh = torch.rand(3, 7, 4, generator=g, dtype=torch.float64) + 0.1  # any leading dims
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh, atol=1e-12)


def test_box_conversion_values():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert xyxy_to_cxcywh(box).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert cxcywh_to_xyxy(torch.tensor([[20.0, 40.0, 20.0, 40.0]])).tolist() == box.tolist()


def test_box_area_counts_degenerate_boxes_as_zero():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 5.0], [3.0, 3.0, 1.0, 8.0], [2.0, 2.0, 2.0, 9.0]])
    assert box_area(boxes).tolist() == [20.0, 0.0, 0.0]


def test_box_iou_and_giou_match_naive_implementation():
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(13, g), random_boxes(9, g)
    a[0] = b[0]  # identical boxes: IoU 1
    a[1] = torch.tensor([0.0, 0.0, 10.0, 10.0], dtype=torch.float64)  # disjoint from b[1]: negative GIoU
    b[1] = torch.tensor([50.0, 50.0, 60.0, 70.0], dtype=torch.float64)
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (13, 9)
    for i, j in itertools.product(range(13), range(9)):
        ai, bj = a[i].tolist(), b[j].tolist()
        assert iou[i, j].item() == pytest.approx(naive_iou(ai, bj), abs=1e-9)
        assert giou[i, j].item() == pytest.approx(naive_giou(ai, bj), abs=1e-9)
    assert iou[0, 0].item() == pytest.approx(1.0)
    assert iou[1, 1].item() == 0.0 and giou[1, 1].item() < 0
    assert (giou <= iou + 1e-12).all() and (giou >= -1).all()


def test_box_iou_elementwise_is_the_pairwise_diagonal():
    g = torch.Generator().manual_seed(2)
    a, b = random_boxes(11, g), random_boxes(11, g)
    assert torch.allclose(box_iou(a, b, pairwise=False), box_iou(a, b).diagonal())
    assert torch.allclose(generalized_box_iou(a, b, pairwise=False), generalized_box_iou(a, b).diagonal())


# ------------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0), (-1.0, 2.0)])
def test_sigmoid_focal_loss_matches_formula(alpha, gamma):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 5, generator=g) * 4
    targets = (torch.rand(6, 5, generator=g) > 0.7).float()
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        if t == 1:
            term = -((1 - p) ** gamma) * math.log(p)
            expected += term * (alpha if alpha >= 0 else 1.0)
        else:
            term = -(p**gamma) * math.log(1 - p)
            expected += term * ((1 - alpha) if alpha >= 0 else 1.0)
    assert sigmoid_focal_loss(logits, targets, alpha, gamma).item() == pytest.approx(expected, rel=1e-5)


def test_varifocal_loss_matches_formula_and_is_lowest_at_the_quality_target():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5, generator=g) * 3
    targets = torch.where(torch.rand(6, 5, generator=g) > 0.7, torch.rand(6, 5, generator=g).clamp(min=0.05), torch.zeros(6, 5))
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        if t > 0:
            expected += -t * (t * math.log(p) + (1 - t) * math.log(1 - p))
        else:
            expected += -0.75 * p**2 * math.log(1 - p)
    assert varifocal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    # A positive's gradient vanishes where its score equals its target (the IoU), not at score 1.
    x = torch.logit(torch.tensor([0.6]), eps=0).requires_grad_()
    varifocal_loss(x, torch.tensor([0.6])).backward()
    assert abs(x.grad.item()) < 1e-6


def test_quality_targets_are_the_matched_ious():
    criterion = OneToOneCriterion(2, quality_targets=True)
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]])
    logits = torch.full((1, 2, 2), -2.0)
    logits[0, 0, 1] = 0.0  # probability 0.5
    logits.requires_grad_()
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 20]]), "labels": torch.tensor([1]), "size": (40, 40)}]
    outputs = {"logits": logits, "boxes": boxes, "centers": torch.tensor([[5.0, 5], [25, 25]])}
    criterion(outputs, targets)["loss"].backward()
    # Prediction 0 matches the object (IoU 0.5) and is the only positive, of class 1, with target 0.5:
    # its score already equals the target, so it gets no gradient; every other score is pushed down.
    grad = logits.grad[0]
    assert abs(grad[0, 1].item()) < 1e-6 and (grad[1] > 0).all() and grad[0, 0] > 0
    plain = OneToOneCriterion(2)  # binary targets: the same positive is pushed up, toward 1
    logits.grad = None
    plain(outputs, targets)["loss"].backward()
    assert logits.grad[0, 0, 1] < 0


def test_sigmoid_focal_loss_is_float32_under_half_inputs():
    logits = torch.randn(4, 3).to(torch.bfloat16)
    targets = torch.zeros(4, 3, dtype=torch.bfloat16)
    assert sigmoid_focal_loss(logits, targets).dtype == torch.float32


def test_focal_cost_matches_formula():
    logits = torch.tensor([[-6.0, -1.0, 0.0, 2.5, 8.0]])
    alpha, gamma = 0.25, 2.0
    cost = focal_cost(logits, alpha, gamma)
    for x, c in zip(logits.flatten().tolist(), cost.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        pos = alpha * (1 - p) ** gamma * -math.log(p)
        neg = (1 - alpha) * p**gamma * -math.log(1 - p)
        assert c == pytest.approx(pos - neg, rel=1e-4, abs=1e-6)
    # A confident foreground prediction is the cheapest to call foreground.
    assert cost.argmin().item() == 4 and cost.argmax().item() == 0


# ------------------------------------------------------------------------------------------------
# Matching


def brute_force_assignment_cost(cost: np.ndarray) -> float:
    """Minimum total cost over every one-to-one assignment of the smaller side (tiny inputs only)."""
    p, g = cost.shape
    if p >= g:
        return min(sum(cost[rows[j], j] for j in range(g)) for rows in itertools.permutations(range(p), g))
    return min(sum(cost[i, cols[i]] for i in range(p)) for cols in itertools.permutations(range(g), p))


@pytest.mark.parametrize(("num_preds", "num_gts"), [(7, 3), (6, 6), (3, 5), (1, 1)])
def test_min_cost_assignment_is_optimal_and_one_to_one(num_preds, num_gts):
    g = torch.Generator().manual_seed(num_preds * 10 + num_gts)
    for _ in range(5):
        cost = torch.rand(num_preds, num_gts, generator=g)
        pred, gt = min_cost_assignment(cost)
        k = min(num_preds, num_gts)
        assert pred.dtype == gt.dtype == torch.int64
        assert len(pred) == len(gt) == k
        assert len(set(pred.tolist())) == k and len(set(gt.tolist())) == k
        assert gt.tolist() == sorted(gt.tolist())
        total = cost[pred, gt].sum().item()
        assert total == pytest.approx(brute_force_assignment_cost(cost.numpy()), abs=1e-5)


def test_min_cost_assignment_equals_per_object_argmin_when_those_are_distinct():
    g = torch.Generator().manual_seed(5)
    checked = 0
    for _ in range(50):
        cost = torch.rand(40, 4, generator=g)
        argmin = cost.argmin(dim=0)
        if len(set(argmin.tolist())) < 4:
            continue
        pred, gt = min_cost_assignment(cost)
        assert gt.tolist() == [0, 1, 2, 3]
        assert pred.tolist() == argmin.tolist()
        checked += 1
    assert checked > 10


def test_min_cost_assignment_resolves_a_shared_argmin():
    # Both objects prefer prediction 0; the cheaper total gives it to object 1.
    cost = torch.tensor([[0.0, 0.0], [1.0, 5.0], [9.0, 9.0]])
    pred, gt = min_cost_assignment(cost)
    assert gt.tolist() == [0, 1] and pred.tolist() == [1, 0]


def test_min_cost_assignment_empty_and_non_finite():
    for shape in ((0, 3), (5, 0)):
        pred, gt = min_cost_assignment(torch.zeros(shape))
        assert pred.numel() == gt.numel() == 0 and pred.dtype == torch.int64
    with pytest.raises(ValueError, match="NaN or inf"):
        min_cost_assignment(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


# ------------------------------------------------------------------------------------------------
# Top-k decoding


def test_topk_detections_picks_highest_scores_with_their_boxes_and_labels():
    g = torch.Generator().manual_seed(6)
    b, n, k = 2, 7, 3
    logits = torch.randn(b, n, k, generator=g) * 3
    boxes = random_boxes(b * n, g).float().view(b, n, 4)
    top = 5
    out_boxes, out_scores, out_labels = topk_detections(logits, boxes, top)
    assert out_boxes.shape == (b, top, 4) and out_scores.shape == (b, top) and out_labels.shape == (b, top)
    for i in range(b):
        # Reference: every (location, class) pair, sorted by score.
        pairs = sorted(((torch.sigmoid(logits[i, loc, c]).item(), loc, c) for loc in range(n) for c in range(k)), reverse=True)
        for j, (score, loc, c) in enumerate(pairs[:top]):
            assert out_scores[i, j].item() == pytest.approx(score, abs=1e-6)
            assert out_labels[i, j].item() == c
            assert torch.equal(out_boxes[i, j], boxes[i, loc])


def test_topk_detections_caps_k_at_all_candidates():
    logits = torch.zeros(1, 2, 3)
    logits[0, 1, 2] = 5.0
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]]])
    out_boxes, scores, labels = topk_detections(logits, boxes, 100)
    assert scores.shape == (1, 6)
    assert labels[0, 0].item() == 2 and out_boxes[0, 0].tolist() == [2.0, 2.0, 3.0, 3.0]
    assert (scores[0, :-1] >= scores[0, 1:]).all()
