"""The detector: every registered variant, frozen backbones, matching, save/load and predict."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import plaindet
from plaindet.errors import CheckpointError
from plaindet.errors import ConfigError
from plaindet.data.shapes import render
from plaindet.engine.train import param_groups
from plaindet.engine.train_config import TrainConfig
from plaindet.models.one_to_one import OneToOneCriterion
from plaindet.detections import Detections
from plaindet.models.vit import ViT, clip_config

MODELS = [m for m in plaindet.list_models() if m.startswith("plaindet-")]  # the flagship family; tests/test_registry.py covers all


def num_locations(h: int, w: int, strides=(8, 16, 32)) -> int:
    return sum((h // s) * (w // s) for s in strides)


def random_targets(generator: torch.Generator, sizes: list[int], h: int, w: int, num_classes: int) -> list[dict]:
    """Per image ``n`` random boxes (``sizes[i]`` of them) of 6 px to the full image."""
    targets = []
    for n in sizes:
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w - 6.0, h - 6.0])
        wh = 6 + torch.rand(n, 2, generator=generator) * torch.tensor([w, h])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], dim=1)
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "size": (h, w)})
    return targets


def assert_same_detections(a: Detections, b: Detections, atol: float = 1e-3) -> None:
    """Same boxes, scores and labels up to float noise, whatever the order of near-tied scores."""
    assert len(a) == len(b)
    np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-6)
    for box, score, label in zip(a.boxes, a.scores, a.labels):
        close = (np.abs(b.scores - score) <= 1e-6) & (b.labels == label) & np.all(np.abs(b.boxes - box) <= atol, axis=1)
        assert close.any(), f"detection {box} {score} {label} is missing"


@pytest.fixture(scope="module", params=MODELS)
def variant(request):
    """``(name, model)`` for every registered model, with its default 80 classes."""
    torch.manual_seed(0)
    return request.param, plaindet.create_model(request.param)


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained plaindet-t with 3 classes; its class logits are spread out so top-k is not all ties."""
    torch.manual_seed(0)
    model = plaindet.create_model("plaindet-t", num_classes=3, image_size=128)
    with torch.no_grad():
        model.head.cls_out.weight.mul_(50)
    return model.eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 200 x 300 (H x W) RGB image with some structure: part of a shapes image."""
    return np.ascontiguousarray(render(3, seed=1)[0][:200, :300])


# ------------------------------------------------------------------------------------------------
# Every registered model


def test_registry_lists_the_variants():
    assert {"plaindet-t", "plaindet-s", "plaindet-b"} <= set(MODELS)
    assert MODELS == sorted(MODELS)


def test_forward_shapes_and_finite(variant):
    name, model = variant
    model.eval()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
    n = num_locations(64, 96)
    assert set(out) == {"logits", "boxes", "centers", "strides"}  # no aux head at inference
    assert out["logits"].shape == (2, n, 80) and out["boxes"].shape == (2, n, 4)
    assert out["centers"].shape == (n, 2) and out["strides"].shape == (n,)
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["boxes"]).all()
    assert (out["boxes"][..., 2:] > out["boxes"][..., :2]).all()  # positive widths and heights
    # Float images in [0, 255] are the same input as uint8.
    with torch.no_grad():
        assert torch.allclose(model(images.float())["logits"], out["logits"], atol=1e-5)


def test_forward_rejects_sizes_not_multiple_of_32(variant):
    _, model = variant
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 3, 64, 80, dtype=torch.uint8))


def test_every_parameter_gets_a_gradient(variant):
    name, model = variant
    model.train()
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(0)
    out = model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g))
    assert "aux" in out and out["aux"]["logits"].shape == out["logits"].shape
    targets = random_targets(g, [3, 1], 64, 96, num_classes=80)
    losses = OneToOneCriterion(80)(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    not_finite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    all_zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing, f"{name}: no gradient for {missing}"
    assert not not_finite, f"{name}: non-finite gradient for {not_finite}"
    assert not all_zero, f"{name}: all-zero gradient for {all_zero}"
    model.zero_grad(set_to_none=True)
    model.eval()


def test_parameter_counts():
    counts = {}
    for name in ("plaindet-t", "plaindet-s", "plaindet-b"):
        with torch.device("meta"):  # shapes only: no memory, no init time
            model = plaindet.create_model(name)
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 80e6 < counts["plaindet-b"] < 100e6
    assert counts["plaindet-t"] < counts["plaindet-s"] < counts["plaindet-b"]
    assert 4e6 < counts["plaindet-t"] < 10e6


def test_create_model_errors_are_helpful():
    with pytest.raises(ValueError, match="did you mean 'plaindet-t'"):
        plaindet.create_model("plaindet-x")
    with pytest.raises(ConfigError, match="did you mean 'neck_channels'"):
        plaindet.create_model("plaindet-t", neck_chanels=64)
    with pytest.raises(ValueError, match="2 class_names"):
        plaindet.create_model("plaindet-t", num_classes=3, class_names=["a", "b"])


def test_class_names_set_num_classes():
    model = plaindet.create_model("plaindet-t", class_names=["a", "b"], category_ids=[5, 9])
    assert model.config.num_classes == 2 and model.config.category_ids == [5, 9]
    assert model.head.cls_out.out_channels == 2


def test_class_names_alone_get_default_category_ids():
    model = plaindet.create_model("plaindet-t", class_names=["a", "b", "c"])
    assert model.config.num_classes == 3 and model.config.category_ids == [0, 1, 2]


# ------------------------------------------------------------------------------------------------
# Frozen backbone


def clip_like_state_dict() -> dict[str, torch.Tensor]:
    """Weights of a fresh plaindet-t-sized CLIP ViT: our names are timm's CLIP layout."""
    torch.manual_seed(123)
    return {k: v.clone() for k, v in ViT(clip_config(192, 12, 3)).state_dict().items()}


