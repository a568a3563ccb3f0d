"""The convergence options of the set-prediction detectors (DETR, DePerceiver): sigmoid focal and
varifocal classes, anchor queries with box refinement, Group DETR's query groups and DN-DETR's
denoising queries. Each is checked for what it promises: groups and denoising queries cannot leak
into the matching queries, the extra losses are what they say, inference is unchanged."""

from __future__ import annotations

import json

import pytest
import torch

import plaindet
from plaindet.models.detr import DETR_PAPER, sigmoid_set_detections
from plaindet.models.set_criterion import SetCriterion, SetLossConfig
from plaindet.ops.boxes import cxcywh_to_xyxy
from plaindet.ops.losses import focal_cost

# The published recipe's options (the convergence options off), so each test switches on what it tests.
CLASSIC = {k: v for k, v in DETR_PAPER.items() if k != "backbone_norm"}
TINY = dict(backbone_depth=18, hidden_dim=32, heads=4, encoder_layers=1, decoder_layers=2, ffn_dim=64, num_queries=6, dropout=0.0)
SIZE = 64


def tiny(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return plaindet.create_model("detr-r18", num_classes=3, image_size=SIZE, **{**TINY, **CLASSIC, **overrides})


def targets() -> list[dict]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([1])},
    ]


def images() -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("anchors", [False, True])
def test_query_groups_cannot_see_each_other_and_inference_uses_the_first(anchors):
    model = tiny(query_groups=3, anchor_queries=anchors).train()
    x = images()
    out = model(x, targets())
    assert out["logits"].shape == (2, 18, 3 + 1) and out["aux_boxes"].shape == (1, 2, 18, 4)
    # Changing the queries of groups 2 and 3 leaves group 1's outputs exactly as they were.
    table = model.anchor_embed if anchors else model.query_embed
    with torch.no_grad():
        table.weight[6:] += torch.randn_like(table.weight[6:])
    again = model(x, targets())
    torch.testing.assert_close(again["logits"][:, :6], out["logits"][:, :6], rtol=0, atol=1e-5)
    assert not torch.allclose(again["logits"][:, 6:], out["logits"][:, 6:])
    # Inference is group 1 alone (no dropout here, frozen BatchNorm: train and eval agree).
    with torch.no_grad():
        model.eval()
        eval_out = model(x)
    assert eval_out["logits"].shape == (2, 6, 4)
    torch.testing.assert_close(eval_out["logits"], again["logits"][:, :6].detach(), rtol=0, atol=1e-5)


def test_denoising_queries_do_not_leak_into_the_matching_queries():
    model = tiny(anchor_queries=True, denoising=2, loss={"classification": "focal"}).train()
    x = images()
    torch.manual_seed(5)
    with_dn = model(x, targets())
    without = model(x, None)  # no targets, no denoising queries
    assert with_dn["dn_logits"].shape == (2, 2, 2 * 2, 3)  # (layers, B, S * G, K): G = 2 objects at most
    assert "dn_logits" not in without
    torch.testing.assert_close(with_dn["logits"], without["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(with_dn["boxes"], without["boxes"], rtol=0, atol=1e-5)


def test_denoising_queries_are_noised_copies_of_the_targets():
    model = tiny(anchor_queries=True, denoising=3, dn_box_noise=0.4, dn_label_noise=0.0)
    t = targets()
    content, anchors = model.denoising_queries(t, torch.tensor([64.0, 64.0]))
    assert anchors.shape == (2, 3 * 2, 4) and content.shape == (2, 6, 32)
    boxes = anchors.sigmoid()
    truth = torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 10.0, 60.0, 50.0]]) / 64
    cx, cy = (truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2
    w, h = truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]
    for s in range(3):
        copy = boxes[0, s * 2 : s * 2 + 2]
        assert ((copy[:, 0] - cx).abs() <= 0.2 * w + 1e-4).all() and ((copy[:, 1] - cy).abs() <= 0.2 * h + 1e-4).all()
        assert ((copy[:, 2] / w - 1).abs() <= 0.4 + 1e-3).all() and ((copy[:, 3] / h - 1).abs() <= 0.4 + 1e-3).all()
    # No label noise: the content is each target's label embedding.
    torch.testing.assert_close(content[0, :2], model.label_embed.weight[torch.tensor([0, 2])])


