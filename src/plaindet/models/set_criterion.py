"""DETR's set-prediction loss (Carion et al. 2020), for DETR and the models that share its head.

Each image's objects are matched one-to-one to the queries of minimum total cost
``class * (-p[label]) + l1 * L1(cxcywh) + giou * (-GIoU)`` (the paper's 1 / 5 / 2); matched queries
learn the class and the box, every other query learns "no object", whose cross-entropy weight is
``eos_coef`` (0.1) because unmatched queries outnumber objects by far. Every auxiliary decoder
output is matched and supervised the same way.

Matching is batched: the cost matrices of all decoder layers of all images are computed in one
tensor op and solved in one call (see :mod:`plaindet.ops.matching`), exactly (Hungarian) or on the
device by entropic optimal transport (``matcher="sinkhorn"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plaindet.ops.boxes import cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from plaindet.ops.matching import batched_min_cost_assignment, sinkhorn_assignment

MATCHERS = ("hungarian", "sinkhorn")


@dataclass
class SetLossConfig:
    """Loss and matching-cost weights (DETR uses the same three for both), and the matcher.

    ``matcher``: ``hungarian`` (exact) or ``sinkhorn`` (approximate, runs on the device with no host
    round trip); ``sinkhorn_epsilon`` and ``sinkhorn_iterations`` tune the latter.
    """

    class_weight: float = 1.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1
    matcher: str = "hungarian"
    sinkhorn_epsilon: float = 3e-4
    sinkhorn_iterations: int = 60

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {self.matcher!r}")


def pad_targets(targets: list[dict], image_wh: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Stack per-image targets into padded tensors, boxes as cxcywh normalized by the input size.

    ``targets``: per image ``boxes (N_i, 4)`` xyxy input pixels, ``labels (N_i,)``. ``image_wh``:
    ``(2,)`` width and height of the (padded) input the model saw. Returns ``boxes (B, G, 4)``,
    ``labels (B, G)`` (0 on padding), ``valid (B, G)`` bool and the ``B`` counts, ``G = max N_i``.
    """
    counts = [len(t["labels"]) for t in targets]
    b, g = len(targets), max(counts, default=0)
    device = image_wh.device
    boxes = torch.zeros(b, g, 4, device=device)
    labels = torch.zeros(b, g, dtype=torch.int64, device=device)
    scale = torch.cat([image_wh, image_wh]).float()
    for i, t in enumerate(targets):
        if counts[i]:
            boxes[i, : counts[i]] = xyxy_to_cxcywh(t["boxes"].to(device).float() / scale)
            labels[i, : counts[i]] = t["labels"].to(device)
    valid = torch.arange(g, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]
    return boxes, labels, valid, counts


