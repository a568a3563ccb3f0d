"""LoRA: which modules are adapted, what trains, merging, and full and adapter-only checkpoints."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import plaindet
from plaindet.errors import CheckpointError
from plaindet.models.lora import LoraConfig

pytest.importorskip("peft")

from plaindet.models.lora import add_lora, has_lora, load_adapter, merge_lora, save_adapter  # noqa: E402

TARGETS = ["neck", "backbone", "both"]
DEPTH, LEVELS = 12, 3  # plaindet-t: 12 ViT blocks; strides 8, 16, 32


def make_model(targets: str | None = "both", **overrides) -> plaindet.Detector:
    """plaindet-t with a frozen backbone, as after loading CLIP weights (random ones: only the wiring matters)."""
    torch.manual_seed(0)
    if targets is not None:
        overrides["lora"] = dict(rank=4, targets=targets)
    return plaindet.create_model("plaindet-t", **(dict(num_classes=3, backbone_trainable=False) | overrides))


def images(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def train_steps(model: plaindet.Detector, steps: int = 3) -> None:
    """A few Adam steps on a surrogate loss that reaches every output (aux head included).

    Three steps, because ``B`` starts at zero so ``A`` gets no gradient in the first one. Plain
    Adam without weight decay: a parameter changes only if it gets a gradient. The box term pulls
    the boxes towards 32 px, so they stay at image scale.
    """
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        out = model(images(seed=10 + step))
        loss = sum(o["logits"].sigmoid().mean() + (o["boxes"] / 64 - 0.5).square().mean() for o in (out, out["aux"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def expected_adapted(targets: str) -> set[str]:
    """Written out from the architecture, independently of the selection code under test."""
    names = set()
    if targets in ("backbone", "both"):
        for i in range(DEPTH):
            block = f"backbone.blocks.{i}"
            names |= {f"{block}.attn.qkv", f"{block}.attn.proj", f"{block}.mlp.fc1", f"{block}.mlp.fc2"}
    if targets in ("neck", "both"):
        # Each level: resample, 1x1 conv, norm, 3x3 conv, norm, Mix-FFN (fc1, depthwise conv, fc2).
        for level in range(LEVELS):
            names |= {f"neck.levels.{level}.{i}" for i in ("1", "3", "5.fc1", "5.fc2")}
    return names


def adapted_modules(model) -> set[str]:
    return {name for name, m in model.named_modules() if hasattr(m, "lora_A")}


class Finetuned(NamedTuple):
    targets: str
    base_path: Path  # the base model's checkpoint
    initial: dict[str, torch.Tensor]  # the parameters right after add_lora
    model: plaindet.Detector  # the base with LoRA added and trained


@pytest.fixture(scope="module", params=TARGETS)
def finetuned(request, tmp_path_factory) -> Finetuned:
    base = make_model(targets=None)
    base_path = base.save(tmp_path_factory.mktemp("base") / "base.safetensors")
    model = add_lora(copy.deepcopy(base), LoraConfig(rank=4, targets=request.param))
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model)
    return Finetuned(request.param, base_path, initial, model)


# -- which modules, which parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", TARGETS)
def test_adapted_modules(targets):
    model = make_model(targets)
    assert isinstance(model, plaindet.Detector)
    assert adapted_modules(model) == expected_adapted(targets)
    assert not any(name.startswith(("head.", "aux_head.")) for name in adapted_modules(model))
    assert model.config.lora == LoraConfig(rank=4, targets=targets)


@pytest.mark.parametrize("targets", TARGETS)
def test_trainable_parameters(targets):
    model = make_model(targets)
    neck_adapted = targets in ("neck", "both")
    expected = set()
    for name, p in model.named_parameters():
        if ".lora_" in name or name.startswith(("head.", "aux_head.")):
            expected.add(name)
        elif name.startswith("neck.") and (not neck_adapted or p.dim() == 1):
            expected.add(name)  # a targeted neck trains only its vectors: norms and biases
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    if neck_adapted:  # the kernels peft can't adapt stay frozen too
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        assert {"neck.levels.0.0.weight", "neck.levels.0.5.dwconv.weight", "neck.levels.0.5.fc1.base_layer.weight"} <= frozen


def test_backbone_adapters_survive_set_backbone_trainable():
    model = make_model("backbone")
    lora = [p for n, p in model.backbone.named_parameters() if ".lora_" in n]
    base = [p for n, p in model.backbone.named_parameters() if ".lora_" not in n]
    model.set_backbone_trainable(False)
    assert all(p.requires_grad for p in lora) and not any(p.requires_grad for p in base)
    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in lora + base)


def test_trainable_backbone_keeps_training_under_lora():
    # A backbone of random weights can't be frozen usefully: LoRA on it is allowed and adds to it.
    model = make_model("backbone", backbone_trainable=True)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_training_changes_trainable_parameters_only(finetuned):
    base = dict(plaindet.load(finetuned.base_path).named_parameters())
    for name, p in finetuned.model.named_parameters():
        if p.requires_grad:  # adapters (A and B), heads, the vectors of a targeted neck
            assert not torch.equal(p, finetuned.initial[name]), name
        else:  # frozen base weights stay bit-identical to the base model's
            assert torch.equal(p, base[name.replace(".base_layer.", ".")]), name


# -- merging ----------------------------------------------------------------------------------------------------------


def test_merge_matches_adapted_model(finetuned, tmp_path, monkeypatch, measured):
    targets, model = finetuned.targets, finetuned.model
    without_adapters = copy.deepcopy(model)
    for name, p in without_adapters.named_parameters():
        if ".lora_B." in name:
            p.detach().zero_()
    x = images()
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(copy.deepcopy(model))
        out = merged(x)
        reference = without_adapters(x)
    assert isinstance(merged, plaindet.Detector) and not has_lora(merged)
    assert merged.config.lora.rank == 0
    for key in ("logits", "boxes"):
        # Relative to the outputs' magnitude (boxes are in pixels): float32 rounding differs in the last bits.
        scale = max(1.0, adapted[key].abs().max().item())
        diff = (out[key] - adapted[key]).abs().max().item() / scale
        effect = (reference[key] - adapted[key]).abs().max().item() / scale  # the adapters matter: not vacuous
        measured(f"merged LoRA vs unmerged ({targets}), {key}: max abs diff relative to their largest value", diff)
        assert diff < 1e-5 and effect > 1e-4, f"{targets} {key}: merged vs adapted {diff:.1e}, the adapters' effect {effect:.1e}"

    plain = make_model(targets=None).state_dict()
    state = merged.state_dict()
    assert list(state) == list(plain)
    assert all(state[k].shape == plain[k].shape for k in plain)
    # Trains like a model built without LoRA.
    assert all(p.requires_grad == (not n.startswith("backbone.")) for n, p in merged.named_parameters())

    # The merged checkpoint loads with no peft installed.
    path = merged.save(tmp_path / "merged.safetensors")
    monkeypatch.setitem(sys.modules, "peft", None)
    reloaded = plaindet.load(path)
    with torch.no_grad():
        again = reloaded(x)
    assert torch.equal(again["logits"], out["logits"]) and torch.equal(again["boxes"], out["boxes"])


def test_merge_without_adapters_is_a_no_op():
    model = make_model(targets=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert merge_lora(model) is model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- checkpoints ------------------------------------------------------------------------------------------------------


def test_full_checkpoint_round_trip(finetuned, tmp_path):
    model = finetuned.model
    reloaded = plaindet.load(model.save(tmp_path / "lora.safetensors"))
    assert adapted_modules(reloaded) == adapted_modules(model)
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {n for n, p in model.named_parameters() if p.requires_grad}
    x = images()
    with torch.no_grad():
        assert torch.equal(reloaded(x)["logits"], model(x)["logits"])


def test_adapter_round_trip(finetuned, tmp_path):
    targets, base_path, model = finetuned.targets, finetuned.base_path, finetuned.model
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    restored = load_adapter(plaindet.load(base_path), path)

    state, ours = restored.state_dict(), model.state_dict()
    assert list(state) == list(ours)
    assert all(torch.equal(state[k], ours[k]) for k in ours)
    x = images()
    with torch.no_grad():
        assert torch.equal(restored(x)["logits"], model(x)["logits"])
    assert {n for n, p in restored.named_parameters() if p.requires_grad} == {n for n, p in model.named_parameters() if p.requires_grad}

    full = model.save(tmp_path / "full.safetensors").stat().st_size
    size = path.stat().st_size
    print(f"{targets}: adapter {size / 1e6:.2f} MB, full model {full / 1e6:.2f} MB")
    # A targeted neck is stored as adapters and vectors; an untargeted (fully trained) one entirely.
    assert size < (0.1 if targets != "backbone" else 0.3) * full


def test_adapter_must_fit_the_model(finetuned, tmp_path):
    base_path, model = finetuned.base_path, finetuned.model
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="different architecture.*num_classes"):
        load_adapter(make_model(targets=None, num_classes=5), path)
    other_rank = add_lora(plaindet.load(base_path), LoraConfig(rank=2, targets=model.config.lora.targets))
    with pytest.raises(CheckpointError, match="has LoRA adapters"):
        load_adapter(other_rank, path)
    with pytest.raises(CheckpointError, match="not a plaindet-adapter checkpoint"):
        load_adapter(make_model(targets=None), base_path)


# -- errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, message",
    [
        (LoraConfig(rank=0), "rank must be positive"),
        (LoraConfig(rank=4, targets="head"), "targets must be one of neck, backbone, both"),
        (LoraConfig(rank=4, dropout=1.0), "dropout"),
    ],
)
def test_bad_lora_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        add_lora(make_model(targets=None), cfg)


def test_adding_twice_is_refused():
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(make_model("neck"), LoraConfig(rank=4, targets="backbone"))


def test_missing_peft_gives_install_hint(monkeypatch, tmp_path):
    path = make_model("neck").save(tmp_path / "lora.safetensors")
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    hint = r"LoRA needs peft: pip install 'plaindet\[lora\]'"
    with pytest.raises(ImportError, match=hint):
        make_model("neck")
    with pytest.raises(ImportError, match=hint):
        plaindet.load(path)
