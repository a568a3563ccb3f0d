"""The ViT backbone: shapes, window attention against a masked-attention reference, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plaindet.models.vit import ViT, clip_config, default_global_blocks, resize_pos_embed


def small_vit(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(clip_config(64, 4, 4, **({"window_size": 14} | overrides))).eval()


@pytest.mark.parametrize("size", [(640, 640), (320, 480)])
def test_window_attention_shapes(size):
    # 640 -> 40x40 patches and 320x480 -> 20x30: neither grid is a multiple of the 14-patch window.
    model = small_vit()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        fmap = model(x)
    h, w = size[0] // 16, size[1] // 16
    assert tokens.shape == (1, 1 + h * w, 64)
    assert fmap.shape == (1, 64, h, w)
    assert model.width == 64 and model.patch_size == 16
    assert torch.isfinite(fmap).all()


def test_forward_is_the_final_norm_of_patch_tokens():
    model = small_vit()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tokens = model.norm(model.forward_tokens(x)[:, 1:])
        fmap = model(x)
    assert torch.equal(fmap, tokens.transpose(1, 2).reshape(1, 64, 4, 6))


def reference_window_attention(attn, x, grid, ws):
    """Global attention with an explicit mask: patches see their own window and the class token;
    the class token sees everything. Independent of the partition/padding code under test."""
    B, L, C = x.shape
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    window_id = ((rows // ws) * w + cols // ws).flatten()  # any id unique per window
    allowed = window_id[:, None] == window_id[None, :]
    allowed = torch.cat([torch.ones(h * w, 1, dtype=torch.bool), allowed], dim=1)  # every patch sees cls
    allowed = torch.cat([torch.ones(1, L, dtype=torch.bool), allowed], dim=0)  # cls sees all
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.view(B, L, attn.heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return attn.proj(out.transpose(1, 2).reshape(B, L, C))


@pytest.mark.parametrize("grid", [(8, 8), (6, 7), (3, 5), (2, 2)])
def test_window_attention_matches_masked_reference(grid):
    ws = 4
    model = small_vit(window_size=ws, global_blocks=())
    attn = model.blocks[0].attn
    x = torch.randn(2, 1 + grid[0] * grid[1], 64)
    with torch.no_grad():
        out = attn(x, grid)
        ref = reference_window_attention(attn, x, grid, ws)
    assert (out - ref).abs().max() < 1e-5


def test_single_window_equals_global_attention():
    # At 224 px the 14x14 grid is exactly one window, and with the class token in every window that
    # is plain global attention: the windowed model must match the all-global one.
    windowed, global_ = small_vit(window_size=14), small_vit(window_size=0)
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (windowed.forward_tokens(x) - global_.forward_tokens(x)).abs().max() < 1e-5


def test_position_embedding_at_pretraining_size_is_identity():
    model = small_vit()
    assert torch.equal(model._pos_embed((14, 14)), model.pos_embed)
    # Resizing reproduces a constant field and keeps the class token's embedding.
    const = torch.full((14, 14, 8), 0.5)
    assert torch.allclose(resize_pos_embed(const, (20, 30)), torch.full((20, 30, 8), 0.5), atol=1e-6)
    resized = model._pos_embed((20, 30))
    assert resized.shape == (1, 1 + 20 * 30, 64)
    assert torch.equal(resized[0, 0], model.pos_embed[0, 0])


def test_input_size_must_be_a_multiple_of_the_patch_size():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        small_vit().forward_tokens(torch.randn(1, 3, 100, 96))


def test_default_global_blocks():
    assert default_global_blocks(12) == (2, 5, 8, 11)
    assert default_global_blocks(24) == (5, 11, 17, 23)
    assert default_global_blocks(32) == (7, 15, 23, 31)
    assert default_global_blocks(2) == (0, 1)
    assert small_vit().global_blocks == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="global_blocks"):
        small_vit(global_blocks=(4,))


def test_no_weight_decay_names_exist():
    model = small_vit()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= names.keys()
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}


def test_every_parameter_gets_a_gradient_and_checkpointing_matches():
    model = small_vit(window_size=4, global_blocks=(1, 3)).train()
    x = torch.randn(1, 3, 96, 128)  # 6x8 grid: padded windows
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or not g.any()]
    assert not missing, missing

    model.zero_grad()
    model.grad_checkpointing = True
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_drop_path_only_in_training():
    model = small_vit(drop_path=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(
    "name, width, heads, expected",
    # CLIP's visual towers minus ``proj`` (768 x 512 for ViT-B/16): 86,192,640 - 393,216.
    [("ViT-B/16", 768, 12, 85_799_424), ("ViT-S/16", 384, 6, 21_666_048), ("ViT-Ti/16", 192, 3, 5_524_608)],
)
def test_parameter_counts(name, width, heads, expected):
    with torch.device("meta"):
        model = ViT(clip_config(width, 12, heads))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected, f"{name}: {count:,} parameters"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "bool mask", "causal", "long fp32"])
def test_training_attention_path_equals_sdpa_in_values_and_gradients(dtype, case):
    """The matmul path taken in CPU training computes what F.scaled_dot_product_attention does."""
    import torch.nn.functional as F

    from plaindet.models import layers

    g = torch.Generator().manual_seed(0)
    length = 300 if case == "long fp32" else 65
    q, k, v = ((3 * torch.randn(2, 3, length, 16, generator=g)).to(dtype).requires_grad_() for _ in range(3))  # peaked scores
    mask = torch.rand(2, 1, 1, length, generator=g) > 0.3 if case == "bool mask" else None
    causal = case == "causal"
    out = layers.attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert layers._use_matmul(q, k) == (dtype == torch.bfloat16 or length <= layers.MATMUL_MAX_KEYS_FP32)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    qf, kf, vf = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, is_causal=causal)
    ref_grads = torch.autograd.grad(ref.square().sum(), (qf, kf, vf))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert (out.double() - ref).abs().max() <= tol * ref.abs().max()
    # no less precise than the fused kernel at the same dtype (scores rounded to bf16 are 3-5x worse)
    fused = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), attn_mask=mask, is_causal=causal).double()
    assert (out.double() - ref).abs().max() <= 2 * (fused - ref).abs().max() + 1e-6
    for a, b in zip(grads, ref_grads):
        assert (a.double() - b).abs().max() <= 4 * tol * b.abs().max()
    with torch.no_grad():
        assert not layers._use_matmul(q, k)  # inference takes the fused kernel


def test_quick_gelu_mlp_fused_path_equals_the_module_path_in_values_and_gradients():
    """CLIP's MLP runs QuickGELU as silu with both 1.702 factors in the matrix products' alpha: the
    same function, values and gradients (within float32 rounding); a LoRA-wrapped layer and an export
    take the plain module path."""
    from plaindet.models import layers

    torch.manual_seed(0)
    mlp = layers.Mlp(48, 192, "quick_gelu")
    x = torch.randn(2, 37, 48, requires_grad=True)

    def run(fused: bool):
        forward = mlp._quick_gelu_forward if fused else lambda t: mlp.fc2(mlp.act(mlp.fc1(t)))
        mlp.zero_grad()
        x.grad = None
        out = forward(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad.clone(), [p.grad.clone() for p in mlp.parameters()]

    out, gx, gp = run(True)
    ref, rx, rp = run(False)
    assert out.shape == ref.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp, rp):  # sums over 74 tokens: rounding scaled by the gradient's size
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())

    calls = []
    fused = mlp._quick_gelu_forward
    mlp._quick_gelu_forward = lambda t: calls.append("fused") or fused(t)
    mlp(x)
    assert calls == ["fused"]  # the plain model takes the fused path
    mlp.fc1 = torch.nn.Sequential(mlp.fc1)  # a wrapped layer (as LoRA wraps it): the module path
    torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-6)
    assert calls == ["fused"]