def test_group_loss_is_the_sum_of_each_group_matched_alone():
    torch.manual_seed(0)
    q, k = 5, 3
    config = SetLossConfig(classification="focal", class_weight=2.0)
    logits, boxes = torch.randn(2, 2 * q, k), torch.rand(2, 2 * q, 4) * 0.5 + 0.25
    outputs = {"logits": logits, "boxes": boxes, "image_wh": torch.tensor([64.0, 64.0])}
    both = SetCriterion(k, config, num_queries=q)(outputs, targets())
    alone = [SetCriterion(k, config)({"logits": logits[:, i * q : (i + 1) * q], "boxes": boxes[:, i * q : (i + 1) * q], "image_wh": outputs["image_wh"]}, targets()) for i in range(2)]
    for name in ("loss_ce", "loss_l1", "loss_giou", "loss"):
        torch.testing.assert_close(both[name], alone[0][name] + alone[1][name])


def test_denoising_loss_vanishes_for_perfect_reconstructions():
    k = 3
    t = targets()
    g = 2
    truth = torch.zeros(2, g, 4)
    for i, tt in enumerate(t):
        b = tt["boxes"] / 64
        truth[i, : len(b)] = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    labels = torch.zeros(2, g, k)
    for i, tt in enumerate(t):
        labels[i, torch.arange(len(tt["labels"])), tt["labels"]] = 1
    dn_logits = (labels * 40 - 20).repeat(1, 2, 1)[None]  # 2 copies, 1 layer: confident and right
    dn_boxes = truth.repeat(1, 2, 1)[None]
    outputs = {"logits": torch.randn(2, 4, k), "boxes": torch.rand(2, 4, 4) * 0.5 + 0.25, "image_wh": torch.tensor([64.0, 64.0]),
               "dn_logits": dn_logits, "dn_boxes": dn_boxes}  # fmt: skip
    losses = SetCriterion(k, SetLossConfig(classification="focal"))(outputs, t)
    assert losses["loss_dn_l1"] < 1e-6 and losses["loss_dn_giou"] < 1e-5 and losses["loss_dn_ce"] < 1e-6
    # Wrong reconstructions cost: the padding slot of image 2 (G = 2, one object) is ignored.
    outputs["dn_boxes"] = (dn_boxes + 0.05).clamp(0, 1)
    assert SetCriterion(k, SetLossConfig(classification="focal"))(outputs, t)["loss_dn_l1"] > 0.1


@pytest.mark.parametrize("classification", ["focal", "varifocal"])
def test_sigmoid_matching_uses_the_focal_cost(classification):
    """The batched matcher's assignment equals brute force over permutations of the focal + box cost."""
    import itertools

    from plaindet.ops.boxes import generalized_box_iou

    torch.manual_seed(3)
    q, k = 4, 3
    config = SetLossConfig(classification=classification, class_weight=2.0)
    crit = SetCriterion(k, config)
    logits, boxes = torch.randn(1, 1, q, k), torch.rand(1, 1, q, 4) * 0.4 + 0.3
    tgt = torch.tensor([[[0.3, 0.3, 0.2, 0.3], [0.6, 0.5, 0.3, 0.2]]])
    labels = torch.tensor([[2, 0]])
    match = crit.match(logits, boxes, tgt, labels, [2])[0, 0].tolist()
    cost = 2.0 * focal_cost(logits[0, 0])[:, labels[0]] + 5.0 * torch.cdist(boxes[0, 0], tgt[0], p=1)
    cost = cost - 2.0 * generalized_box_iou(cxcywh_to_xyxy(boxes[0, 0]), cxcywh_to_xyxy(tgt[0]))
    best = min(itertools.permutations(range(q), 2), key=lambda p: float(cost[p[0], 0] + cost[p[1], 1]))
    assert match == list(best)


def test_varifocal_targets_are_the_matched_iou():
    """A matched query's varifocal target is its box's IoU with the object: a perfectly placed box
    with the right score gets no classification loss, a misplaced one with the same score does."""
    k = 2
    t = [{"boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]]), "labels": torch.tensor([1])}]
    logits = torch.full((1, 2, k), -30.0)
    logits[0, 0, 1] = 30.0  # query 0 is sure of class 1
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]]])
    crit = SetCriterion(k, SetLossConfig(classification="varifocal"))
    perfect = crit({"logits": logits, "boxes": boxes, "image_wh": torch.tensor([64.0, 64.0])}, t)["loss_ce"]
    shifted = boxes.clone()
    shifted[0, 0, 0] += 0.2  # IoU 0.43 with the object, still the better match
    worse = crit({"logits": logits, "boxes": shifted, "image_wh": torch.tensor([64.0, 64.0])}, t)["loss_ce"]
    assert perfect < 1e-6 < worse


