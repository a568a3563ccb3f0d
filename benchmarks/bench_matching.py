"""What set matching adds to a DETR training step: one batched call against DETR's loop.

    python benchmarks/bench_matching.py [--device cpu|cuda] [--batch 8] [--layers 6] [--queries 100]
                                        [--targets 20] [--classes 80] [--repeats 30] [--threads 1]

Times, per training step, the cost computation plus the assignment for the final and all auxiliary
decoder outputs of a batch (``layers`` x ``batch`` problems of ``queries`` x ``targets``):

- **DETR loop**: what DETR, RT-DETR, D-FINE and RF-DETR run: per decoder layer, one cost matrix of
  every query of the batch against every target of the batch (``B*Q x sum(G)``, of which only the
  diagonal blocks are used), a device-to-host copy, and scipy per image.
- **batched exact**: plaindet's :class:`~plaindet.models.set_criterion.SetCriterion` matching: all
  layers and images in one tensor op on padded targets, one copy to the host, scipy per problem, one
  copy back. Same (exact) assignments.
- **batched Sinkhorn**: the same cost tensor solved by log-domain entropic OT on the device, with
  its agreement with the exact assignment: the share of targets given the same query, and the
  total-cost gap relative to the exact total's magnitude.

Two kinds of outputs: ``random`` (an untrained model: near-ties everywhere) and ``trained`` (each
target has a few queries near it with confident logits, the rest are spread out), both with random
targets. On CUDA every timing is bracketed by ``torch.cuda.synchronize()``. The CPU default is one
intra-op thread: these tensors are small, and extra threads only add contention on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scipy.optimize import linear_sum_assignment

from plaindet.models.set_criterion import SetCriterion, SetLossConfig, pad_targets
from plaindet.ops.boxes import cxcywh_to_xyxy, generalized_box_iou


def detr_loop_match(logits, boxes, targets, image_wh, w=(1.0, 5.0, 2.0)):
    """DETR's HungarianMatcher, called once per decoder layer, as its SetCriterion does."""
    scale = torch.cat([image_wh, image_wh])
    result = []
    for layer_logits, layer_boxes in zip(logits, boxes):
        b, q = layer_logits.shape[:2]
        prob = layer_logits.flatten(0, 1).softmax(-1)  # (B*Q, K+1)
        out_bbox = layer_boxes.flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets]) / scale
        tgt_bbox = torch.cat([(tgt_bbox[:, :2] + tgt_bbox[:, 2:]) / 2, tgt_bbox[:, 2:] - tgt_bbox[:, :2]], 1)
        cost = (
            -w[0] * prob[:, tgt_ids]
            + w[1] * torch.cdist(out_bbox, tgt_bbox, p=1)
            - w[2] * generalized_box_iou(cxcywh_to_xyxy(out_bbox), cxcywh_to_xyxy(tgt_bbox))
        )
        cost = cost.view(b, q, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        indices = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
        result.append([(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices])
    return result


def batched_match(criterion: SetCriterion, logits, boxes, targets, image_wh):
    """plaindet's matching as its criterion runs it: pad the targets, then one call for all layers."""
    tb, tl, _, counts = pad_targets(targets, image_wh)
    return criterion.match(logits, boxes, tb, tl, counts)


def make_problem(kind: str, layers: int, b: int, q: int, g: int, k: int, device: torch.device, gen: torch.Generator):
    size = 640.0
    xy = torch.rand(b, g, 2, generator=gen) * size * 0.8
    wh = 8 + torch.rand(b, g, 2, generator=gen) * size * 0.2
    tboxes = torch.cat([xy, (xy + wh).clamp(max=size)], -1)
    labels = torch.randint(0, k, (b, g), generator=gen)
    targets = [{"boxes": tboxes[i].to(device), "labels": labels[i].to(device)} for i in range(b)]
    logits = torch.randn(layers, b, q, k + 1, generator=gen)
    cxcy = torch.rand(layers, b, q, 2, generator=gen)
    box_wh = torch.rand(layers, b, q, 2, generator=gen) * 0.3 + 0.02
    boxes = torch.cat([cxcy, box_wh], -1)
    if kind == "trained":
        # Three queries per target sit near it (jittered), one of them confident in its class.
        norm = tboxes / size
        norm = torch.cat([(norm[..., :2] + norm[..., 2:]) / 2, norm[..., 2:] - norm[..., :2]], -1)
        for i in range(b):
            qs = torch.randperm(q, generator=gen)[: 3 * g].view(3, g)
            for r in range(3):
                jitter = 1 + 0.15 * (r + 1) * torch.randn(layers, g, 4, generator=gen)
                boxes[:, i, qs[r]] = (norm[i] * jitter).clamp(0.001, 0.999)
                logits[:, i, qs[r], labels[i]] += 6.0 if r == 0 else 2.0
    return logits.to(device), boxes.to(device), targets, torch.tensor([size, size], device=device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    result = None
    times = []
    for _ in range(repeats + 2):  # 2 warm-up calls
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:]) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    L, B, Q, G, K = args.layers, args.batch, args.queries, args.targets, args.classes
    exact = SetCriterion(K)
    sinkhorn = SetCriterion(K, SetLossConfig(matcher="sinkhorn"))
    sk = sinkhorn.config
    print(f"matching per training step: {L} layers x batch {B} x {Q} queries x {G} targets, {K} classes, "
          f"device {device}{'' if device.type == 'cuda' else f', {args.threads} thread(s)'}, torch {torch.__version__}")  # fmt: skip
    print(f"Sinkhorn: epsilon {sk.sinkhorn_epsilon}, {sk.sinkhorn_iterations} iterations; median of {args.repeats}")
    header = f"{'outputs':<8} {'DETR loop':>10} {'batched exact':>14} {'speed-up':>9} {'Sinkhorn':>9} {'same match':>11} {'cost gap':>9}"
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for kind in ("random", "trained"):
        logits, boxes, targets, image_wh = make_problem(kind, L, B, Q, G, K, device, gen)

        problem = (logits, boxes, targets, image_wh)
        t_loop, loop = timed(lambda: detr_loop_match(*problem), device, args.repeats)  # noqa: B023 (called right here)
        t_exact, match = timed(lambda: batched_match(exact, *problem), device, args.repeats)  # noqa: B023
        t_sink, approx = timed(lambda: batched_match(sinkhorn, *problem), device, args.repeats)  # noqa: B023

        # The exact batched result must equal the loop's optimum (ties aside: compare total costs).
        tb, tl, _, _ = pad_targets(targets, image_wh)
        prob = logits.float().softmax(-1)
        cost = (
            -prob.gather(3, tl[None, :, None, :].expand(L, B, Q, G))
            + 5 * torch.cdist(boxes.flatten(0, 1), tb[None].expand(L, B, G, 4).flatten(0, 1), p=1).view(L, B, Q, G)
            - 2 * generalized_box_iou(cxcywh_to_xyxy(boxes.flatten(0, 1)), cxcywh_to_xyxy(tb[None].expand(L, B, G, 4).flatten(0, 1))).view(L, B, Q, G)
        ).cpu()
        match, approx = match.cpu(), approx.cpu()
        tgt = torch.arange(G)
        exact_total = sink_total = loop_total = abs_total = 0.0
        for layer in range(L):
            for i in range(B):
                c = cost[layer, i]
                exact_total += float(c[match[layer, i], tgt].sum())
                sink_total += float(c[approx[layer, i], tgt].sum())
                p, gi = loop[layer][i]
                loop_total += float(c[p, gi].sum())
                abs_total += float(c[match[layer, i], tgt].abs().sum())
        assert abs(exact_total - loop_total) < 1e-3 * max(1.0, abs(loop_total)), (exact_total, loop_total)
        same = (match == approx).float().mean().item() * 100
        gap = (sink_total - exact_total) / abs_total * 100
        print(f"{kind:<8} {t_loop:>8.2f}ms {t_exact:>12.2f}ms {t_loop / t_exact:>8.2f}x {t_sink:>7.2f}ms {same:>10.1f}% {gap:>8.3f}%", flush=True)


if __name__ == "__main__":
    main()
