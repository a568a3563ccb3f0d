"""Finetuning (issue 17): a checkpoint's backbone as backbone_weights, --init from a trained detector,
and run folders that store a frozen backbone once while their checkpoints hold only what trained."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch

import plaindet
from plaindet.data import load_dataset
from plaindet.engine import train as train_mod
from plaindet.engine.backbone_store import BACKBONE_FILE
from plaindet.engine.train import train
from plaindet.engine.train_config import TrainConfig
from plaindet.engine.warm_start import class_dependent_keys, init_from_checkpoint
from plaindet.errors import CheckpointError, TrainingInterrupted, WeightsError
from plaindet.models.factory import list_models, model_config
from plaindet.models.lora import has_lora
from plaindet.weights import read_safetensors

TINY = dict(image_size=64, neck_channels=32, backbone=dict(depth=2))


def _tiny(name="plaindet-t", seed=0, **kw):
    torch.manual_seed(seed)
    return plaindet.create_model(name, **{**TINY, **kw})


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(
        model="plaindet-t", data=str(data), val_split="valid", out=str(out), epochs=1, batch_size=4, image_size=64, amp="off", warmup_steps=2,
        model_overrides={"neck_channels": 32, "backbone": {"depth": 2}},
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _equal_backbones(a, b) -> bool:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _predictions(model, image) -> tuple:
    d = model.predict(image, threshold=0.0)
    return d.boxes, d.scores, d.labels


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A 'pretrained' backbone: a tiny plaindet-t saved as a plaindet checkpoint."""
    path = tmp_path_factory.mktemp("bb") / "source.safetensors"
    _tiny(seed=1, num_classes=3).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# backbone_weights from a plaindet checkpoint or run folder


def test_backbone_weights_from_a_checkpoint_take_its_backbone_and_freeze_it(backbone_file):
    source = plaindet.load(backbone_file)
    model = _tiny(seed=2, num_classes=5, backbone_weights=str(backbone_file))
    assert _equal_backbones(model, source)
    assert not model.config.backbone_trainable
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not torch.equal(model.neck.state_dict()[next(iter(model.neck.state_dict()))], next(iter(source.neck.state_dict().values())))


def test_backbone_weights_from_a_run_folder_take_its_best_checkpoint(tiny_shapes, tmp_path, backbone_file):
    run = tmp_path / "run"
    train(_cfg(tiny_shapes, run, max_steps=1, backbone_weights=str(backbone_file), lora_rank=2, lora_targets="backbone"))
    trained = plaindet.merge_lora(plaindet.load(run / "best.safetensors"))  # the backbone it ran with: adapters folded in
    model = _tiny(num_classes=2, backbone_weights=str(run))
    assert _equal_backbones(model, trained)


def test_backbone_of_another_size_is_a_clear_error(tmp_path):
    small = tmp_path / "s.safetensors"
    plaindet.create_model("plaindet-s", num_classes=2, image_size=64, backbone=dict(depth=2)).save(small)
    with pytest.raises(WeightsError) as e:
        _tiny(num_classes=2, backbone_weights=str(small))
    message = str(e.value)
    assert str(small) in message and "plaindet-s checkpoint does not fit plaindet-t" in message
    assert "width 384 vs 192" in message and "heads 6 vs 3" in message


# ----------------------------------------------------------------------------------------------------------------------
# --init


@pytest.mark.parametrize("name", list_models())
def test_class_layers_are_found_for_every_family(name):
    config = model_config(name, num_classes=7, class_names=[], category_ids=[])
    keys = class_dependent_keys(config)
    assert keys, name
    # Class layers are the output end (heads, a class token vocabulary), never the backbone or the neck.
    assert not any(k.startswith(("backbone.", "neck.")) for k in keys), sorted(keys)
    assert len(keys) <= 8, sorted(keys)