def test_sigmoid_decoding_is_the_top_k_of_every_query_class_pair():
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 5, 3), torch.rand(2, 5, 4) * 0.5 + 0.25
    got_boxes, got_scores, got_labels = sigmoid_set_detections(logits, boxes, torch.tensor([100.0, 50.0]), 4)
    for i in range(2):
        pairs = sorted(((float(logits[i, qq, c].sigmoid()), qq, c) for qq in range(5) for c in range(3)), reverse=True)[:4]
        assert got_scores[i].tolist() == pytest.approx([p[0] for p in pairs])
        assert got_labels[i].tolist() == [p[2] for p in pairs]
        want = cxcywh_to_xyxy(boxes[i, [p[1] for p in pairs]]) * torch.tensor([100.0, 50.0, 100.0, 50.0])
        torch.testing.assert_close(got_boxes[i], want)


def test_anchor_queries_start_at_their_anchors():
    """The last box layer starts at zero, so an untrained model predicts its anchors (spread over the
    image, a tenth of its size), and every decoder layer refines the previous one's box."""
    model = tiny(anchor_queries=True).eval()
    with torch.no_grad():
        out = model(images())
    torch.testing.assert_close(out["boxes"][0], model.anchor_embed.weight.sigmoid(), rtol=0, atol=1e-6)
    assert torch.allclose(out["boxes"][0, :, 2:], torch.tensor(0.1), atol=1e-6)


@pytest.mark.parametrize("overrides", [{"denoising": 1}, {"query_groups": 0}])
def test_bad_options_are_config_errors(overrides):
    from plaindet.errors import ConfigError

    with pytest.raises(ConfigError):
        tiny(**overrides)


@pytest.mark.parametrize("name", ["detr-r18", "deperceiver-r18"])
def test_every_option_trains_every_parameter(name):
    extra = dict(encoder_layers=1) if name.startswith("detr") else dict(latent_layers=1, num_latents=8)
    torch.manual_seed(0)
    base = {k: v for k, v in TINY.items() if k != "encoder_layers"}
    spatial = {"spatial_prior": True} if name.startswith("detr") else {}
    model = plaindet.create_model(name, num_classes=3, image_size=SIZE, **base, **extra, **spatial, anchor_queries=True, query_groups=2, denoising=2, loss={"classification": "varifocal"}).train()
    losses = model.criterion()(model(images(), targets()), targets())
    losses["loss"].backward()
    assert {"loss_dn_ce", "loss_dn_l1", "loss_dn_giou", "loss_aux_ce"} <= set(losses)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_spatial_prior_centers_cross_attention_on_each_query_box():
    """With the prior, a query's attention to the memory peaks at its box's grid cell; each head's
    strength starts at 1, and DePerceiver (latents without positions) refuses the option."""
    from plaindet.errors import ConfigError

    model = tiny(anchor_queries=True, spatial_prior=True).eval()
    features = [torch.zeros(1, 512, 4, 8)]  # a 4 x 8 grid (rows x columns)
    centers, grid = model.memory_centers(features)
    assert centers.shape == (32, 2) and grid.tolist() == [8.0, 4.0]
    torch.testing.assert_close(centers[9], torch.tensor([1.5 / 8, 1.5 / 4]))  # row 1, column 1
    boxes = torch.tensor([[[1.5 / 8, 1.5 / 4, 0.01, 0.01], [0.9, 0.1, 0.5, 0.5]]])
    bias = model.spatial_bias(0, boxes, centers, grid)
    assert bias.shape == (1, 4, 2, 32)
    assert int(bias[0, 0, 0].argmax()) == 9 and float(bias[0, 0, 0, 9]) == pytest.approx(0.0, abs=1e-6)
    # A small box is still at least half a cell wide: the neighbouring cell is at 2 sigma, not 100.
    assert float(bias[0, 0, 0, 10]) == pytest.approx(-0.5 * 4, rel=1e-4)
    with torch.no_grad():
        out = model(images())
    assert torch.isfinite(out["logits"]).all()
    with pytest.raises(ConfigError):
        plaindet.create_model("deperceiver-r18", num_classes=3, anchor_queries=True, spatial_prior=True)
    with pytest.raises(ConfigError):
        tiny(spatial_prior=True)  # without anchors


