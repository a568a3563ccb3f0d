"""DePerceiver: DETR's decoder and heads on a Perceiver IO encoder; every feature stride, several
scales, gradients, save/load and backbone weights."""

from __future__ import annotations

import pytest
import torch

import plaindet
from plaindet.config import from_dict, to_dict
from plaindet.models.deperceiver import DePerceiverConfig
from plaindet.models.detr import DETR_PAPER
from plaindet.models.resnet import ResNet

# The published recipe's options (the convergence options off), so each test switches on what it tests.
CLASSIC = {k: v for k, v in DETR_PAPER.items() if k != "backbone_norm"}
TINY = dict(backbone_depth=18, hidden_dim=32, heads=4, num_latents=16, latent_layers=1, decoder_layers=2, ffn_dim=64, num_queries=10)


def tiny(num_classes: int = 3, **overrides):
    torch.manual_seed(0)
    return plaindet.create_model("deperceiver-r18", num_classes=num_classes, **{**TINY, **CLASSIC, **overrides})


def random_targets(g: torch.Generator, counts: list[int], h: int, w: int, num_classes: int) -> list[dict]:
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=g), "size": (h, w)})
    return targets


@pytest.mark.parametrize(("factor", "multi_scale", "stages", "tokens"), [(4, False, 1, 16 * 24), (8, False, 2, 8 * 12), (16, True, 4, 4 * 6 + 2 * 3), (32, False, 4, 2 * 3)])
def test_reads_the_stride_it_is_asked_for(factor, multi_scale, stages, tokens):
    model = tiny(downsample_factor=factor, multi_scale=multi_scale).eval()
    assert model.backbone.num_stages == stages  # stages past the coarsest one read are not built
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    seen = {}
    model.encoder.cross.register_forward_hook(lambda m, args, out: seen.update(inputs=args[1].shape, latents=out.shape))
    with torch.no_grad():
        out = model(images)
    assert seen["inputs"] == (2, tokens, 32)  # every pixel of the stride(s) read...
    assert seen["latents"] == (2, 16, 32)  # ...into a fixed number of latents
    assert out["logits"].shape == (2, 10, 4) and out["boxes"].shape == (2, 10, 4)
    assert torch.isfinite(out["logits"]).all() and ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()
    with torch.no_grad():
        b, s, _ = model.postprocess(out)
    assert b.shape == (2, 10, 4) and (s[:, :-1] >= s[:, 1:]).all()


def test_every_trainable_parameter_gets_a_gradient():
    model = tiny(downsample_factor=16, multi_scale=True).train()
    g = torch.Generator().manual_seed(0)
    out = model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g))
    assert out["aux_logits"].shape == (1, 2, 10, 4)
    losses = model.criterion()(out, random_targets(g, [3, 1], 64, 96, 3))
    losses["loss"].backward()
    bad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any() or not torch.isfinite(p.grad).all())]
    assert not bad
    assert {"encoder.latents", "scale_embed", "query_embed.weight"} == model.no_weight_decay()
    assert all(n in dict(model.named_parameters()) for n in model.no_weight_decay())


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny(downsample_factor=8).eval()
    loaded = plaindet.load(model.save(tmp_path / "dp.safetensors"))
    assert loaded.config == model.config and loaded.backbone.num_stages == 2
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["boxes"], b["boxes"])
    assert from_dict(DePerceiverConfig, to_dict(model.config)) == model.config


def test_backbone_weights_skip_unbuilt_stages_and_freeze_stem_and_layer1():
    torch.manual_seed(3)
    weights = ResNet(18).state_dict()  # all four stages; the model reads stride 8 (two)
    model = plaindet.create_model("deperceiver-r18", num_classes=3, backbone_weights=weights, downsample_factor=8, **TINY)
    assert torch.equal(model.backbone.layer2[0].conv1.weight, weights["layer2.0.conv1.weight"])
    assert not model.backbone.layer1[0].conv1.weight.requires_grad and model.backbone.layer2[0].conv1.weight.requires_grad


def test_rejects_unknown_downsample_factor():
    with pytest.raises(ValueError, match="downsample_factor"):
        tiny(downsample_factor=2)