def take_steps(model, steps: int = 2) -> None:
    optimizer = torch.optim.AdamW(param_groups(model, TrainConfig()), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    criterion = OneToOneCriterion(model.config.num_classes)
    model.train()
    for _ in range(steps):
        out = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g))
        criterion(out, random_targets(g, [2, 1], 64, 64, model.config.num_classes))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_backbone_weights_freeze_the_backbone():
    weights = clip_like_state_dict()
    model = plaindet.create_model("plaindet-t", num_classes=3, backbone_weights=weights)
    assert model.config.backbone_trainable is False
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    for k, v in weights.items():
        assert torch.equal(backbone[k], v), f"{k} was not loaded"
    assert not any(p.requires_grad for p in model.backbone.parameters())
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}

    take_steps(model)

    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), f"frozen {k} changed"
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if k in others and not torch.equal(v, others[k])}
    assert {"neck", "head", "aux_head"} <= changed


def test_without_backbone_weights_the_backbone_trains_and_a_warning_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="plaindet"):
        model = plaindet.create_model("plaindet-t", num_classes=3)
    assert any("without backbone weights" in r.getMessage() for r in caplog.records)
    assert model.config.backbone_trainable is True
    assert all(p.requires_grad for p in model.backbone.parameters())
    before = model.backbone.patch_embed.proj.weight.detach().clone()
    take_steps(model, steps=1)
    assert not torch.equal(model.backbone.patch_embed.proj.weight, before)


def test_frozen_backbone_stays_frozen_after_save_and_load(tmp_path):
    model = plaindet.create_model("plaindet-t", num_classes=3, backbone_weights=clip_like_state_dict())
    loaded = plaindet.load(model.save(tmp_path / "m.safetensors"))
    assert loaded.config.backbone_trainable is False
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    assert all(p.requires_grad for p in loaded.head.parameters())


# ------------------------------------------------------------------------------------------------
# Matching in the criterion


def test_one_to_one_match_is_unique_and_covers_every_object(tiny_model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = tiny_model(torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8, generator=g))
    targets = random_targets(g, [5, 1, 12], 64, 96, num_classes=3)
    indices = OneToOneCriterion(3).match(out, targets)
    assert len(indices) == 3
    for (pred, gt), tgt in zip(indices, targets):
        n = len(tgt["labels"])
        assert sorted(gt.tolist()) == list(range(n))
        assert len(set(pred.tolist())) == n
        assert ((pred >= 0) & (pred < out["logits"].shape[1])).all()