@pytest.mark.parametrize("name", ["detr-r18", "deperceiver-r18"])
def test_dense_aux_head_trains_the_backbone_directly_and_is_dropped_at_inference(name):
    extra = dict(encoder_layers=1) if name.startswith("detr") else dict(latent_layers=1, num_latents=8, downsample_factor=16, multi_scale=True)
    base = {k: v for k, v in TINY.items() if k != "encoder_layers"}
    torch.manual_seed(0)
    model = plaindet.create_model(name, num_classes=3, image_size=SIZE, **base, **extra, dense_aux=True, loss={"classification": "focal"}).train()
    out = model(images(), targets())
    cells = (SIZE // 32) ** 2 if name.startswith("detr") else (SIZE // 16) ** 2 + (SIZE // 32) ** 2
    assert out["dense"]["logits"].shape == (2, cells, 3) and out["dense"]["boxes"].shape == (2, cells, 4)
    losses = model.criterion()(out, targets())
    assert {"loss_dense_ce", "loss_dense_l1", "loss_dense_giou"} <= set(losses) and losses["loss_dense_l1"] > 0
    # Without the dense head's loss, the total is what it was: the head only adds its own terms.
    plain = model.criterion()({k: v for k, v in out.items() if k != "dense"}, targets())
    w = model.config.loss
    added = w.class_weight * losses["loss_dense_ce"] + w.l1_weight * losses["loss_dense_l1"] + w.giou_weight * losses["loss_dense_giou"]
    torch.testing.assert_close(losses["loss"], plain["loss"] + added)
    losses["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()
    with torch.no_grad():
        assert "dense" not in model(images())


def test_query_selection_starts_queries_on_the_dense_heads_best_boxes():
    """The ``min(Q, S)`` best dense locations' boxes are every group's first anchors (best first),
    the learned anchors fill the rest, and the dense head runs at inference as well."""
    from plaindet.errors import ConfigError
    from plaindet.models.detr import inverse_sigmoid

    model = tiny(anchor_queries=True, dense_aux=True, query_selection=True, query_groups=2, loss={"classification": "focal"}).eval()
    wh = torch.tensor([64.0, 32.0])
    logits = torch.tensor([[[0.0, -5.0, -5.0], [-5.0, -5.0, 3.0], [-9.0, -9.0, -9.0], [1.0, -5.0, -5.0]]])  # (1, S=4, K=3)
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 16.0], [16.0, 8.0, 48.0, 24.0], [0.0, 0.0, 64.0, 32.0], [32.0, 16.0, 64.0, 32.0]]])
    learned = torch.randn(1, 12, 4)
    anchors, _ = model.selected_anchors({"logits": logits, "boxes": boxes}, learned, 2, wh)
    order = [1, 3, 0, 2]  # by best class score: 3, 1, 0, -9
    expect = inverse_sigmoid(torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    for g in range(2):
        torch.testing.assert_close(anchors[0, g * 6 : g * 6 + 4], expect)
        torch.testing.assert_close(anchors[0, g * 6 + 4 : g * 6 + 6], learned[0, g * 6 + 4 : g * 6 + 6])
    assert order == logits.amax(-1)[0].argsort(descending=True).tolist()
    # In the model: a 64 px input has 2 x 2 memory cells, so anchors 0-3 are replaced and 4-5 are not.
    x = images()
    with torch.no_grad():
        before = model(x)["boxes"]
        model.anchor_embed.weight[:4] += 1.0
        assert torch.equal(model(x)["boxes"], before)
        model.anchor_embed.weight[4:6] += 1.0
        assert not torch.allclose(model(x)["boxes"], before)
    model.train()
    losses = model.criterion()(model(x, targets()), targets())
    assert "loss_dense_ce" in losses
    with pytest.raises(ConfigError):
        tiny(anchor_queries=True, query_selection=True)  # no dense head


def test_selected_content_is_the_dense_features_at_the_selected_locations():
    """Each group's first ``k`` contents are the projected dense-map features at the chosen
    locations (maps flattened level by level, the dense head's order); the learned rest is kept; the
    option needs query selection."""
    from plaindet.errors import ConfigError

    model = tiny(anchor_queries=True, dense_aux=True, query_selection=True, selected_content=True, query_groups=2, loss={"classification": "focal"})
    d = model.config.hidden_dim
    maps = [torch.randn(1, d, 2, 2), torch.randn(1, d, 1, 1)]  # S = 5 locations
    flat = torch.cat([maps[0].flatten(2)[0].T, maps[1].flatten(2)[0].T])  # (5, D)
    idx = torch.tensor([[4, 1, 2]])
    learned = torch.randn(1, 2 * 6, d)
    content = model.selected_queries(maps, idx, learned, 2)
    for g in range(2):
        torch.testing.assert_close(content[0, g * 6 : g * 6 + 3], model.content_proj(flat[[4, 1, 2]]))
        torch.testing.assert_close(content[0, g * 6 + 3 : g * 6 + 6], learned[0, g * 6 + 3 : g * 6 + 6])
    # In the model the selected queries' content reaches the output.
    model.eval()
    x = images()
    with torch.no_grad():
        before = model(x)["logits"]
        model.content_proj[0].weight += torch.randn_like(model.content_proj[0].weight)
        assert not torch.allclose(model(x)["logits"], before)
    with pytest.raises(ConfigError, match="needs query_selection"):
        tiny(anchor_queries=True, dense_aux=True, selected_content=True)


def test_query_nms_selects_distinct_locations_first():
    """Distinct queries: a location whose box overlaps a better one's beyond the IoU goes behind
    every distinct location (in score order), so one object's neighbouring cells do not take two
    queries while another object has none; off, the plain top-k."""
    from plaindet.errors import ConfigError
    from plaindet.models.detr import distinct_locations

    # Locations 0 and 1 are one object (IoU 0.81); 2 is another; 3 overlaps 2 slightly (IoU 0.09).
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 30.0, 30.0], [26.0, 26.0, 36.0, 36.0]]])
    scores = torch.tensor([[5.0, 4.0, 3.0, 1.0]])
    assert distinct_locations(scores, boxes, 2, 0.7).tolist() == [[0, 2]]
    assert distinct_locations(scores, boxes, 4, 0.7).tolist() == [[0, 2, 3, 1]]  # the duplicate last
    assert distinct_locations(scores, boxes, 4, 0.9).tolist() == [[0, 1, 2, 3]]  # under the threshold: kept
    assert distinct_locations(scores, boxes, 4, 0.05).tolist() == [[0, 2, 1, 3]]  # 3 overlaps 2 at 0.09
    # In the model: the selected anchors are the distinct locations' boxes.
    model = tiny(anchor_queries=True, dense_aux=True, query_selection=True, query_nms=0.7, loss={"classification": "focal"}).eval()
    logits = scores[..., None].expand(1, 4, 3)
    _, idx = model.selected_anchors({"logits": logits, "boxes": boxes}, torch.zeros(1, 6, 4), 1, torch.tensor([40.0, 40.0]))
    assert idx.tolist() == [[0, 2, 3, 1]]
    with torch.no_grad():
        assert model(images())["boxes"].shape == (2, 6, 4)
    for bad in ({"query_nms": 1.0}, {"query_nms": 0.7, "query_selection": False}):
        with pytest.raises(ConfigError, match="query_nms"):
            tiny(anchor_queries=True, dense_aux=True, **{"query_selection": True, **bad})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detr-r18", "deperceiver-r18"])
