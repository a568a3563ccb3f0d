"""Every registered model keeps the contract of :mod:`plaindet.models.base` (timm-style registry tests).

Each model is built small (overrides below) so the whole registry runs in seconds; a newly registered
model without an entry here fails ``test_every_model_has_a_small_test_config``.
"""

from __future__ import annotations

import pytest
import torch

import plaindet
from plaindet.models.base import DetectionModel

SMALL = {
    "plaindet-t": {"neck_channels": 32, "backbone": {"depth": 2}},
    "plaindet-s": {"neck_channels": 32, "backbone": {"depth": 2}},
    "plaindet-b": {"neck_channels": 32, "backbone": {"depth": 1, "width": 96, "heads": 2}},
    "detr-r18": {"hidden_dim": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 10, "dropout": 0.0},
    "detr-r50": {"hidden_dim": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 10, "dropout": 0.0},
    "detr-bit50": {"hidden_dim": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 10, "dropout": 0.0},
    "deperceiver-r18": {"hidden_dim": 32, "heads": 2, "num_latents": 8, "latent_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 10, "dropout": 0.0},
    "deperceiver-r50": {"hidden_dim": 32, "heads": 2, "num_latents": 8, "latent_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 10, "dropout": 0.0},
    "patchtok-ti": {"backbone": {"depth": 2}, "decoder": {"width": 32, "depth": 1, "heads": 2, "dropout": 0.0}, "max_objects": 4},
    "patchtok-s": {"backbone": {"depth": 2, "width": 96, "heads": 2}, "decoder": {"width": 32, "depth": 1, "heads": 2, "dropout": 0.0}, "max_objects": 4},
}
MODELS = plaindet.list_models()
SIZE = 64
# The module that registers each family's variants, and the test file that checks that family.
FAMILY_TESTS = {
    "plaindet.models.plaindet": "test_detector.py",
    "plaindet.models.detr": "test_detr.py",
    "plaindet.models.deperceiver": "test_deperceiver.py",
    "plaindet.models.patchtok": "test_patchtok.py",
}


def test_list_models_is_every_registered_name_in_sorted_order(monkeypatch):
    from plaindet.models import factory
    from plaindet.models.registry import REGISTRY

    assert set(MODELS) == set(REGISTRY) and len(MODELS) == len(REGISTRY)
    # Sorted by rule, not by the order in which the families happen to register: a registry filled
    # in reverse order lists the same names in the same order.
    monkeypatch.setattr(factory, "REGISTRY", dict(reversed(list(REGISTRY.items()))))
    assert factory.list_models() == MODELS
    assert all(a < b for a, b in zip(MODELS, MODELS[1:]))


def test_every_model_is_covered_by_the_registry_and_family_tests():
    from pathlib import Path

    from plaindet.models.registry import REGISTRY

    # Every test below is parametrized over MODELS and builds the model from its SMALL entry.
    assert set(REGISTRY) - set(SMALL) == set(), "registered models without a small test config"
    assert set(SMALL) - set(REGISTRY) == set(), "small test configs of models that are not registered"
    families = {REGISTRY[name].__module__ for name in REGISTRY}
    assert families == set(FAMILY_TESTS), "a model family without its own test file"
    here = Path(__file__).parent
    assert all((here / test_file).is_file() for test_file in FAMILY_TESTS.values())


def _build(name: str) -> DetectionModel:
    torch.manual_seed(0)
    return plaindet.create_model(name, class_names=["a", "b", "c"], image_size=SIZE, **SMALL[name])


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2]), "size": torch.tensor([SIZE, SIZE])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 33.0]]), "labels": torch.tensor([1]), "size": torch.tensor([SIZE, SIZE])},
    ]
    return images, targets


