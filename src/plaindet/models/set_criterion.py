"""DETR's set-prediction loss (Carion et al. 2020), for DETR and the models that share its head.

Each image's objects are matched one-to-one to the queries of minimum total cost
``class * cost_class + l1 * L1(cxcywh) + giou * (-GIoU)``; matched queries learn the class and the
box, every other query learns "no object". Every auxiliary decoder output is matched and
supervised the same way.

Classification (``SetLossConfig.classification``):

- ``"softmax"`` (DETR's): ``K + 1`` logits per query, the last "no object", cross-entropy with that
  class weighted ``eos_coef`` (0.1) because unmatched queries outnumber objects by far; the matching
  cost is ``-p[label]``.
- ``"focal"`` (Deformable DETR's): ``K`` independent sigmoids, the sigmoid focal loss summed over
  queries and classes and divided by the number of objects, and the focal matching cost
  (:func:`~plaindet.ops.losses.focal_cost`). No class has to learn "no object" against a 10x weight,
  which is much of why DETR's softmax is slow to converge.
- ``"varifocal"``: as ``"focal"``, but a matched query's target for its class is the IoU of its box
  with the object's (VarifocalNet, as RT-DETR and D-FINE use): the score learns to rank by
  localization quality, which COCO AP rewards.

Two kinds of extra training-only queries are supervised here (the model makes them, see
:class:`~plaindet.models.detr.SetDetector`):

- **Query groups** (Group DETR, Chen et al. 2023): the model's ``Q * groups`` queries are
  ``groups`` independent sets that cannot see each other; each is matched to the objects on its own
  (one-to-one within a group, one-to-many overall), which gives each object ``groups`` positives a
  step. All groups of all layers are assignment problems in the same batched solver call.
- **Denoising queries** (DN-DETR, Li et al. 2022): noised copies of the ground-truth boxes (and
  sometimes flipped labels) enter the decoder as extra queries whose target is known, the object they
  were made from; no matching, so they give the decoder a stable signal from the first step.

A training-only **dense head** (Co-DETR, Zong et al. 2023) on the decoder's memory (or the
features it reads) gets the dense detector's one-to-many supervision (``dense`` in the outputs), so
the backbone and encoder learn from every object at every step, not only through cross-attention.

Matching is batched: the cost matrices of all decoder layers (and groups) of all images are
computed in one tensor op and solved in one call (see :mod:`plaindet.ops.matching`), exactly
(Hungarian) or on the device by entropic optimal transport (``matcher="sinkhorn"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plaindet.ops.boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from plaindet.ops.losses import focal_cost, sigmoid_focal_loss, varifocal_loss
from plaindet.ops.matching import batched_min_cost_assignment, sinkhorn_assignment

MATCHERS = ("hungarian", "sinkhorn")
CLASSIFICATIONS = ("softmax", "focal", "varifocal")


@dataclass
class SetLossConfig:
    """Loss and matching-cost weights (the same three for both), the classification loss and the matcher.

    ``classification``: ``softmax``, ``focal`` or ``varifocal`` (see the module docstring);
    ``focal_alpha`` and ``focal_gamma`` are the focal terms' (Lin et al.'s 0.25 and 2; varifocal
    down-weights negatives by ``0.75 p ** gamma``, its paper's). ``eos_coef`` weighs "no object" in
    the softmax cross-entropy. ``matcher``: ``hungarian`` (exact) or ``sinkhorn`` (approximate, runs
    on the device with no host round trip); ``sinkhorn_epsilon`` and ``sinkhorn_iterations`` tune it.
    """

    classification: str = "softmax"
    class_weight: float = 1.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    matcher: str = "hungarian"
    sinkhorn_epsilon: float = 3e-4
    sinkhorn_iterations: int = 60

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {self.matcher!r}")
        if self.classification not in CLASSIFICATIONS:
            raise ValueError(f"classification must be one of {', '.join(CLASSIFICATIONS)}, got {self.classification!r}")

    @property
    def sigmoid(self) -> bool:
        """Whether classes are independent sigmoids (``K`` logits) rather than a softmax with "no object" (``K + 1``)."""
        return self.classification != "softmax"


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
    """Hungarian-matched classification and box losses of every decoder layer (and query group),
    plus the denoising queries' losses.

    ``outputs``: ``logits (B, N, C)`` (``C = K + 1`` with softmax, the last "no object"; ``K`` with
    sigmoids), ``boxes (B, N, 4)`` cxcywh normalized to the input, ``image_wh (2,)`` input width and
    height in pixels; in training ``aux_logits (L - 1, B, N, C)``, ``aux_boxes (L - 1, B, N, 4)`` from
    the earlier decoder layers, and with denoising ``dn_logits (L', B, S * G, C)``, ``dn_boxes
    (L', B, S * G, 4)``: ``S`` noised copies of the ``G`` (padded, as :func:`pad_targets`) targets,
    query ``s * G + j`` made from target ``j``, for every supervised layer. ``N`` is ``num_queries``
    times the number of query groups (``N / num_queries``; one group when ``num_queries`` is None).
    ``targets``: per image ``boxes (M, 4)`` xyxy input pixels and ``labels (M,)`` int64.

    Returns scalar losses: ``loss_ce``, ``loss_l1``, ``loss_giou`` of the final layer (summed over
    groups), the ``loss_aux_*`` sums over auxiliary layers (when present), ``loss_dn_*`` over the
    denoising queries of every layer (when present), and ``loss``, the weighted total. Softmax
    cross-entropy is a weighted mean over queries (DETR's); the sigmoid losses, L1 and GIoU are sums
    divided by ``num_boxes``, the objects in the global batch.
    """

    def __init__(self, num_classes: int, config: SetLossConfig | None = None, num_queries: int | None = None, dense_inside: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dense_inside = dense_inside
        self.config = config or SetLossConfig()
        self.num_queries = num_queries
        weight = torch.ones(num_classes + 1)
        weight[-1] = self.config.eos_coef
        self.register_buffer("class_weight", weight, persistent=False)

    @torch.no_grad()
    def match(self, logits: Tensor, boxes: Tensor, tgt_boxes: Tensor, tgt_labels: Tensor, counts: list[int]) -> Tensor:
        """Match all layers at once.

        ``logits (L, B, Q, C)``, ``boxes (L, B, Q, 4)`` and the padded targets of
        :func:`pad_targets`. Returns ``(L, B, G)`` int64: the query matched to each target, ``-1``
        on padding.
        """
        w = self.config
        layers, b, q, _ = logits.shape
        g = tgt_boxes.shape[1]
        per_class = focal_cost(logits, w.focal_alpha, w.focal_gamma) if w.sigmoid else -logits.float().softmax(-1)
        # (L, B, Q, G): the cost of each query taking each target's class.
        cost_class = per_class.gather(3, tgt_labels[None, :, None, :].expand(layers, b, q, g))
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

    def classification_loss(self, logits: Tensor, target_classes: Tensor, counted: Tensor, quality: Tensor | None, num_boxes: float) -> Tensor:
        """Per-layer classification loss, ``(L,)``.

        ``logits (L, B, P, C)``; ``target_classes (L, B, P)`` int64, ``K`` for "no object";
        ``counted (L, B, P)`` bool, which predictions are supervised; ``quality (L, B, P)`` the
        varifocal target of positives (their IoU; ``None`` otherwise).
        """
        w, k = self.config, self.num_classes
        if not w.sigmoid:
            # DETR's weighted mean, per layer: sum of weighted losses over sum of weights. The engine
            # does not move the criterion to the device, so its weight follows the logits.
            class_weight = self.class_weight.to(logits.device)
            ce = F.cross_entropy(logits.float().flatten(0, 2), target_classes.flatten(), reduction="none")
            weight = class_weight[target_classes] * counted
            return (ce.view_as(weight) * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-6)
        onehot = F.one_hot(target_classes, k + 1)[..., :k].float()  # "no object" is the all-zero row
        if w.classification == "varifocal":
            loss = varifocal_loss(logits, onehot * quality[..., None], gamma=w.focal_gamma, reduction="none")
        else:
            loss = sigmoid_focal_loss(logits, onehot, w.focal_alpha, w.focal_gamma, reduction="none")
        return (loss.sum(-1) * counted).flatten(1).sum(1) / num_boxes

    @staticmethod
    def box_losses(src: Tensor, tgt_boxes: Tensor, mask: Tensor, num_boxes: float) -> tuple[Tensor, Tensor, Tensor]:
        """``src (L, B, G, 4)`` predictions in target order, ``tgt_boxes (B, G, 4)``, ``mask (L, B, G)``
        -> per-layer L1 and GIoU losses ``(L,)`` and the IoU of each pair ``(L, B, G)`` (detached)."""
        tgt = tgt_boxes[None].expand_as(src)
        m = mask.float()
        loss_l1 = ((src - tgt).abs().sum(-1) * m).flatten(1).sum(1) / num_boxes
        src_xyxy, tgt_xyxy = cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)
        giou = generalized_box_iou(src_xyxy, tgt_xyxy, pairwise=False)
        loss_giou = ((1 - giou) * m).flatten(1).sum(1) / num_boxes
        with torch.no_grad():
            iou = box_iou(src_xyxy, tgt_xyxy, pairwise=False)
        return loss_l1, loss_giou, iou

    def forward(self, outputs: dict[str, Tensor], targets: list[dict], num_boxes: float | None = None) -> dict[str, Tensor]:
        """``num_boxes``: objects in the global batch (sum over processes in distributed training)."""
        if num_boxes is None:
            num_boxes = float(sum(len(t["labels"]) for t in targets))
        num_boxes = max(float(num_boxes), 1.0)
        logits, boxes = outputs["logits"][None], outputs["boxes"][None]
        if "aux_logits" in outputs:
            logits = torch.cat([outputs["aux_logits"], logits])
            boxes = torch.cat([outputs["aux_boxes"], boxes])
        layers, b, n, c = logits.shape
        q = self.num_queries or n
        if n % q:
            raise ValueError(f"{n} queries are not a whole number of groups of {q}")
        groups = n // q
        # Every group of every layer is its own matching problem: (L, B, groups * Q) -> (L * groups, B, Q).
        logits = logits.view(layers, b, groups, q, c).transpose(1, 2).flatten(0, 1)
        boxes = boxes.float().view(layers, b, groups, q, 4).transpose(1, 2).flatten(0, 1)
        tgt_boxes, tgt_labels, valid, counts = pad_targets(targets, outputs["image_wh"])
        match = self.match(logits, boxes, tgt_boxes, tgt_labels, counts)  # (L * groups, B, G)
        matched = match >= 0  # False on padding
        lg, g = match.shape[0], match.shape[-1]

        # Boxes of the matched queries, in target order: (L * groups, B, G, 4); masked where unmatched.
        src = boxes.gather(2, match.clamp(min=0)[..., None].expand(lg, b, g, 4))
        loss_l1, loss_giou, iou = self.box_losses(src, tgt_boxes, matched, num_boxes)

        # Every query's class target is "no object" (K) unless matched. Padding and unmatched
        # targets scatter into an extra slot Q that is then dropped (no boolean indexing, so no sync).
        slot = torch.where(matched, match, q)
        target_classes = torch.full((lg, b, q + 1), self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes = target_classes.scatter(2, slot, tgt_labels[None].expand(lg, b, g))[..., :q]
        quality = None
        if self.config.classification == "varifocal":
            quality = torch.zeros(lg, b, q + 1, device=logits.device).scatter(2, slot, iou)[..., :q]
        everything = torch.ones_like(target_classes, dtype=torch.bool)
        loss_ce = self.classification_loss(logits, target_classes, everything, quality, num_boxes)

        w = self.config
        # (L * groups,) -> (L,): a layer's loss is the sum of its groups'.
        loss_ce, loss_l1, loss_giou = (x.view(layers, groups).sum(1) for x in (loss_ce, loss_l1, loss_giou))
        per_layer = w.class_weight * loss_ce + w.l1_weight * loss_l1 + w.giou_weight * loss_giou
        losses = {"loss_ce": loss_ce[-1], "loss_l1": loss_l1[-1], "loss_giou": loss_giou[-1]}
        if layers > 1:
            losses.update({"loss_aux_ce": loss_ce[:-1].sum(), "loss_aux_l1": loss_l1[:-1].sum(), "loss_aux_giou": loss_giou[:-1].sum()})
        total = per_layer.sum()
        if "dn_logits" in outputs and g > 0:
            dn = self.denoising_losses(outputs["dn_logits"], outputs["dn_boxes"], tgt_boxes, tgt_labels, valid, num_boxes)
            losses.update(dn)
            total = total + w.class_weight * dn["loss_dn_ce"] + w.l1_weight * dn["loss_dn_l1"] + w.giou_weight * dn["loss_dn_giou"]
        if "dense" in outputs:
            dense = self.dense_losses(outputs["dense"], targets, outputs["image_wh"])
            losses.update(dense)
            total = total + w.class_weight * dense["loss_dense_ce"] + w.l1_weight * dense["loss_dense_l1"] + w.giou_weight * dense["loss_dense_giou"]
        losses["loss"] = total
        return losses

    def dense_losses(self, dense: dict[str, Tensor], targets: list[dict], image_wh: Tensor) -> dict[str, Tensor]:
        """The training-only dense head's one-to-many losses (Co-DETR's auxiliary head, with the dense
        detector's assignment: each object's ``aux_topk`` cheapest locations inside its box, only
        those with ``dense_inside``; see :meth:`OneToOneCriterion.match_many`): focal
        classes, L1 of boxes normalized by the input size, GIoU."""
        from plaindet.models.one_to_one import LossWeights, OneToOneCriterion

        w = self.config
        size = (int(image_wh[1]), int(image_wh[0]))
        sized = [{"boxes": t["boxes"], "labels": t["labels"], "size": size} for t in targets]
        weights = LossWeights(cls=w.class_weight, l1=w.l1_weight, giou=w.giou_weight, focal_alpha=w.focal_alpha, focal_gamma=w.focal_gamma)
        head = OneToOneCriterion(self.num_classes, weights, inside_only=self.dense_inside)
        parts = head.one_to_many_loss(dense, sized)
        return {"loss_dense_ce": parts["cls"], "loss_dense_l1": parts["l1"], "loss_dense_giou": parts["giou"]}

    def denoising_losses(self, logits: Tensor, boxes: Tensor, tgt_boxes: Tensor, tgt_labels: Tensor, valid: Tensor, num_boxes: float) -> dict[str, Tensor]:
        """The denoising queries' losses, summed over layers and noised copies: each query learns the
        class and box of the target it was made from (padding targets' queries learn nothing).

        ``logits (L, B, S * G, C)``, ``boxes (L, B, S * G, 4)``; the padded targets of :func:`pad_targets`.
        """
        layers, b, m, c = logits.shape
        g = tgt_boxes.shape[1]
        s = m // g
        # (L, B, S * G, .) -> (L * S, B, G, .): each noised copy of each layer is in target order.
        logits = logits.view(layers, b, s, g, c).transpose(1, 2).flatten(0, 1)
        boxes = boxes.float().view(layers, b, s, g, 4).transpose(1, 2).flatten(0, 1)
        mask = valid[None].expand(layers * s, b, g)
        loss_l1, loss_giou, iou = self.box_losses(boxes, tgt_boxes, mask, num_boxes * s)
        target_classes = tgt_labels[None].expand(layers * s, b, g)
        quality = iou if self.config.classification == "varifocal" else None
        loss_ce = self.classification_loss(logits, target_classes, mask, quality, num_boxes * s)
        # Normalized per noised copy (by num_boxes * S), then summed over layers.
        return {"loss_dn_ce": loss_ce.sum(), "loss_dn_l1": loss_l1.sum(), "loss_dn_giou": loss_giou.sum()}