def test_the_inference_options_export_and_match_pytorch(name, tmp_path):
    """Anchor queries, the spatial prior (DETR), sigmoid decoding and query selection with distinct
    queries and selected content (topk, an IoU matrix and gathers over the dense head in the graph)
    export, and the ONNX graph gives PyTorch's detections."""
    pytest.importorskip("onnxruntime")
    from plaindet.export.onnx import export_onnx, onnx_parity

    extra = dict(encoder_layers=1, spatial_prior=True) if name.startswith("detr") else dict(latent_layers=1, num_latents=8)
    base = {k: v for k, v in TINY.items() if k != "encoder_layers"}
    torch.manual_seed(0)
    model = plaindet.create_model(
        name, num_classes=3, image_size=SIZE, **base, **extra, anchor_queries=True, dense_aux=True, query_selection=True,
        selected_content=True, query_nms=0.7, loss={"classification": "focal"},
    ).eval()
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_batch=True)
    parity = onnx_parity(model, path, images())
    assert parity["scores"] < 1e-4 and parity["boxes"] < 1e-3, parity


def test_the_convergence_options_are_the_default_and_detr_paper_turns_them_off():
    """Every set detector starts with focal classes, anchor queries, the dense head and query
    selection (what made detr-r18 learn at all); DETR_PAPER gives the published recipe back."""
    from plaindet.models.factory import model_config

    for name in ("detr-r18", "detr-r50", "detr-bit50", "deperceiver-r18", "deperceiver-r50"):
        c = model_config(name)
        assert (c.loss.classification, c.anchor_queries, c.dense_aux, c.query_selection, c.query_nms, c.dense_inside, c.selected_content) == ("focal", True, True, True, 0.7, True, True), name
        assert getattr(c, "identity_init", True), name
    paper = model_config("detr-r50", **DETR_PAPER)
    assert (paper.loss.classification, paper.anchor_queries, paper.dense_aux, paper.query_selection, paper.query_nms, paper.selected_content) == ("softmax", False, False, False, 0.0, False)
    assert paper.backbone_norm == "frozen_bn"


