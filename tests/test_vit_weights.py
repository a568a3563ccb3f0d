"""Loading CLIP weights into the ViT in every supported layout, checked against transformers' CLIP vision model.

The reference is a small random ``transformers`` CLIP model. The OpenAI/open_clip and timm layouts are
produced from its weights by converters written here, independently of the code under test.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from plaindet.errors import WeightsError
from plaindet.models.vit import ViT, clip_config
from plaindet.models.vit_weights import convert_vit_state_dict, load_vit_weights
from plaindet.weights import read_state_dict

transformers = pytest.importorskip("transformers")

WIDTH, DEPTH, HEADS, MLP, PROJ = 64, 4, 4, 256, 32


def vision_config(image_size: int = 224):
    return transformers.CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=image_size,
        patch_size=16,
        hidden_act="quick_gelu",
    )


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations, and LayerNorms that are far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):  # layer_norm1/2, pre_layrnorm, post_layernorm
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and "embedding" not in name:  # biases
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 or "position_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def clip_model():
    text = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision_config().to_dict(), projection_dim=PROJ
    )
    model = transformers.CLIPModel(config).eval()
    randomize_(model.vision_model, seed=0)
    return model


@pytest.fixture(scope="module")
def tower(clip_model) -> dict[str, torch.Tensor]:
    """The vision tower's state dict in transformers' names, without any prefix."""
    return {k: v.clone() for k, v in clip_model.vision_model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(clip_model):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = clip_model.vision_model(pixel_values=x)
    return x, out.last_hidden_state, out.pooler_output


# -- converters from transformers' names to the other layouts (the inverse of what is tested) ---------------------------


def to_openai_visual(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "conv1.weight": hf["embeddings.patch_embedding.weight"],
        "class_embedding": hf["embeddings.class_embedding"],
        "positional_embedding": hf["embeddings.position_embedding.weight"],
        "ln_pre.weight": hf["pre_layrnorm.weight"],
        "ln_pre.bias": hf["pre_layrnorm.bias"],
        "ln_post.weight": hf["post_layernorm.weight"],
        "ln_post.bias": hf["post_layernorm.bias"],
        "proj": torch.randn(WIDTH, PROJ),
    }
    for i in range(DEPTH):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf[f"{src}self_attn.{c}_proj.{kind}"] for c in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            out[f"{dst}attn.out_proj.{kind}"] = hf[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = hf[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = hf[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = hf[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = hf[f"{src}mlp.fc2.{kind}"]
    return out


def to_openai_clip(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full OpenAI CLIP state dict: note the text tower's keys clash with the visual names unprefixed."""
    text = {
        "positional_embedding": torch.randn(77, 32),
        "text_projection": torch.randn(32, PROJ),
        "logit_scale": torch.tensor(4.6),
        "token_embedding.weight": torch.randn(100, 32),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
        "ln_final.weight": torch.ones(32),
    }
    return text | {f"visual.{k}": v for k, v in to_openai_visual(hf).items()}


def to_timm(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Names and shapes of timm's VisionTransformer (pre_norm=True, class token, no patch-embed bias).
    oa = to_openai_visual(hf)
    out = {
        "cls_token": oa["class_embedding"].view(1, 1, WIDTH),
        "pos_embed": oa["positional_embedding"].unsqueeze(0),
        "patch_embed.proj.weight": oa["conv1.weight"],
        "norm_pre.weight": oa["ln_pre.weight"],
        "norm_pre.bias": oa["ln_pre.bias"],
        "norm.weight": oa["ln_post.weight"],
        "norm.bias": oa["ln_post.bias"],
        "head.weight": oa["proj"].t(),
        "head.bias": torch.zeros(PROJ),
    }
    for i in range(DEPTH):
        src, dst = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}norm1.{kind}"] = oa[f"{src}ln_1.{kind}"]
            out[f"{dst}attn.qkv.{kind}"] = oa[f"{src}attn.in_proj_{kind}"]
            out[f"{dst}attn.proj.{kind}"] = oa[f"{src}attn.out_proj.{kind}"]
            out[f"{dst}norm2.{kind}"] = oa[f"{src}ln_2.{kind}"]
            out[f"{dst}mlp.fc1.{kind}"] = oa[f"{src}mlp.c_fc.{kind}"]
            out[f"{dst}mlp.fc2.{kind}"] = oa[f"{src}mlp.c_proj.{kind}"]
    return out