def test_criterion_handles_images_without_objects(tiny_model):
    g = torch.Generator().manual_seed(2)
    tiny_model.train()
    try:
        out = tiny_model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g))
    finally:
        tiny_model.eval()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "size": (64, 64)}
    criterion = OneToOneCriterion(3)
    indices = criterion.match(out, [empty, empty])
    assert all(len(p) == len(gt) == 0 for p, gt in indices)
    losses = criterion(out, [empty, empty])
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0  # background is still learned
    assert losses["loss_l1"] == 0 and losses["loss_giou"] == 0
    mixed = criterion(out, [empty, random_targets(g, [2], 64, 64, 3)[0]])
    assert torch.isfinite(mixed["loss"]) and mixed["loss_l1"] > 0


def test_one_to_many_match_gives_at_most_topk_per_object_and_each_prediction_once(tiny_model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = tiny_model(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=g))
    targets = random_targets(g, [6, 2], 96, 96, num_classes=3)
    criterion = OneToOneCriterion(3, aux_topk=4)
    for (pred, gt), tgt in zip(criterion.match_many(out, targets), targets):
        assert len(pred) == len(gt) and len(pred) > len(tgt["labels"])  # one-to-many: more than one each
        assert len(set(pred.tolist())) == len(pred)
        assert np.bincount(gt.numpy(), minlength=len(tgt["labels"])).max() <= 4
        assert set(gt.tolist()) <= set(range(len(tgt["labels"])))


def _per_image_matches(criterion: OneToOneCriterion, out: dict, targets: list[dict]):
    """OneNet's matching written the plain way, one image at a time (the reference for the batched code)."""
    from plaindet.ops.boxes import generalized_box_iou
    from plaindet.ops.losses import focal_cost
    from plaindet.ops.matching import min_cost_assignment

    w, ones, manys = criterion.w, [], []
    for logits, boxes, t in zip(out["logits"], out["boxes"].float(), targets):
        gt, (h, wd) = t["boxes"].float(), t["size"]
        scale = torch.tensor([wd, h, wd, h], dtype=torch.float32)
        cost = (
            w.cls * focal_cost(logits, w.focal_alpha, w.focal_gamma)[:, t["labels"]]
            + w.l1 * (boxes[:, None] / scale - gt[None] / scale).abs().sum(-1)
            - w.giou * generalized_box_iou(boxes, gt)
        )
        ones.append(min_cost_assignment(cost))
        c = out["centers"]
        inside = (c[:, None, 0] > gt[:, 0]) & (c[:, None, 0] < gt[:, 2]) & (c[:, None, 1] > gt[:, 1]) & (c[:, None, 1] < gt[:, 3])
        cost = cost + (~inside) * 1e4
        pairs = []
        for loc in range(cost.shape[0]):  # each location: the cheapest object whose top-k it is in
            owners = [j for j in range(cost.shape[1]) if loc in cost[:, j].topk(min(criterion.aux_topk, cost.shape[0]), largest=False).indices]
            if owners:
                pairs.append((loc, min(owners, key=lambda j: cost[loc, j])))
        manys.append(pairs)
    return ones, manys