def test_a_checkpoint_from_before_distinct_queries_loads_without_them(tmp_path):
    """A config written before ``query_nms`` existed meant plain top-k selection: it loads so, and
    predicts as it did; a config that names the field keeps its value."""
    from plaindet.config import from_dict, to_dict
    from plaindet.models.detr import DetrConfig

    model = tiny(anchor_queries=True, dense_aux=True, query_selection=True, query_nms=0.0, loss={"classification": "focal"}).eval()
    path = model.save(tmp_path / "old.safetensors")
    old = to_dict(model.config)
    del old["query_nms"]
    assert from_dict(DetrConfig, old).query_nms == 0.0
    assert from_dict(DetrConfig, {**old, "query_nms": 0.7}).query_nms == 0.7
    assert saved_config(path)["query_nms"] == 0.0
    drop_config_field(path, "query_nms")
    loaded = plaindet.load(path, device="cpu")
    assert loaded.config.query_nms == 0.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(images())["boxes"], model(images())["boxes"])


def test_resuming_a_run_begun_before_distinct_queries_continues_without_them(tiny_shapes, tmp_path):
    """A run whose checkpoint predates ``query_nms`` resumes with the model it was training (plain
    top-k selection), not with the new default; a new run gets the default."""
    import dataclasses

    from plaindet.engine.train import added_fields_missing, train
    from plaindet.engine.train_config import TrainConfig

    assert added_fields_missing("detr-r18", {"name": "detr-r18"}) == {"query_nms": 0.0, "dense_inside": False, "selected_content": False}
    assert added_fields_missing("detr-r18", {"query_nms": 0.7, "dense_inside": True, "selected_content": True}) == {} and added_fields_missing("plaindet-t", {}) == {}
    small = {k: v for k, v in TINY.items() if k != "num_queries"}
    cfg = TrainConfig(
        model="detr-r18", data=str(tiny_shapes), train_split="valid", val_split="valid", out=str(tmp_path / "run"), epochs=2,
        batch_size=4, image_size=64, amp="off", eval_every=0, warmup_steps=1, model_overrides=small,
    )  # fmt: skip
    train(dataclasses.replace(cfg, max_steps=1))
    last = tmp_path / "run" / "last.safetensors"
    assert saved_config(last)["query_nms"] == 0.7  # a new run: the default
    drop_config_field(last, "query_nms")  # as a checkpoint written before the field existed
    train(dataclasses.replace(cfg, max_steps=2, resume="auto"))
    assert saved_config(last)["query_nms"] == 0.0


def saved_config(path) -> dict:
    """The model config in a plaindet safetensors file's header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["config"])


def drop_config_field(path, key: str) -> None:
    """Rewrite ``path`` with ``key`` gone from its header's config, as a file older than the field."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    del config[key]
    save_file(state, str(path), metadata={**meta, "config": json.dumps(config)})


def share_between_tokens(x: torch.Tensor) -> float:
    """The share of ``x (B, S, D)``'s variance that differs between its ``S`` tokens."""
    return float(x.var(dim=1).mean() / x.var())


