"""The ViT in its DeiT flavour: parity with transformers' ViTModel, and loading timm-layout DeiT weights strictly."""

from __future__ import annotations

import pytest
import torch

from plaindet.errors import WeightsError
from plaindet.models.vit import ViT, deit_config
from plaindet.models.vit_weights import load_vit_weights

DIMS = dict(img_size=64, patch_size=16, width=64, depth=2, heads=4)


def deit(img_size=64, patch_size=16, width=64, depth=2, heads=4, **overrides) -> ViT:
    return ViT(deit_config(width, depth, heads, patch_size=patch_size, pretrain_size=img_size, **overrides))


def small_deit(**overrides) -> ViT:
    torch.manual_seed(0)
    return deit(**overrides).eval()


def hf_vit(seed: int = 1):
    """A transformers ViTModel of the same shape with random weights (DeiT is this architecture)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=DIMS["width"],
        num_hidden_layers=DIMS["depth"],
        num_attention_heads=DIMS["heads"],
        intermediate_size=4 * DIMS["width"],
        image_size=DIMS["img_size"],
        patch_size=DIMS["patch_size"],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    # Random LayerNorm and bias values too, so a swapped or dropped tensor can't hide behind ones/zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_to_timm(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """transformers 5's ViT names -> timm's DeiT names (q, k, v fused into ``qkv``)."""
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(depth):
        hf, timm = f"layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{timm}attn.qkv.{kind}"] = torch.cat([sd[f"{hf}attention.{c}_proj.{kind}"] for c in "qkv"])
            out[f"{timm}attn.proj.{kind}"] = sd[f"{hf}attention.o_proj.{kind}"]
            out[f"{timm}norm1.{kind}"] = sd[f"{hf}layernorm_before.{kind}"]
            out[f"{timm}norm2.{kind}"] = sd[f"{hf}layernorm_after.{kind}"]
            out[f"{timm}mlp.fc1.{kind}"] = sd[f"{hf}mlp.fc1.{kind}"]
            out[f"{timm}mlp.fc2.{kind}"] = sd[f"{hf}mlp.fc2.{kind}"]
    return out


@pytest.fixture(scope="module")
def pair():
    """``(ours, transformers')`` with the same random weights."""
    reference = hf_vit()
    ours = small_deit()
    ours.load_state_dict(hf_to_timm(reference.state_dict(), DIMS["depth"]))
    return ours, reference


@pytest.mark.parametrize("size", [(64, 64), (48, 96)])
def test_parity_with_transformers_vit(pair, size):
    # (64, 64) is the pretraining grid; (48, 96) resizes the position embeddings, which transformers
    # does the same way (bicubic, no corner alignment) when asked to interpolate.
    ours, reference = pair
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x, interpolate_pos_encoding=size != (64, 64)).last_hidden_state
        got = ours.forward_features(x)
    assert got.shape == (2, 1 + size[0] // 16 * size[1] // 16, DIMS["width"])
    assert (got - expected).abs().max() < 1e-4


def test_timm_key_layout():
    keys = set(small_deit(depth=1).state_dict())
    assert keys == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        *(f"blocks.0.{m}.{k}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for k in ("weight", "bias")),
    }
    model = small_deit()
    assert model.cls_token.shape == (1, 1, 64) and model.pos_embed.shape == (1, 1 + 4 * 4, 64)
    assert model.blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6


def test_rejects_sizes_not_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        small_deit().forward_features(torch.zeros(1, 3, 64, 72))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_published_layout_from_a_file(tmp_path, suffix):
    source = small_deit()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    state = source.state_dict() | {"head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    path = tmp_path / f"deit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)  # facebookresearch's release wraps the weights in "model"
    target = deit()
    load_vit_weights(target, path)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_load_is_strict_and_lists_the_keys():
    state = small_deit().state_dict()
    state.pop("blocks.1.mlp.fc2.bias")
    state["dist_token"] = torch.zeros(1, 1, 64)
    with pytest.raises(WeightsError, match=r"missing keys blocks\.1\.mlp\.fc2\.bias; unexpected keys dist_token"):
        load_vit_weights(small_deit(), state)
    with pytest.raises(WeightsError, match="patch size 8, but the model has width 64, depth 2, patch size 16"):
        load_vit_weights(small_deit(), deit(patch_size=8).state_dict())
    with pytest.raises(WeightsError, match="transformers ViT/DeiT checkpoint"):
        load_vit_weights(small_deit(), hf_vit().state_dict())


def test_load_resizes_position_embeddings_of_another_pretraining_size():
    from plaindet.models.vit import resize_pos_embed

    # A checkpoint trained at 96 px (6x6 grid) into a 64 px model (4x4 grid).
    source = small_deit(img_size=96)
    target = small_deit()
    load_vit_weights(target, source.state_dict())
    expected = resize_pos_embed(source.pos_embed[0, 1:].reshape(6, 6, -1), (4, 4)).reshape(16, -1)
    assert torch.equal(target.pos_embed[0, 0], source.pos_embed[0, 0])
    assert torch.allclose(target.pos_embed[0, 1:], expected)


def test_every_parameter_gets_a_gradient():
    model = small_deit(drop_path=0.1).train()
    model.forward_features(torch.randn(2, 3, 48, 64)).square().mean().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