def transformers_vision_model(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPVisionModel(...).state_dict()`` in the installed transformers (prefixed or not by version)."""
    model = transformers.CLIPVisionModel(vision_config())
    getattr(model, "vision_model", model).load_state_dict(hf)
    return model.state_dict()


LAYOUTS = {
    "transformers CLIPVisionModel": transformers_vision_model,
    "transformers vision_model.*": lambda hf: {f"vision_model.{k}": v for k, v in hf.items()},
    "transformers CLIPModel": None,  # the whole CLIPModel state dict, text tower included
    "openai CLIP (visual.*)": to_openai_clip,
    "openai visual tower": to_openai_visual,
    "timm": to_timm,
}


@pytest.fixture(scope="module")
def layouts(clip_model, tower) -> dict[str, dict[str, torch.Tensor]]:
    """Every layout's state dict, contiguous (as safetensors requires)."""
    out = {}
    for layout, make in LAYOUTS.items():
        sd = clip_model.state_dict() if make is None else make(tower)
        out[layout] = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    return out


def global_vit(img_size: int = 224) -> ViT:
    return ViT(clip_config(WIDTH, DEPTH, HEADS, pretrain_size=img_size, window_size=0)).eval()


# -- parity ----------------------------------------------------------------------------------------------------------


def test_reference_vision_model_matches_clip_model_tower(clip_model, tower, reference):
    x, hidden, _ = reference
    model = transformers.CLIPVisionModel(vision_config()).eval()
    getattr(model, "vision_model", model).load_state_dict(tower)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).last_hidden_state, hidden)


@pytest.mark.parametrize("source", ["dict", ".safetensors", ".bin"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parity_with_transformers(layout, source, clip_model, layouts, reference, tmp_path, measured):
    sd = layouts[layout]
    if source == ".safetensors":
        save_file(sd, tmp_path / "weights.safetensors")
        sd = tmp_path / "weights.safetensors"
    elif source == ".bin":
        torch.save(sd, tmp_path / "weights.bin")
        sd = str(tmp_path / "weights.bin")
    model = global_vit()
    load_vit_weights(model, sd)

    x, hidden, pooled = reference
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        fmap = model(x)
    diff = (tokens - hidden).abs().max().item()
    measured(f"CLIP ViT vs transformers CLIPVisionModel, {layout} from {source}: max abs diff", diff)
    assert diff < 1e-4
    # pooler_output is post_layernorm(class token); forward() applies the same norm to the patches.
    assert (model.norm(tokens[:, 0]) - pooled).abs().max() < 1e-4
    post = clip_model.vision_model.post_layernorm(hidden[:, 1:])
    assert (fmap.flatten(2).transpose(1, 2) - post).abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["transformers CLIPModel", "openai CLIP (visual.*)", "timm"])
def test_layout_detection(layout, layouts):
    _, detected = convert_vit_state_dict(layouts[layout])
    assert detected == layout.split()[0]


def test_wrapped_ddp_checkpoint(clip_model, tower, reference):
    sd = {f"module.{k}": v for k, v in to_openai_clip(tower).items()}
    model = global_vit()
    load_vit_weights(model, {"state_dict": sd, "epoch": 3})
    x, hidden, _ = reference
    with torch.no_grad():
        assert (model.forward_tokens(x) - hidden).abs().max() < 1e-4


# -- resolution ------------------------------------------------------------------------------------------------------


def test_position_embedding_resized_at_load(tower):
    # A checkpoint pretrained at 288 px (18x18 grid) loaded into a 224 px model (14x14 grid).
    sd = to_openai_visual(tower)
    g = torch.randn(1 + 18 * 18, WIDTH)
    sd["positional_embedding"] = g
    model = global_vit()
    load_vit_weights(model, sd)
    grid = g[1:].reshape(1, 18, 18, WIDTH).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(model.pos_embed[0, 0], g[0])
    assert torch.allclose(model.pos_embed[0, 1:], expected.reshape(196, WIDTH), atol=1e-6)


def test_resize_at_load_equals_resize_at_run_time(tower):
    # Loading a 224 px checkpoint into a 320 px model, or running the 224 px model at 320 px, is the same.
    at_224, at_320 = global_vit(224), global_vit(320)
    load_vit_weights(at_224, to_openai_visual(tower))
    load_vit_weights(at_320, to_openai_visual(tower))
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        assert (at_224.forward_tokens(x) - at_320.forward_tokens(x)).abs().max() < 1e-5


def test_window_attention_model_loads_and_runs(tower):
    model = ViT(clip_config(WIDTH, DEPTH, HEADS, window_size=14)).eval()
    load_vit_weights(model, to_timm(tower))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 320, 480)).shape == (1, WIDTH, 20, 30)