def test_identity_init_keeps_the_encoders_tokens_apart():
    """Untrained, DETR's Xavier-initialized encoder adds the same uniform-attention average to every
    token and each post-norm layer shrinks what tells the tokens apart; with ``identity_init`` the
    attention's output projections start at zero and six layers keep most of it."""
    from plaindet.models.detr import sine_position_embedding

    g = torch.Generator().manual_seed(0)
    # Tokens with a shared part, as an image's features have (a third of the variance between tokens).
    x = torch.randn(2, 1, 32, generator=g) + 0.7 * torch.randn(2, 64, 32, generator=g)
    pos = sine_position_embedding(8, 8, 32, x.device)[None]
    shares = {}
    for init in (False, True):
        model = tiny(encoder_layers=6, identity_init=init).eval()
        if init:
            for layer in model.encoder.layers:
                assert not layer.self_attn.out_proj.weight.any() and not layer.self_attn.out_proj.bias.any()
        with torch.no_grad():
            shares[init] = share_between_tokens(model.encoder(x, pos))
    assert 0.25 < share_between_tokens(x) < 0.45
    assert shares[True] > 0.15 and shares[False] < 0.07 and shares[True] > 3 * shares[False], shares
    # Loaded weights replace the init: the two models then compute the same memory.
    a, b = tiny(identity_init=True).eval(), tiny(identity_init=False).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(images())["boxes"], b(images())["boxes"])


def test_dense_inside_gives_an_object_only_locations_inside_it_or_the_nearest():
    """With ``inside_only`` an object's dense positives are locations whose center lies inside its box,
    and an object smaller than a cell gets just the location nearest its center; without it both
    are filled up to ``aux_topk`` with outside locations."""
    from plaindet.models.head import level_centers
    from plaindet.models.one_to_one import OneToOneCriterion

    centers = level_centers(8, 8, 32, torch.device("cpu"))  # (64, 2): a 256 px image at stride 32
    boxes = torch.cat([centers - 40, centers + 40], -1)[None]  # every location's box: 80 px, centered
    outputs = {"logits": torch.zeros(1, 64, 3), "boxes": boxes, "centers": centers}
    target = {"boxes": torch.tensor([[40.0, 40.0, 140.0, 100.0], [213.0, 130.0, 236.0, 150.0]]), "labels": torch.tensor([0, 1]), "size": (256, 256)}
    inside_large = {int(i) for i in torch.nonzero((centers[:, 0] > 40) & (centers[:, 0] < 140) & (centers[:, 1] > 40) & (centers[:, 1] < 100)).squeeze(1)}
    nearest_small = int(((centers - torch.tensor([224.5, 140.0])) ** 2).sum(1).argmin())
    assert len(inside_large) == 6 and not ((centers[:, 0] > 213) & (centers[:, 0] < 236)).any()

    (pred, gt), = OneToOneCriterion(3, aux_topk=8, inside_only=True).match_many(outputs, [target])
    assert {int(p) for p in pred[gt == 0]} == inside_large
    assert [int(p) for p in pred[gt == 1]] == [nearest_small]
    (pred, gt), = OneToOneCriterion(3, aux_topk=8).match_many(outputs, [target])
    assert inside_large < {int(p) for p in pred[gt == 0]} and len(pred) == 16


def test_every_ablation_of_the_shapes_benchmark_is_a_config_the_model_accepts():
    """``bench_models_shapes.py --ablate`` switches each default convergence option off; each
    switch (with what depends on it) must be a config the model builds, or the benchmark fails
    after its first twenty-minute run. Each also changes the default."""
    import importlib.util
    from pathlib import Path

    from plaindet.config import to_dict
    from plaindet.models.factory import model_config

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_models_shapes.py"
    spec = importlib.util.spec_from_file_location("bench_models_shapes", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("detr-r18", "deperceiver-r18"):
        planned = bench.ablation_overrides(name, {})
        assert "no selected content" in planned and "no query selection" in planned, name
        assert ("no identity init" in planned) == name.startswith("detr"), name
        default = to_dict(model_config(name))
        for option, overrides in planned.items():
            assert to_dict(model_config(name, **overrides)) != default, (name, option)
    # --ablate OPTION ...: only the options named (split over processes); a misspelt one stops
    # the benchmark before it trains anything
    assert list(bench.ablation_overrides("detr-r18", {}, ["frozen BN", "no identity init"])) == ["frozen BN", "no identity init"]
    assert list(bench.ablation_overrides("deperceiver-r18", {}, ["no identity init"])) == []
    with pytest.raises(SystemExit, match="frozen bn"):
        bench.ablation_overrides("detr-r18", {}, ["frozen bn"])
