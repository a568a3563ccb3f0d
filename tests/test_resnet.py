"""The ResNet backbone: torchvision's key layout, numerics against transformers' ResNet, frozen
BatchNorm, weight loading from local files and stage freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plaindet.models.detr_weights import resnet_state_from_transformers
from plaindet.models.resnet import FrozenBatchNorm2d, ResNet, load_resnet_weights

# torchvision's parameter counts (resnet18: 11,689,512; resnet50: 25,557,032) less the classifier
# (512 * 1000 + 1000 and 2048 * 1000 + 1000): what our trunk must hold, counting BatchNorm's affine
# terms (buffers here) but not its running statistics.
TORCHVISION_TRUNK_NUMEL = {18: 11_689_512 - 513_000, 50: 25_557_032 - 2_049_000}


def trunk_numel(model: ResNet) -> int:
    return sum(v.numel() for k, v in model.state_dict().items() if not k.endswith(("running_mean", "running_var")))


def torchvision_like_state(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as torchvision saves it: our keys, plus ``fc.*`` and BatchNorm step counters."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in ResNet(depth).state_dict().items()}
    for k in list(state):
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
            state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    width = 512 if depth < 50 else 2048
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, width), torch.randn(1000)
    return state


@pytest.mark.parametrize("depth", [18, 50])
def test_layout_and_size_are_torchvisions(depth):
    with torch.device("meta"):
        model = ResNet(depth)
    keys = set(model.state_dict())
    expected = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "layer4.1.conv2.weight"}
    assert expected <= keys
    if depth == 50:
        assert {"layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer4.2.bn3.bias"} <= keys
    else:
        assert not any(k.startswith("layer1.0.downsample") for k in keys)  # 64 -> 64 at stride 1: identity
        assert not any(".conv3." in k for k in keys)
    assert trunk_numel(model) == TORCHVISION_TRUNK_NUMEL[depth]
    assert model.channels == ([64, 128, 256, 512] if depth == 18 else [256, 512, 1024, 2048])


@pytest.mark.parametrize(("layer_type", "depth", "depths", "widths"), [("basic", 18, [2, 2, 2, 2], [64, 128, 256, 512]), ("bottleneck", 50, [3, 4, 6, 3], [256, 512, 1024, 2048])])
def test_features_match_transformers_resnet(layer_type, depth, depths, widths):
    """Same weights (random, with random BatchNorm statistics) give the same four feature maps as
    transformers' ResNet: checks stride placement, shortcut and the frozen norm."""
    transformers = pytest.importorskip("transformers")
    ResNetConfig, ResNetModel = transformers.ResNetConfig, transformers.ResNetModel

    torch.manual_seed(0)
    reference = ResNetModel(ResNetConfig(layer_type=layer_type, depths=depths, hidden_sizes=widths)).eval()
    with torch.no_grad():
        for name, buf in reference.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in reference.named_parameters():
            if ".normalization." in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    model = ResNet(depth).eval()
    load_resnet_weights(model, resnet_state_from_transformers(reference.state_dict()))
    # float64: in float32 the two summation orders differ by up to 1.2e-4 after 50 layers on some
    # CPUs, which would hide a real mistake of that size; in float64 they agree to rounding.
    reference, model = reference.double(), model.double()
    x = torch.randn(1, 3, 96, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = reference(x, output_hidden_states=True).hidden_states[1:]  # after embedder: the 4 stages
        ours = model(x)
    assert [f.shape[-2:] for f in ours] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_frozen_batchnorm_equals_batchnorm_in_eval_and_has_no_parameters():
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, not an error
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_torchvision_weights_from_a_local_file(tmp_path, suffix):
    state = torchvision_like_state(18)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    model = ResNet(18)
    load_resnet_weights(model, path)
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_load_skips_stages_that_are_not_built():
    state = torchvision_like_state(18)
    model = ResNet(18, num_stages=2)
    load_resnet_weights(model, state)
    assert len(model(torch.zeros(1, 3, 64, 64))) == 2
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_load_rejects_weights_of_another_depth_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="ResNet-50"):
        load_resnet_weights(ResNet(50), torchvision_like_state(18))
    with pytest.raises(ValueError, match="ResNet-34"):
        load_resnet_weights(ResNet(34), torchvision_like_state(18))
    with pytest.raises(FileNotFoundError):
        load_resnet_weights(ResNet(18), tmp_path / "missing.pth")


