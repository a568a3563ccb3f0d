"""Training losses of the dense one-to-one detector (kept apart from the model, so export stays clean)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from plaindet.ops.boxes import box_iou, generalized_box_iou
from plaindet.ops.losses import focal_cost, loss_normalizer, sigmoid_focal_loss, varifocal_loss
from plaindet.ops.matching import min_cost_assignment


@dataclass(frozen=True)
class LossWeights:
    """Weights of the matching cost and of the loss; OneNet uses the same ones for both."""

    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


class OneToOneCriterion(nn.Module):
    """OneNet's training objective, with an optional one-to-many auxiliary branch.

    One-to-one: each ground-truth box goes to the single prediction of minimum cost
    ``cls * focal_cost + l1 * L1(normalized boxes) - giou * GIoU`` over all locations of all levels
    (unique: a minimum-cost bipartite assignment). Matched predictions learn the class and box;
    every other prediction learns background through the focal loss.

    One-to-many (only if ``outputs`` has ``"aux"``, YOLOv10's dual assignment): the auxiliary head's
    ``topk`` cheapest predictions per object, among locations whose center lies inside the box, are all
    positives. This dense supervision speeds up learning of the shared backbone and neck; the auxiliary
    head is dropped at inference.

    ``outputs``: the head's dict (``logits (B, L, K)``, ``boxes (B, L, 4)`` xyxy pixels, ``centers``).
    ``targets``: per image a dict with ``boxes (N, 4)`` xyxy pixels, ``labels (N,)`` int64 and
    ``size`` ``(h, w)`` of the input image (box L1 terms are normalized by it).
    Returns a dict of scalar losses; ``loss`` is their weighted sum.

    ``quality_targets``: a matched prediction's class target is the IoU of its box with the object's
    (detached), learned with the varifocal loss, instead of 1 with the focal loss; scores then rank
    detections by how well they are placed, which is what AP at high IoU thresholds rewards.
    """

    def __init__(self, num_classes: int, weights: LossWeights = LossWeights(), aux_topk: int = 8, quality_targets: bool = False, inside_only: bool = False) -> None:
        super().__init__()
        self.inside_only = inside_only
        self.num_classes = num_classes
        self.w = weights
        self.aux_topk = aux_topk
        self.quality_targets = quality_targets

    def costs(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, Tensor]:
        """The matching cost of every location against every object of its image, for the whole batch
        at once: ``cost (B, L, G)`` (``cls * focal_cost + l1 * L1(boxes / image size) - giou * GIoU``)
        and the objects' boxes ``(B, G, 4)``, with ``G`` the largest object count of the batch; columns
        past an image's own objects are padding, of cost ``inf``."""
        logits, boxes = outputs["logits"], outputs["boxes"].float()
        b, n_loc, _ = logits.shape
        counts = [len(t["labels"]) for t in targets]
        g = max(counts, default=0)
        labels = logits.new_zeros((b, g), dtype=torch.int64)
        gt = boxes.new_zeros((b, g, 4))
        gt[..., 2:] = 1.0  # padding boxes are unit squares, so every GIoU stays finite
        valid = torch.zeros((b, g), dtype=torch.bool, device=logits.device)
        for i, (t, n) in enumerate(zip(targets, counts)):
            labels[i, :n], gt[i, :n], valid[i, :n] = t["labels"], t["boxes"].to(boxes), True
        scale = torch.stack([boxes.new_tensor([float(t["size"][1]), float(t["size"][0])] * 2) for t in targets])[:, None]  # (B, 1, 4)
        cost_cls = focal_cost(logits, self.w.focal_alpha, self.w.focal_gamma).gather(2, labels[:, None].expand(b, n_loc, g))
        cost_l1 = torch.cdist(boxes / scale, gt / scale, p=1)
        giou = generalized_box_iou(boxes, gt)
        cost = self.w.cls * cost_cls + self.w.l1 * cost_l1 - self.w.giou * giou
        return cost.masked_fill(~valid[:, None], float("inf")), gt

    @torch.no_grad()
    def match(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """One-to-one: per image ``(pred_idx, gt_idx)``, each prediction and object used once. The costs
        of the whole batch are built in one pass and copied to the host once; scipy solves each image."""
        cost, _ = self.costs(outputs, targets)
        host, device = cost.cpu(), cost.device
        pairs = (min_cost_assignment(host[i, :, : len(t["labels"])]) for i, t in enumerate(targets))
        return [(p.to(device), g.to(device)) for p, g in pairs]

    @torch.no_grad()
    def match_many(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """One-to-many: per image ``(pred_idx, gt_idx)``: each object's ``aux_topk`` cheapest locations
        (among those whose center lies inside its box); a location claimed twice goes to the cheaper
        object. An object with fewer inside is filled up with the cheapest outside locations, or
        with ``inside_only`` is left with fewer (at least the location nearest its center)."""
        cost, gt = self.costs(outputs, targets)
        b, n_loc, g = cost.shape
        if g == 0:
            empty = torch.empty(0, dtype=torch.int64, device=cost.device)
            return [(empty, empty) for _ in targets]
        cx, cy = outputs["centers"][None, :, 0, None], outputs["centers"][None, :, 1, None]  # (1, L, 1)
        inside = (cx > gt[:, None, :, 0]) & (cx < gt[:, None, :, 2]) & (cy > gt[:, None, :, 1]) & (cy < gt[:, None, :, 3])
        if self.inside_only:
            center = (gt[..., :2] + gt[..., 2:]) / 2  # (B, G, 2)
            dist = (outputs["centers"][None, :, None] - center[:, None]).pow(2).sum(-1)  # (B, L, G)
            nearest = torch.zeros_like(inside).scatter_(1, dist.argmin(1, keepdim=True), True)
            cost = cost.masked_fill(~(inside | nearest), float("inf"))  # an inf pick is dropped below
        else:
            # Locations outside a box may still be chosen for tiny boxes with no center inside.
            cost = cost + (~inside) * 1e4
        top = cost.topk(min(self.aux_topk, n_loc), dim=1, largest=False).indices  # (B, k, G)
        claimed = torch.zeros_like(cost, dtype=torch.bool).scatter_(1, top, True)  # padding columns cost inf: never chosen
        best_cost, best_gt = cost.masked_fill(~claimed, float("inf")).min(dim=2)  # (B, L)
        result = []
        for i in range(b):
            pred_idx = torch.nonzero(torch.isfinite(best_cost[i])).squeeze(1)
            result.append((pred_idx, best_gt[i, pred_idx]))
        return result

    def _branch_loss(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        logits, boxes = outputs["logits"], outputs["boxes"].float()
        b_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(indices)])
        p_idx = torch.cat([p for p, _ in indices])
        cls_target = torch.zeros_like(logits, dtype=torch.float32)
        labels = torch.cat([t["labels"][g] for t, (_, g) in zip(targets, indices)])
        src = boxes[b_idx, p_idx]
        tgt = torch.cat([t["boxes"][g] for t, (_, g) in zip(targets, indices)]).to(src)
        if self.quality_targets:
            # A floor keeps a badly placed match a positive, so it is never pushed toward background.
            cls_target[b_idx, p_idx, labels] = box_iou(src.detach(), tgt, pairwise=False).clamp(min=0.01)
            loss_cls = varifocal_loss(logits, cls_target) / num_boxes
        else:
            cls_target[b_idx, p_idx, labels] = 1.0
            loss_cls = sigmoid_focal_loss(logits, cls_target, self.w.focal_alpha, self.w.focal_gamma) / num_boxes
        if len(p_idx) == 0:
            zero = boxes.sum() * 0.0
            return {"cls": loss_cls, "l1": zero, "giou": zero}
        scale = torch.cat([src.new_tensor([float(t["size"][1]), float(t["size"][0])] * 2).expand(len(g), 4) for t, (_, g) in zip(targets, indices)])
        loss_l1 = (src / scale - tgt / scale).abs().sum() / num_boxes
        loss_giou = (1 - generalized_box_iou(src, tgt, pairwise=False)).sum() / num_boxes
        return {"cls": loss_cls, "l1": loss_l1, "giou": loss_giou}

    def one_to_many_loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """The one-to-many branch's unweighted ``cls``, ``l1`` and ``giou`` losses (see :meth:`match_many`)
        of a head's ``outputs``, each divided by the positives in the global batch. The auxiliary
        branch here, and the set-prediction models' training-only dense head (Co-DETR's idea)."""
        indices = self.match_many(outputs, targets)
        n_pos = loss_normalizer(sum(len(p) for p, _ in indices), outputs["logits"].device)
        return self._branch_loss(outputs, targets, indices, n_pos)

    def forward(self, outputs: dict, targets: list[dict], num_boxes: float | None = None) -> dict[str, Tensor]:
        """``num_boxes``: the loss divisor; by default the objects in the global batch, divided by the
        number of processes (see :func:`~plaindet.ops.losses.loss_normalizer`)."""
        device = outputs["logits"].device
        if num_boxes is None:
            num_boxes = loss_normalizer(sum(len(t["labels"]) for t in targets), device)
        num_boxes = max(float(num_boxes), 1e-6)
        parts = self._branch_loss(outputs, targets, self.match(outputs, targets), num_boxes)
        losses = {f"loss_{k}": v for k, v in parts.items()}
        total = self.w.cls * parts["cls"] + self.w.l1 * parts["l1"] + self.w.giou * parts["giou"]
        if "aux" in outputs:
            aux_parts = self.one_to_many_loss(outputs["aux"], targets)
            losses.update({f"loss_aux_{k}": v for k, v in aux_parts.items()})
            total = total + self.w.cls * aux_parts["cls"] + self.w.l1 * aux_parts["l1"] + self.w.giou * aux_parts["giou"]
        losses["loss"] = total
        return losses