@pytest.mark.parametrize("classes", [["star", "cross", "ring"], ["star", "cross"]], ids=["same-count", "fewer"])
def test_init_from_other_classes_reinitializes_the_class_layers_and_takes_the_rest(tmp_path, classes):
    src_path = tmp_path / "src.safetensors"
    _tiny(seed=1, class_names=["circle", "square", "triangle"]).save(src_path)
    source = plaindet.load(src_path).state_dict()
    model = _tiny(seed=2, class_names=classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    report = init_from_checkpoint(model, src_path)

    class_keys = class_dependent_keys(model.config)
    assert class_keys == {f"{head}.cls_out.{p}" for head in ("head", "aux_head") for p in ("weight", "bias")}
    assert sorted(report.reinitialized) == sorted(class_keys)
    assert not report.same_classes and report.shape_mismatch == [] and report.not_in_source == []
    after = model.state_dict()
    for k, v in after.items():
        if k in class_keys:
            assert torch.equal(v, before[k]), k  # left at the run's own initialization
            if v.dim() > 1:  # (the biases start at the same constant prior in both)
                assert v.shape != source[k].shape or not torch.equal(v, source[k]), k
        else:
            assert torch.equal(v, source[k]), k
    assert sorted(report.taken) == sorted(set(after) - class_keys)


def test_init_from_the_same_classes_predicts_like_the_source(tmp_path, tiny_shapes):
    src_path = tmp_path / "src.safetensors"
    _tiny(seed=1, class_names=["circle", "square", "triangle"]).save(src_path)
    source = plaindet.load(src_path)
    image = load_dataset(tiny_shapes, split="valid").samples[0].image_path
    expected = _predictions(source, image)
    for model in (_tiny(seed=2, class_names=["circle", "square", "triangle"]), _tiny(seed=3, class_names=["circle", "square", "triangle"], lora=dict(rank=4, targets="both"))):
        report = init_from_checkpoint(model, src_path)
        assert report.same_classes and report.reinitialized == []
        got = _predictions(model, image)
        if not has_lora(model):
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
        else:  # LoRA-wrapped MLPs run QuickGELU unfused (Mlp's module path): the same function, to float32 rounding
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def test_train_with_init_reports_what_it_took(tmp_path, tiny_shapes):
    src_path = tmp_path / "src.safetensors"
    _tiny(seed=1, class_names=["star", "cross", "ring"]).save(src_path)  # tiny_shapes: circle, square, triangle
    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, init=str(src_path), max_steps=1, eval_every=0))
    report = json.loads((out / "init.json").read_text())
    assert report["source"] == str(src_path) and not report["same_classes"]
    assert len(report["reinitialized"]) == 4 and len(report["taken"]) > 50



def test_init_with_backbone_weights_takes_the_rest_from_the_detector(tmp_path, tiny_shapes, backbone_file, monkeypatch):
    src_path = tmp_path / "src.safetensors"
    _tiny(seed=1, class_names=["circle", "square", "triangle"]).save(src_path)  # a trainable backbone, other weights
    out = tmp_path / "run"
    runs = []
    original = train_mod._Run.__init__

    def spy(self, cfg, datasets, world):
        original(self, cfg, datasets, world)
        runs.append({k: v.clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(train_mod._Run, "__init__", spy)
    train(_cfg(tiny_shapes, out, init=str(src_path), backbone_weights=str(backbone_file), lora_rank=2, lora_targets="neck", max_steps=1, eval_every=0))
    start, source, pretrained = runs[0], plaindet.load(src_path).state_dict(), plaindet.load(backbone_file).state_dict()
    report = json.loads((out / "init.json").read_text())
    assert report["kept"] and all(k.startswith("backbone.") for k in report["kept"])
    for k, v in start.items():
        plain = k.replace(".base_layer.", ".")
        if k.startswith("backbone."):
            assert torch.equal(v, pretrained[plain]), k  # the backbone_weights, not the detector's
        elif ".lora_" not in k:
            assert torch.equal(v, source[plain]), k  # neck and head from the detector (same classes)


def test_init_from_a_frozen_backbone_detector_keeps_it_frozen_and_stores_it_once(tmp_path, tiny_shapes, backbone_file):
    finetuned = tmp_path / "ft"
    train(_cfg(tiny_shapes, finetuned, max_steps=1, eval_every=0, backbone_weights=str(backbone_file)))
    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, init=str(finetuned / "last.safetensors"), max_steps=1, eval_every=0))
    assert json.loads((out / "init.json").read_text())["backbone_frozen"]
    assert (out / BACKBONE_FILE).is_file()
    assert _equal_backbones(plaindet.load(out / "last.safetensors"), plaindet.load(backbone_file))


# ----------------------------------------------------------------------------------------------------------------------
# A frozen backbone stored once


def _lora_run(data, out, backbone_file, **kw):
    return _cfg(data, out, **{"epochs": 2, "backbone_weights": str(backbone_file), "lora_rank": 4, "lora_targets": "both", **kw})


def test_checkpoints_without_the_backbone_load_and_predict_like_full_ones(tmp_path, tiny_shapes, backbone_file, measured):
    full, slim = tmp_path / "full", tmp_path / "slim"
    train(_lora_run(tiny_shapes, full, backbone_file, backbone_store="every"))
    train(_lora_run(tiny_shapes, slim, backbone_file))  # backbone_store="once", the default

    assert not (full / BACKBONE_FILE).exists() and (slim / BACKBONE_FILE).is_file()
    backbone_bytes = (slim / BACKBONE_FILE).stat().st_size
    for name in ("best.safetensors", "last.safetensors"):
        a, b = (full / name).stat().st_size, (slim / name).stat().st_size
        assert b < a - 0.9 * backbone_bytes, (name, a, b)
        measured(f"tiny LoRA run, {name}: with the backbone vs without", f"{a / 1e6:.2f} MB vs {b / 1e6:.2f} MB (+ {backbone_bytes / 1e6:.2f} MB once)")
        full_model, slim_model = plaindet.load(full / name), plaindet.load(slim / name)
        fs, ss = full_model.state_dict(), slim_model.state_dict()
        assert fs.keys() == ss.keys() and all(torch.equal(fs[k], ss[k]) for k in fs)
    image = load_dataset(tiny_shapes, split="valid").samples[0].image_path
    for x, y in zip(_predictions(full_model, image), _predictions(slim_model, image)):
        np.testing.assert_array_equal(x, y)