@pytest.mark.parametrize("name", MODELS)
def test_forward_loss_and_gradients(name):
    model = _build(name)
    assert isinstance(model, DetectionModel)
    assert SIZE % model.size_divisor == 0
    images, targets = _batch()
    model.train()
    outputs = model(images, targets)
    losses = model.criterion()(outputs, targets)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    losses["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"trainable parameters without a finite gradient: {no_grad[:10]}"
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_postprocess_contract_and_save_load_round_trip(name, tmp_path):
    model = _build(name).eval()
    images, _ = _batch()
    with torch.no_grad():
        boxes, scores, labels = model.postprocess(model(images))
    k = boxes.shape[1]
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and labels.shape == (2, k) and k <= model.config.max_detections
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all() and (scores[:, :-1] >= scores[:, 1:]).all()
    assert ((labels >= 0) & (labels < 3)).all()

    model.save(tmp_path / "m.safetensors")
    loaded = plaindet.load(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        again = loaded.postprocess(loaded(images))
    for a, b in zip((boxes, scores, labels), again):
        assert torch.equal(a, b)
    dets = loaded.predict(images[0], threshold=0.0)
    assert len(dets) == k and dets.class_names == [["a", "b", "c"][i] for i in dets.labels]


def test_flop_counter_counts_cpu_attention_and_meta_counts_equal_real_ones(measured):
    """CPU attention is counted (torch's counter alone leaves it out), and count_flops on the meta
    device equals a count of the real forward."""
    import torch.nn.functional as F

    from plaindet.flops import flop_counter
    from plaindet.models.factory import count_flops, model_config

    b, h, n, m, d = 2, 3, 50, 40, 16
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, d)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * (2 * b * h * n * m * d)  # q k^T and the weighted sum of v
    config = model_config("plaindet-t")
    model = config.model_class()(config).eval().requires_grad_(False)
    with torch.no_grad(), flop_counter() as counter:
        model.postprocess(model(torch.zeros(1, 3, 128, 160, dtype=torch.uint8)))
    assert count_flops(config, (128, 160)) == counter.get_total_flops() > 0
    # a hand count of the backbone's linear layers at 128x160: 80 patch tokens + the class token
    width, tokens = config.backbone.width, 81
    linear = 2 * tokens * 12 * width * width * config.backbone.depth  # qkv 3, proj 1, mlp 4 + 4 (width^2 each)
    with flop_counter() as counter:
        model.backbone(torch.zeros(1, 3, 128, 160))
    attention_and_patches = counter.get_total_flops() - linear
    assert 0 < attention_and_patches < 0.5 * linear
    measured("plaindet-t GFLOPs at 640x640 (2 per multiply-add)", f"{count_flops(config, 640) / 1e9:.1f}")


@pytest.mark.parametrize("max_objects", [4, 9])
def test_a_token_decoders_flops_from_three_short_decodings_equal_counting_every_step(max_objects):
    """count_flops gets an autoregressive decoder's count from decodings of 1, 2 and 3 objects (a
    quadratic in max_objects); counting all 3 * max_objects + 1 steps gives the same number."""
    import dataclasses

    from plaindet.models.factory import _count_flops, count_flops, model_config

    config = dataclasses.replace(model_config("patchtok-ti"), max_objects=max_objects)
    assert count_flops(config, (96, 128)) == _count_flops(config, (96, 128), 1) > _count_flops(dataclasses.replace(config, max_objects=3), (96, 128), 1)


def test_detr_r50_flops_agree_with_the_published_figure(measured):
    """The DETR paper gives DETR-R50 86 GFLOPs, counted by fvcore (one multiply-add = one flop) over
    COCO val images at 800 px short side; a 4:3 image there is 800x1066. Our count is 2 per multiply-add."""
    from plaindet.models.detr import DETR_PAPER
    from plaindet.models.factory import count_flops, model_config

    gmacs = count_flops(model_config("detr-r50", **DETR_PAPER), (800, 1066)) / 2e9
    assert 0.85 < gmacs / 86 < 1.15
    measured("DETR-R50 multiply-adds at 800x1066 vs the DETR paper's 86 G", f"{gmacs:.1f} G ({gmacs / 86:.2f}x)")