# -- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(width=96, heads=4), "width 64, depth 4.*model has width 96"), (dict(depth=3), "depth 4.*depth 3")],
)
def test_architecture_mismatch(tower, kwargs, message):
    model = ViT(clip_config(**(dict(width=WIDTH, depth=DEPTH, heads=HEADS) | kwargs)))
    with pytest.raises(WeightsError, match=message):
        load_vit_weights(model, to_openai_visual(tower))


def test_missing_and_unexpected_keys_are_listed(tower):
    sd = to_openai_clip(tower)
    del sd["visual.transformer.resblocks.1.ln_2.bias"]
    sd["visual.transformer.resblocks.0.attn.bogus"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        load_vit_weights(global_vit(), sd)
    message = str(err.value)
    assert "missing keys blocks.1.norm2.bias" in message
    assert "unexpected keys transformer.resblocks.0.attn.bogus" in message


def test_incomplete_qkv_is_reported(tower):
    sd = {f"vision_model.{k}": v for k, v in tower.items() if k != "encoder.layers.2.self_attn.k_proj.weight"}
    with pytest.raises(WeightsError, match=re.escape("blocks.2.attn.qkv.weight")):
        load_vit_weights(global_vit(), sd)


def test_unknown_layout():
    with pytest.raises(WeightsError, match="unrecognized ViT checkpoint layout.*encoder.weight"):
        load_vit_weights(global_vit(), {"encoder.weight": torch.zeros(1)})


class NotATensor:
    """Pickling an instance stores a reference to this class: loading it would import and run code."""

    def __init__(self) -> None:
        self.value = 3


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"conv1.weight": torch.zeros(1), "extra": NotATensor()}, path)
    with pytest.raises(WeightsError, match="pickled Python objects.*refused"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(WeightsError, match="TorchScript"):
        read_state_dict(path)


def test_directory_with_hub_file_names(tmp_path, tower):
    save_file({k: v.contiguous() for k, v in to_timm(tower).items()}, tmp_path / "model.safetensors")
    model = global_vit()
    load_vit_weights(model, tmp_path)
    assert torch.equal(model.patch_embed.proj.weight, tower["embeddings.patch_embedding.weight"])
    with pytest.raises(FileNotFoundError, match="without any of the weight files"):
        read_state_dict(tmp_path / "..")


def test_missing_file_that_is_not_a_hub_id():
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_state_dict("/nonexistent/weights.safetensors")


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_hub_id_fails_at_once_from_the_cache_and_says_how_to_point_at_a_file(monkeypatch, why):
    """Not cached and offline (HF_HUB_OFFLINE, or the Hub's host refuses a connection): the cache is
    searched for every file name, and no online request is made (the client would retry each for
    about 25 s); the message says how to pass a local file."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import LocalEntryNotFoundError

    import plaindet.weights

    calls = []

    def not_cached(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((filename, local_files_only))
        raise LocalEntryNotFoundError("the file is not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(plaindet.weights, "_hub_reachable", lambda endpoint: False)
    with pytest.raises(WeightsError) as err:
        read_state_dict("openai/clip-vit-base-patch16")
    message = str(err.value)
    assert "openai/clip-vit-base-patch16" in message and ("HF_HUB_OFFLINE is set" if why == "HF_HUB_OFFLINE" else "is unreachable") in message
    assert "backbone_weights='/path/to/model.safetensors' (--backbone-weights" in message and huggingface_hub.constants.HF_HUB_CACHE in message
    assert calls == [(name, True) for name in plaindet.weights.HUB_FILENAMES]


def test_a_reachable_hub_is_asked_after_the_cache(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import LocalEntryNotFoundError

    import plaindet.weights

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    calls = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((filename, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(plaindet.weights, "_hub_reachable", lambda endpoint: True)
    assert set(read_state_dict("org/model")) == {"w"}
    assert calls == [(name, True) for name in plaindet.weights.HUB_FILENAMES] + [("model.safetensors", False)]


def test_hub_falls_back_to_other_file_names(monkeypatch, tmp_path, tower):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import EntryNotFoundError

    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(to_openai_clip(tower), path)

    def download(repo_id, filename, local_files_only=False, **kwargs):
        if filename != path.name:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    model = global_vit()
    load_vit_weights(model, "hf-hub:laion/some-clip-model")
    assert torch.equal(model.patch_embed.proj.weight, tower["embeddings.patch_embedding.weight"])