def test_freeze_stages():
    model = ResNet(18)
    model.freeze_stages(2)
    assert not model.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for name in ("layer2", "layer3", "layer4") for p in getattr(model, name).parameters())
    model.freeze_stages(0)
    assert all(p.requires_grad for p in model.parameters())


def test_a_random_resnet_trains_from_scratch_with_group_norm_and_loads_weights_only_with_frozen_bn(tmp_path):
    """A random network's frozen BatchNorm normalizes nothing: a ResNet-50's stage outputs grow
    stage by stage (std 0.5 to ~19 here); with GroupNorm they stay near 1. Pretrained weights load
    only into the frozen-BatchNorm trunk, with a message that says why."""
    from plaindet.errors import WeightsError

    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        frozen = [f.std().item() for f in ResNet(50, norm="frozen_bn")(x)]
        group = [f.std().item() for f in ResNet(50, norm="group")(x)]
    assert frozen[-1] > 5 * frozen[0], frozen
    assert all(0.5 < s < 2.0 for s in group), group
    gn = ResNet(18, norm="group")
    assert isinstance(gn.layer1[0].bn1, nn.GroupNorm) and gn.layer1[0].bn1.weight.requires_grad
    assert [k for k in gn.state_dict() if "layer1.0" in k] == [k for k in ResNet(18).state_dict() if "layer1.0" in k and "running" not in k]
    with pytest.raises(WeightsError, match="norm='group'"):
        load_resnet_weights(gn, torchvision_like_state(18))
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNet(18, norm="batch")


def test_set_detectors_resolve_the_backbone_norm_from_the_weights(tmp_path):
    """No backbone weights: GroupNorm (saved in the config, so a reload rebuilds the same model);
    with torchvision weights: frozen BatchNorm; a checkpoint config without the field (saved before
    it existed, always frozen BatchNorm) rebuilds with frozen BatchNorm."""
    import plaindet
    from plaindet.config import to_dict
    from plaindet.errors import ConfigError
    from plaindet.models.factory import model_from_state

    small = dict(num_classes=3, image_size=64, hidden_dim=32, ffn_dim=64, decoder_layers=1, encoder_layers=1, num_queries=4, heads=2)
    scratch = plaindet.create_model("detr-r18", **small)
    assert scratch.config.backbone_norm == "group" and isinstance(scratch.backbone.bn1, nn.GroupNorm)
    torch.save(torchvision_like_state(18), tmp_path / "r18.pth")
    pretrained = plaindet.create_model("detr-r18", backbone_weights=tmp_path / "r18.pth", **small)
    assert pretrained.config.backbone_norm == "frozen_bn" and isinstance(pretrained.backbone.bn1, FrozenBatchNorm2d)
    assert isinstance(model_from_state(to_dict(scratch.config), scratch.state_dict()).backbone.bn1, nn.GroupNorm)
    old = {k: v for k, v in to_dict(pretrained.config).items() if k != "backbone_norm"}
    assert isinstance(model_from_state(old, pretrained.state_dict()).backbone.bn1, FrozenBatchNorm2d)
    with pytest.raises(ConfigError, match="BiT backbone always has GroupNorm"):
        plaindet.create_model("detr-bit50", backbone_norm="group", **small)


@pytest.mark.parametrize("depth", [18, 50])
def test_a_dilated_last_stage_is_the_strided_one_at_twice_the_resolution(depth):
    # With pointwise (frozen) BatchNorm, a stride-2 3x3 convolution is its stride-1 output at even
    # positions, and a 3x3 convolution dilated by 2 on the full map reads exactly those positions:
    # the DC5 trunk's stride-16 map, taken every other pixel, is the plain trunk's stride-32 map.
    torch.manual_seed(0)
    plain = ResNet(depth).eval()
    for m in plain.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    dilated = ResNet(depth, dilate_last=True).eval()
    dilated.load_state_dict(plain.state_dict())  # the same weights
    plain, dilated = plain.double(), dilated.double()  # float64: equal up to rounding, not up to fp32's sums
    assert plain.strides == [4, 8, 16, 32] and dilated.strides == [4, 8, 16, 16]
    x = torch.randn(2, 3, 128, 160, dtype=torch.float64)
    with torch.no_grad():
        a, b = plain(x), dilated(x)
    assert b[3].shape[-2:] == (8, 10) and a[3].shape[-2:] == (4, 5)
    for i in range(3):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    torch.testing.assert_close(b[3][..., ::2, ::2], a[3], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(b[3][..., 1::2, 1::2], a[3], atol=1e-2)  # the odd positions are new