class SetCriterion(nn.Module):
    """Hungarian-matched classification and box losses of every decoder layer.

    ``outputs``: ``logits (B, Q, K + 1)`` (last class: no object), ``boxes (B, Q, 4)`` cxcywh
    normalized to the input, ``image_wh (2,)`` input width and height in pixels, and in training
    ``aux_logits (L - 1, B, Q, K + 1)``, ``aux_boxes (L - 1, B, Q, 4)`` from the earlier decoder layers.
    ``targets``: per image ``boxes (N, 4)`` xyxy input pixels and ``labels (N,)`` int64.

    Returns scalar losses: ``loss_ce``, ``loss_l1``, ``loss_giou`` of the final layer, the
    ``loss_aux_*`` sums over auxiliary layers (when present), and ``loss``, the weighted total.
    Cross-entropy is a weighted mean over queries (DETR's); L1 and GIoU are summed over matched
    queries and divided by ``num_boxes``, the objects in the global batch.
    """

    def __init__(self, num_classes: int, config: SetLossConfig | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config or SetLossConfig()
        weight = torch.ones(num_classes + 1)
        weight[-1] = self.config.eos_coef
        self.register_buffer("class_weight", weight, persistent=False)

    @torch.no_grad()
    def match(self, logits: Tensor, boxes: Tensor, tgt_boxes: Tensor, tgt_labels: Tensor, counts: list[int]) -> Tensor:
        """Match all layers at once.

        ``logits (L, B, Q, K + 1)``, ``boxes (L, B, Q, 4)`` and the padded targets of
        :func:`pad_targets`. Returns ``(L, B, G)`` int64: the query matched to each target, ``-1``
        on padding.
        """
        w = self.config
        layers, b, q, _ = logits.shape
        g = tgt_boxes.shape[1]
        prob = logits.float().softmax(-1)
        # (L, B, Q, G): the probability each query gives each target's class.
        cost_class = -prob.gather(3, tgt_labels[None, :, None, :].expand(layers, b, q, g))
        pred = boxes.float().flatten(0, 1)  # (L * B, Q, 4)
        tgt = tgt_boxes[None].expand(layers, b, g, 4).flatten(0, 1)
        cost_l1 = torch.cdist(pred, tgt, p=1).view(layers, b, q, g)
        giou = generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt)).view(layers, b, q, g)
        cost = w.class_weight * cost_class + w.l1_weight * cost_l1 - w.giou_weight * giou
        problems = counts * layers  # problem (l, b) -> counts[b], in flatten order
        if w.matcher == "sinkhorn":
            match = sinkhorn_assignment(cost.flatten(0, 1), problems, w.sinkhorn_epsilon, w.sinkhorn_iterations)
        else:
            match = batched_min_cost_assignment(cost.flatten(0, 1), problems)
        return match.view(layers, b, g)

    def forward(self, outputs: dict[str, Tensor], targets: list[dict], num_boxes: float | None = None) -> dict[str, Tensor]:
        """``num_boxes``: objects in the global batch (sum over processes in distributed training)."""
        if num_boxes is None:
            num_boxes = float(sum(len(t["labels"]) for t in targets))
        num_boxes = max(float(num_boxes), 1.0)
        logits, boxes = outputs["logits"][None], outputs["boxes"][None]
        if "aux_logits" in outputs:
            logits = torch.cat([outputs["aux_logits"], logits])
            boxes = torch.cat([outputs["aux_boxes"], boxes])
        layers, b, q, _ = logits.shape
        tgt_boxes, tgt_labels, _, counts = pad_targets(targets, outputs["image_wh"])
        match = self.match(logits, boxes, tgt_boxes, tgt_labels, counts)  # (L, B, G)
        matched = match >= 0  # (L, B, G); False on padding
        g = match.shape[-1]

        # Classification: every query's target is "no object" (index K) unless matched. Padding and
        # unmatched targets scatter into an extra slot Q that is then dropped (no boolean indexing,
        # so no device sync).
        target_classes = torch.full((layers, b, q + 1), self.num_classes, dtype=torch.int64, device=logits.device)
        slot = torch.where(matched, match, q)
        target_classes.scatter_(2, slot, tgt_labels[None].expand(layers, b, g))
        target_classes = target_classes[..., :q]
        # The engine does not move the criterion to the device, so its weight follows the logits.
        class_weight = self.class_weight.to(logits.device)
        ce = F.cross_entropy(logits.float().flatten(0, 2), target_classes.flatten(), weight=class_weight, reduction="none")
        # DETR's weighted mean, per layer: sum of weighted losses over sum of weights.
        loss_ce = ce.view(layers, -1).sum(1) / class_weight[target_classes].view(layers, -1).sum(1)

        # Boxes of the matched queries, in target order: (L, B, G, 4); masked where unmatched.
        src = boxes.float().gather(2, match.clamp(min=0)[..., None].expand(layers, b, g, 4))
        tgt = tgt_boxes[None].expand_as(src)
        mask = matched.float()
        loss_l1 = ((src - tgt).abs().sum(-1) * mask).flatten(1).sum(1) / num_boxes
        giou = generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt), pairwise=False)
        loss_giou = ((1 - giou) * mask).flatten(1).sum(1) / num_boxes

        w = self.config
        per_layer = w.class_weight * loss_ce + w.l1_weight * loss_l1 + w.giou_weight * loss_giou
        losses = {"loss_ce": loss_ce[-1], "loss_l1": loss_l1[-1], "loss_giou": loss_giou[-1]}
        if layers > 1:
            losses.update({"loss_aux_ce": loss_ce[:-1].sum(), "loss_aux_l1": loss_l1[:-1].sum(), "loss_aux_giou": loss_giou[:-1].sum()})
        losses["loss"] = per_layer.sum()
        return losses