def test_batched_matching_equals_per_image_matching(tiny_model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        out = tiny_model(torch.randint(0, 256, (4, 3, 96, 128), dtype=torch.uint8, generator=g))
    targets = random_targets(g, [5, 0, 1, 3], 96, 128, num_classes=3)
    criterion = OneToOneCriterion(3, aux_topk=3)
    ones, manys = _per_image_matches(criterion, out, targets)
    for (pred, gt), (ref_pred, ref_gt) in zip(criterion.match(out, targets), ones):
        assert pred.tolist() == ref_pred.tolist() and gt.tolist() == ref_gt.tolist()
    for (pred, gt), ref in zip(criterion.match_many(out, targets), manys):
        assert list(zip(pred.tolist(), gt.tolist())) == ref
    assert sum(len(r) for r in manys) > 4  # the comparison covered real matches
    cost, gt = criterion.costs(out, targets)
    valid = torch.arange(5)[None] < torch.tensor([5, 0, 1, 3])[:, None]  # (B, G): each image's own objects
    assert cost.shape[2] == 5 and gt.shape == (4, 5, 4)
    assert torch.isinf(cost[~valid[:, None].expand_as(cost)]).all() and torch.isfinite(cost[valid[:, None].expand_as(cost)]).all()
    for t, boxes, keep in zip(targets, gt, valid):
        assert torch.equal(boxes[keep], t["boxes"].float())


# ------------------------------------------------------------------------------------------------
# Save and load


def test_save_load_round_trip_is_exact(tmp_path, photo):
    model = plaindet.create_model("plaindet-t", class_names=["a", "b"], category_ids=[3, 7], image_size=128).eval()
    path = model.save(tmp_path / "m.safetensors")
    # The file alone is enough: move it where nothing else is.
    alone = tmp_path / "elsewhere" / "renamed.safetensors"
    alone.parent.mkdir()
    path.rename(alone)
    assert sorted(p.name for p in alone.parent.iterdir()) == ["renamed.safetensors"]
    loaded = plaindet.load(alone)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.config.class_names == ["a", "b"] and loaded.config.category_ids == [3, 7]
    x = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["boxes"], b["boxes"])
    pa, pb = model.predict(photo, threshold=0.0), loaded.predict(photo, threshold=0.0)
    assert np.array_equal(pa.boxes, pb.boxes) and np.array_equal(pa.scores, pb.scores)
    assert np.array_equal(pa.labels, pb.labels) and pa.class_names == pb.class_names


def test_load_accepts_a_folder_with_model_safetensors(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "model.safetensors")
    assert plaindet.load(tmp_path).config == tiny_model.config


def test_save_leaves_no_temporary_files(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "m.safetensors")
    tiny_model.save(tmp_path / "m.safetensors")  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_loading_never_unpickles(tmp_path, tiny_model, monkeypatch):
    path = tiny_model.save(tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not unpickle")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    assert plaindet.load(path).config == tiny_model.config


def test_truncated_checkpoint_gives_checkpoint_error_naming_the_file(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("header-only", data[:200]), ("garbage", b"\x00" * 64)):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            plaindet.load(bad)
        assert str(bad) in str(info.value)


def test_other_files_give_checkpoint_error_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a plaindet-detector checkpoint") as info:
        plaindet.load(other)
    assert str(other) in str(info.value)
    with pytest.raises(CheckpointError, match="not found") as info:
        plaindet.load(tmp_path / "missing.safetensors")
    assert "missing.safetensors" in str(info.value)


# ------------------------------------------------------------------------------------------------
# predict: every input type, boxes in original pixels


def test_predict_accepts_every_input_type(tmp_path, tiny_model, photo):
    png = tmp_path / "photo.png"
    Image.fromarray(photo).save(png)
    reference = tiny_model.predict(photo, threshold=0.0)
    assert isinstance(reference, Detections) and len(reference) == tiny_model.config.max_detections
    assert reference.boxes.dtype == np.float32 and reference.boxes.shape == (100, 4)
    assert reference.scores.dtype == np.float32 and reference.labels.dtype == np.int64
    assert (np.diff(reference.scores) <= 0).all()
    assert reference.class_names == [tiny_model.config.class_names[k] for k in reference.labels]

    chw = torch.from_numpy(photo).permute(2, 0, 1)
    singles = {
        "path": png,
        "str path": str(png),
        "PIL RGB": Image.fromarray(photo),
        "float array": photo.astype(np.float64) / 255,
        "uint8 tensor": chw,
        "float tensor": chw.float() / 255,
    }
    for what, image in singles.items():
        result = tiny_model.predict(image, threshold=0.0)
        assert np.array_equal(result.boxes, reference.boxes), what
        assert np.array_equal(result.scores, reference.scores), what
        assert np.array_equal(result.labels, reference.labels), what

    mixed = tiny_model.predict([png, Image.fromarray(photo), chw, photo], threshold=0.0)
    assert isinstance(mixed, list) and len(mixed) == 4
    for result in mixed:
        assert_same_detections(result, reference)
    batch = tiny_model.predict(torch.stack([chw, chw]), threshold=0.0)
    assert isinstance(batch, list) and len(batch) == 2
    for result in batch:
        assert_same_detections(result, reference)


def test_predict_grayscale_pil_equals_gray_rgb(tiny_model, photo):
    gray = photo.mean(axis=2).astype(np.uint8)
    from_pil = tiny_model.predict(Image.fromarray(gray, mode="L"), threshold=0.0)
    from_rgb = tiny_model.predict(np.repeat(gray[..., None], 3, axis=2), threshold=0.0)
    assert np.array_equal(from_pil.boxes, from_rgb.boxes) and np.array_equal(from_pil.scores, from_rgb.scores)
    from_2d = tiny_model.predict(gray, threshold=0.0)
    assert np.array_equal(from_2d.boxes, from_rgb.boxes)


def test_predict_threshold_and_bounds(tiny_model, photo):
    everything = tiny_model.predict(photo, threshold=0.0)
    cut = float(np.median(everything.scores))
    some = tiny_model.predict(photo, threshold=cut)
    assert 0 < len(some) < len(everything) and (some.scores >= cut).all()
    # Boxes are clipped to the original image (W = 300, H = 200).
    b = everything.boxes
    assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 300).all()
    assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= 200).all()
    assert len(tiny_model.predict(photo, threshold=1.01)) == 0