def test_a_missing_or_different_backbone_file_is_a_clear_error(tmp_path, tiny_shapes, backbone_file):
    out = tmp_path / "run"
    train(_lora_run(tiny_shapes, out, backbone_file, max_steps=1, eval_every=0))
    moved = shutil.copy(out / BACKBONE_FILE, tmp_path / "kept.safetensors")
    (out / BACKBONE_FILE).unlink()
    with pytest.raises(CheckpointError) as e:
        plaindet.load(out / "last.safetensors")
    assert f"its frozen backbone is in {out / BACKBONE_FILE}, which is missing" in str(e.value)

    # Another backbone under the same name: refused by its hash.
    state, meta = read_safetensors(moved)
    from plaindet.engine.backbone_store import save_backbone

    changed = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    save_backbone(out / BACKBONE_FILE, changed, sha256=meta["sha256"], source=None, model_name="plaindet-t")
    with pytest.raises(CheckpointError, match="is not the backbone .* was trained on"):
        plaindet.load(out / "last.safetensors")


def test_reference_store_rebuilds_the_backbone_from_its_source(tmp_path, tiny_shapes, backbone_file):
    source = shutil.copy(backbone_file, tmp_path / "mine.safetensors")
    out = tmp_path / "run"
    train(_lora_run(tiny_shapes, out, source, max_steps=1, eval_every=0, backbone_store="reference", lora_targets="neck"))
    assert not (out / BACKBONE_FILE).exists()
    assert _equal_backbones(plaindet.load(out / "last.safetensors"), plaindet.load(source))
    shutil.move(source, tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=f"its frozen backbone comes from {source}, which can't be read"):
        plaindet.load(out / "last.safetensors")


class _StopAfter:
    """Stands in for the signal handler: reports SIGTERM from the ``n``-th check on."""

    def __init__(self, n: int) -> None:
        self.n, self.checks = n, 0

    @property
    def signum(self):
        self.checks += 1
        return signal.SIGTERM if self.checks >= self.n else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_resume_from_checkpoints_without_the_backbone_is_exact(tmp_path, tiny_shapes, backbone_file, monkeypatch):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(_lora_run(tiny_shapes, ref, backbone_file))
    monkeypatch.setattr(train_mod, "_StopSignals", lambda: _StopAfter(3))
    with pytest.raises(TrainingInterrupted):
        train(_lora_run(tiny_shapes, cut, backbone_file))
    monkeypatch.undo()
    train(TrainConfig(out=str(cut), resume="auto"))
    a, _ = read_safetensors(ref / "last.safetensors")
    b, _ = read_safetensors(cut / "last.safetensors")
    keys = [k for k in a if not k.startswith("rng.")]
    assert keys == [k for k in b if not k.startswith("rng.")]
    assert [k for k in keys if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("lora_targets", ["", "neck", "backbone", "both"], ids=["neck-and-head", "lora-neck", "lora-backbone", "lora-both"])
def test_training_leaves_every_frozen_parameter_unchanged(tmp_path, tiny_shapes, backbone_file, monkeypatch, lora_targets):
    runs = []
    original = train_mod._Run.__init__

    def spy(self, cfg, datasets, world):
        original(self, cfg, datasets, world)
        params = dict(self.model.named_parameters())
        runs.append((self, {n: p.detach().clone() for n, p in params.items() if not p.requires_grad}, {n: p.detach().clone() for n, p in params.items() if p.requires_grad}))

    monkeypatch.setattr(train_mod._Run, "__init__", spy)
    lora = dict(lora_rank=4, lora_targets=lora_targets) if lora_targets else {}
    train(_cfg(tiny_shapes, tmp_path / "run", max_steps=3, eval_every=0, warmup_steps=1, backbone_weights=str(backbone_file), **lora))
    run, frozen, trainable = runs[0]
    after = dict(run.model.named_parameters())
    assert any(n.startswith("backbone.") for n in frozen)
    assert [n for n, v in frozen.items() if not torch.equal(after[n], v)] == []
    changed = [n for n, v in trainable.items() if not torch.equal(after[n], v)]
    assert any(n.startswith("head.") for n in changed)
    if lora_targets:
        assert any(".lora_B." in n for n in changed)  # the adapters train (B starts at zero)
