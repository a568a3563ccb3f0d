"""BiT ResNet-v2: numerics against transformers' BitModel, the weight layouts (transformers, timm,
Google's .npz), bad weights, the backbone choice in DETR and DePerceiver, and detr-bit50 training
through the engine."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import plaindet
from plaindet.engine.train import train
from plaindet.engine.train_config import TrainConfig
from plaindet.errors import ConfigError, WeightsError
from plaindet.models.bit import BiT
from plaindet.models.bit_weights import bit_name_from_transformers, bit_name_to_transformers, bit_state_from_transformers, bit_state_to_transformers, load_bit_weights

# transformers' BitConfig of BiT-S-R50x1 as timm's resnetv2_50x1_bit builds it: pre-activation
# bottlenecks, symmetric padding (global_padding=None) and the "fixed" stem (pad 1, then pool).
BIT_R50 = dict(layer_type="preactivation", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], global_padding=None, embedding_dynamic_padding=False)
SMALL_TRANSFORMER = dict(hidden_dim=32, heads=2, encoder_layers=1, decoder_layers=2, ffn_dim=64, num_queries=10, dropout=0.0)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random and distinct: convolutions off-centre (so standardizing them matters),
    GroupNorm scales around 1 and shifts around 0 (so a norm that is skipped or misplaced shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 0.2)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def google_npz_layout(model: BiT) -> dict[str, np.ndarray]:
    """Our weights as Google's BiT .npz names them (HWIO kernels, and a classifier head), written here
    independently of the converter under test."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    hwio = lambda w: np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)
    out = {"resnet/root_block/standardized_conv2d/kernel": hwio(sd["stem.conv.weight"])}
    for s, blocks in enumerate(model.stages):
        for b, block in enumerate(blocks.blocks):
            ours, theirs = f"stages.{s}.blocks.{b}.", f"resnet/block{s + 1}/unit{b + 1:02d}/"
            for i, unit in enumerate("abc", start=1):
                out[f"{theirs}{unit}/standardized_conv2d/kernel"] = hwio(sd[f"{ours}conv{i}.weight"])
                out[f"{theirs}{unit}/group_norm/gamma"] = sd[f"{ours}norm{i}.weight"]
                out[f"{theirs}{unit}/group_norm/beta"] = sd[f"{ours}norm{i}.bias"]
            if block.downsample is not None:
                out[f"{theirs}a/proj/standardized_conv2d/kernel"] = hwio(sd[f"{ours}downsample.conv.weight"])
    out["resnet/group_norm/gamma"], out["resnet/group_norm/beta"] = sd["norm.weight"], sd["norm.bias"]
    out["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 2048, 10), np.float32)
    out["resnet/head/conv2d/bias"] = np.zeros(10, np.float32)
    return out


@pytest.fixture(scope="module")
def bit50() -> BiT:
    """A full-width BiT-R50x1 with random, distinct weights (the source of every layout below)."""
    return randomize_(BiT(50), seed=1)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------
# Numerics and the transformers mapping


def test_features_match_transformers_bitmodel(image, measured):
    """Random weights (GroupNorm affine terms too) mapped from transformers' BitModel give the same
    four feature maps: checks weight standardization, the stem's padding, pre-activation, the
    projection shortcut, stride placement and the final norm."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    reference = randomize_(transformers.BitModel(transformers.BitConfig(**BIT_R50)), seed=2)
    model = BiT(50).eval()
    load_bit_weights(model, reference.state_dict())
    with torch.no_grad():
        out = reference(image, output_hidden_states=True)
        ours = model(image)
    # hidden_states: the stem's output, then each stage's (before the final norm); the last stage
    # after the norm is last_hidden_state.
    expected = [*out.hidden_states[1:4], out.last_hidden_state]
    assert [f.shape[-1] for f in ours] == [32, 16, 8, 4] and model.channels == [256, 512, 1024, 2048]
    diffs = [(a - b).abs().max().item() for a, b in zip(ours, expected)]
    measured("BiT-R50x1 vs transformers BitModel, 1x3x128x128: max abs diff over the 4 stages", max(diffs))
    assert max(diffs) < 1e-4, diffs
    assert all(e.std() > 0.1 for e in expected)  # the features are not degenerate: the comparison means something
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_transformers_mapping_round_trips(bit50):
    transformers = pytest.importorskip("transformers")
    own = bit50.state_dict()
    theirs = bit_state_to_transformers(own)
    with torch.device("meta"):
        reference = transformers.BitModel(transformers.BitConfig(**BIT_R50))
    assert set(theirs) == set(reference.state_dict())  # exactly transformers' names
    back = bit_state_from_transformers(theirs)
    assert list(back) == list(own) and all(back[k] is own[k] for k in own)
    assert all(bit_name_from_transformers(bit_name_to_transformers(k)) == k for k in own)
    assert all(bit_name_to_transformers(bit_name_from_transformers(k)) == k for k in theirs)
    # BitForImageClassification's keys (prefixed, with a classifier) load as well.
    prefixed = {f"bit.{k}": v for k, v in theirs.items()} | {"classifier.1.weight": torch.zeros(3, 2048), "classifier.1.bias": torch.zeros(3)}
    model = BiT(50)
    load_bit_weights(model, prefixed)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in own.items())


# ------------------------------------------------------------------------------------------------
# timm and Google layouts


def test_timm_state_dict_loads_by_name(tmp_path, bit50, image):
    from safetensors.torch import save_file

    timm_state = {k: v.clone() for k, v in bit50.state_dict().items()}
    timm_state["head.fc.weight"], timm_state["head.fc.bias"] = torch.zeros(1000, 2048, 1, 1), torch.zeros(1000)
    # A few of timm's names, spelled out: the model's names must be these.
    assert {"stem.conv.weight", "stages.0.blocks.0.downsample.conv.weight", "stages.1.blocks.0.norm1.bias", "stages.3.blocks.2.conv3.weight", "norm.weight"} <= set(timm_state)
    save_file(timm_state, str(tmp_path / "model.safetensors"))
    model = BiT(50)
    load_bit_weights(model, tmp_path / "model.safetensors")  # a file, and the classifier is dropped
    with torch.no_grad():
        for a, b in zip(model.eval()(image), bit50(image)):
            assert torch.equal(a, b)


def test_google_npz_loads_with_hwio_kernels(tmp_path, bit50, image):
    np.savez(tmp_path / "BiT-S-R50x1.npz", **google_npz_layout(bit50))
    model = BiT(50)
    load_bit_weights(model, tmp_path / "BiT-S-R50x1.npz")
    own = bit50.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        for a, b in zip(model.eval()(image), bit50(image)):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Bad weights


def test_weights_of_another_depth_or_with_missing_keys_are_named(bit50):
    state = dict(bit50.state_dict())
    deeper = dict(state)  # stage 3 with 23 blocks: a BiT-R101's layout
    for b in range(6, 23):
        deeper.update({k.replace("stages.2.blocks.5.", f"stages.2.blocks.{b}."): v for k, v in state.items() if k.startswith("stages.2.blocks.5.")})
    with pytest.raises(WeightsError, match=r"3/4/23/3 blocks per stage \(BiT ResNet-101\), but the model is a BiT ResNet-50"):
        load_bit_weights(BiT(50), deeper)

    missing = {k: v for k, v in state.items() if k != "stages.1.blocks.2.norm2.weight"}
    with pytest.raises(WeightsError, match=r"missing keys stages\.1\.blocks\.2\.norm2\.weight; unexpected keys \(none\)"):
        load_bit_weights(BiT(50), missing)

    extra = {**state, "stages.0.blocks.0.norm4.weight": torch.zeros(64)}
    with pytest.raises(WeightsError, match=r"unexpected keys stages\.0\.blocks\.0\.norm4\.weight"):
        load_bit_weights(BiT(50), extra)

    wrong = {**state, "norm.bias": torch.zeros(1024)}
    with pytest.raises(WeightsError, match=r"wrong shape: norm\.bias \(1024,\) \(model: \(2048,\)\)"):
        load_bit_weights(BiT(50), wrong)

    with pytest.raises(WeightsError, match="torchvision ResNet weights"):
        load_bit_weights(BiT(50), {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})


def test_npz_with_oihw_kernels_is_a_shape_error(tmp_path, bit50):
    arrays = google_npz_layout(bit50)
    arrays["resnet/block2/unit01/a/standardized_conv2d/kernel"] = bit50.state_dict()["stages.1.blocks.0.conv1.weight"].numpy()  # not transposed
    np.savez(tmp_path / "oihw.npz", **arrays)
    with pytest.raises(WeightsError, match=r"wrong shape: stages\.1\.blocks\.0\.conv1\.weight \(1, 1, 128, 256\) \(model: \(128, 256, 1, 1\)\)"):
        load_bit_weights(BiT(50), tmp_path / "oihw.npz")


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_npz_holding_pickles_is_refused_without_running_them(tmp_path, bit50):
    marker = tmp_path / "code-ran"
    arrays = google_npz_layout(bit50)
    arrays["resnet/group_norm/beta"] = np.array([_Payload(marker)], dtype=object)
    np.savez(tmp_path / "object.npz", **arrays)  # numpy pickles object arrays inside the archive
    with pytest.raises(WeightsError, match=r"entry 'resnet/group_norm/beta' holds pickled Python objects"):
        load_bit_weights(BiT(50), tmp_path / "object.npz")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"resnet/group_norm/beta": _Payload(marker)}))
    with pytest.raises(WeightsError, match="is a pickle, not a .npz archive"):
        load_bit_weights(BiT(50), tmp_path / "pickle.npz")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# The backbone choice in the set detectors


def test_backbone_choice_is_validated():
    with pytest.raises(ConfigError, match="backbone must be one of 'resnet', 'bit', got 'vit'"):
        plaindet.create_model("detr-r50", backbone="vit")
    with pytest.raises(ConfigError, match=r"BiT backbone's depth must be one of \[50, 101\]"):
        plaindet.create_model("detr-bit50", backbone_depth=18)


def test_detr_bit50_with_pretrained_weights_freezes_stem_and_first_stage(tmp_path, bit50):
    np.savez(tmp_path / "BiT-S-R50x1.npz", **google_npz_layout(bit50))
    model = plaindet.create_model("detr-bit50", num_classes=3, backbone_weights=tmp_path / "BiT-S-R50x1.npz", **SMALL_TRANSFORMER)
    assert isinstance(model.backbone, BiT) and model.config.backbone == "bit" and model.config.frozen_stages == 2
    assert torch.equal(model.backbone.stages[2].blocks[0].conv2.weight, bit50.stages[2].blocks[0].conv2.weight)
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.backbone.named_parameters() if n.startswith(("stem.", "stages.0."))}
    assert "stages.0.blocks.0.norm1.weight" in frozen and "norm.weight" not in frozen  # GroupNorms follow their stage
    assert model.normalize.mean.flatten().tolist() == [127.5] * 3  # BiT's [-1, 1] inputs, not ImageNet's statistics
    loaded = plaindet.load(model.save(tmp_path / "m.safetensors"))
    assert loaded.config == model.config and isinstance(loaded.backbone, BiT)
    assert not loaded.backbone.stem.conv.weight.requires_grad and loaded.backbone.stages[1].blocks[0].conv1.weight.requires_grad


def test_deperceiver_takes_a_bit_backbone_and_skips_its_unbuilt_stages(bit50):
    torch.manual_seed(0)
    tiny = dict(hidden_dim=32, heads=2, num_latents=8, latent_layers=1, decoder_layers=2, ffn_dim=64, num_queries=10, dropout=0.0)
    model = plaindet.create_model("deperceiver-r50", num_classes=3, backbone="bit", backbone_weights=bit50.state_dict(), downsample_factor=8, multi_scale=False, **tiny)
    assert isinstance(model.backbone, BiT) and model.backbone.num_stages == 2 and model.backbone.norm is None
    assert torch.equal(model.backbone.stages[1].blocks[3].conv3.weight, bit50.stages[1].blocks[3].conv3.weight)
    model.train()
    g = torch.Generator().manual_seed(0)
    out = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g))
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1]), "size": (64, 64)}] * 2
    model.criterion()(out, targets)["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.stages.1.") for n, _ in trainable)
    assert not [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]


# ------------------------------------------------------------------------------------------------
# Training through the engine


def test_detr_bit50_trains_through_the_engine(tmp_path, tiny_shapes, bit50, measured):
    """40 steps of detr-bit50 (the full BiT-R50x1 from a timm-layout weights file, a small
    transformer) on the 16 shapes training images at 64 px, lr 1e-3 (backbone 1e-4): the loss
    falls, the stem and first stage stay as loaded (frozen with pretrained weights) and the rest of
    the backbone, GroupNorms included, trained (no weight decay here, so only gradients move them)."""
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in bit50.state_dict().items()}
    save_file(weights, str(tmp_path / "bit50.safetensors"))
    cfg = TrainConfig(
        model="detr-bit50", data=str(tiny_shapes), val_split="valid", out=str(tmp_path / "run"), epochs=10, batch_size=4,
        image_size=64, lr=1e-3, weight_decay=0.0, warmup_steps=4, amp="off", eval_every=0, ema_decay=0.0, seed=0,
        backbone_weights=str(tmp_path / "bit50.safetensors"), model_overrides=SMALL_TRANSFORMER,
        augment={"crop": 0.0, "zoom_out": 0.0, "jitter": 0.0, "hflip": 0.0},
    )  # fmt: skip
    train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    measured("detr-bit50 on shapes, 64 px, 40 steps: mean loss of the first / last 5 steps", f"{first:.2f} / {last:.2f}")
    assert last < 0.85 * first, losses  # measured: 18.43 -> 14.65

    model = plaindet.load(tmp_path / "run" / "last.safetensors")
    assert isinstance(model.backbone, BiT) and model.config.frozen_stages == 2
    trained = model.backbone.state_dict()
    for name in ("stem.conv.weight", "stages.0.blocks.2.conv3.weight", "stages.0.blocks.0.norm1.weight"):
        assert torch.equal(trained[name], weights[name]), name
    for name in ("stages.1.blocks.0.conv2.weight", "stages.3.blocks.2.conv3.weight", "stages.2.blocks.1.norm2.bias", "norm.weight"):
        assert not torch.equal(trained[name], weights[name]), name