def test_predict_rejects_bad_inputs(tiny_model):
    with pytest.raises(TypeError, match="cannot read an image"):
        tiny_model.predict(12)
    with pytest.raises(ValueError, match="uint8 or float"):
        tiny_model.predict(np.zeros((32, 32, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="shape"):
        tiny_model.predict(torch.zeros(5, 32, 32))


def white_rectangle_forward(num_classes: int):
    """A stand-in for ``Detector.forward`` that "detects" the white rectangle on a black input.

    It returns one location whose box is the rectangle's extent in input pixels and whose class-1
    logit is high: what a perfect detector would return, so predict's mapping back to the original
    image can be checked exactly.
    """

    def forward(images: torch.Tensor) -> dict:
        boxes = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        logits = torch.full((len(images), 1, num_classes), -10.0)
        logits[:, 0, 1] = 10.0
        return {"logits": logits, "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 1, 4)}

    return forward


@pytest.mark.parametrize(
    ("height", "width", "box", "image_size"),
    [
        (200, 300, (60, 40, 150, 120), 160),  # landscape, downscaled
        (300, 200, (20, 150, 190, 290), 160),  # portrait, downscaled
        (50, 80, (10, 5, 30, 45), 160),  # upscaled
        (400, 600, (120, 80, 300, 240), 160),  # the first image at twice the size
    ],
)
def test_predict_boxes_are_in_original_pixels(monkeypatch, height, width, box, image_size):
    model = plaindet.create_model("plaindet-t", num_classes=3)
    monkeypatch.setattr(model, "forward", white_rectangle_forward(3))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    scale = image_size / max(height, width)
    for result in (model.predict(image, image_size=image_size), model.predict([image, image], image_size=image_size)[1]):
        assert len(result) == 1 and result.labels.tolist() == [1]
        # One pixel of the resized image, where the rectangle's edge blurs, is 1 / scale original pixels.
        np.testing.assert_allclose(result.boxes[0], box, atol=1.0 / scale + 0.01)


def test_predict_pads_a_batch_of_different_sizes(monkeypatch):
    model = plaindet.create_model("plaindet-t", num_classes=3)
    monkeypatch.setattr(model, "forward", white_rectangle_forward(3))
    wide = np.zeros((100, 400, 3), dtype=np.uint8)
    wide[20:60, 100:300] = 255
    tall = np.zeros((300, 90, 3), dtype=np.uint8)
    tall[30:240, 10:80] = 255
    a, b = model.predict([wide, tall], image_size=128)
    np.testing.assert_allclose(a.boxes[0], (100, 20, 300, 60), atol=400 / 128 + 0.01)
    np.testing.assert_allclose(b.boxes[0], (10, 30, 80, 240), atol=300 / 128 + 0.01)
