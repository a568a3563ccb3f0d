"""Many detectors on one backbone pass: a group's detections equal each detector's own, a group of
different backbones is refused, and the group exports as one ONNX graph with one backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import plaindet
from plaindet.data import load_dataset
from plaindet.engine.train import train
from plaindet.engine.train_config import TrainConfig
from plaindet.errors import CheckpointError

TINY = dict(image_size=64, backbone=dict(depth=2))


@pytest.fixture(scope="module")
def detectors(tmp_path_factory, tiny_shapes):
    """Four detectors finetuned from one frozen backbone, with different necks, heads and classes: one
    from a training run (its checkpoint records the backbone's hash and leaves the backbone out), three
    saved with ``model.save`` (their hash is computed), one of them with trained-looking LoRA on its
    neck. Returns ``(paths, other)``, ``other`` a detector on another backbone."""
    root = tmp_path_factory.mktemp("group")
    torch.manual_seed(1)
    backbone = root / "backbone.safetensors"
    plaindet.create_model("plaindet-t", num_classes=3, neck_channels=32, **TINY).save(backbone)

    cfg = TrainConfig(
        model="plaindet-t", data=str(tiny_shapes), val_split="valid", out=str(root / "run"), epochs=1, batch_size=4, image_size=64, amp="off",
        warmup_steps=1, max_steps=2, eval_every=0, backbone_weights=str(backbone), model_overrides={"neck_channels": 32, "backbone": {"depth": 2}},
    )  # fmt: skip
    train(cfg)
    paths = [root / "run" / "last.safetensors"]
    variants = [
        dict(class_names=["star", "cross"], neck_channels=48),
        dict(num_classes=5, neck_channels=32, head_depth=1),
        dict(num_classes=3, neck_channels=32, lora=dict(rank=2, targets="neck")),
    ]
    for i, kw in enumerate(variants):
        torch.manual_seed(10 + i)
        model = plaindet.create_model("plaindet-t", backbone_weights=str(backbone), **{**TINY, **kw})
        with torch.no_grad():  # heads (and adapters) that are not at their start: outputs that tell detectors apart
            for name, p in model.named_parameters():
                if not name.startswith("backbone.") or ".lora_" in name:
                    p.add_(torch.randn_like(p) * 0.05)
        paths.append(model.save(root / f"det{i}.safetensors"))
    torch.manual_seed(99)
    other = plaindet.create_model("plaindet-t", num_classes=3, neck_channels=32, **TINY).save(root / "other.safetensors")
    return paths, other


def test_group_detections_equal_each_detectors_own(detectors, tiny_shapes, measured):
    paths, _ = detectors
    group = plaindet.load_group(paths)
    assert len({id(m.backbone) for m in group.members}) == 1  # one backbone module, run once
    images = [s.image_path for s in load_dataset(tiny_shapes, split="valid").samples[:3]]
    together = group.predict(images, threshold=0.0)
    worst = 0.0
    for path, dets in zip(paths, together):
        alone = plaindet.load(path).predict(images, threshold=0.0)
        for a, b in zip(dets, alone):
            assert a.class_names == b.class_names and len(a) == len(b)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5, rtol=0)
            worst = max(worst, float(np.abs(a.boxes - b.boxes).max()), float(np.abs(a.scores - b.scores).max()))
    measured("group of 4 vs each detector's own predict: max abs difference (boxes px, scores)", f"{worst:.1e}")
    assert group.class_names[1] == ["star", "cross"] and len(group.class_names[2]) == 5


def test_group_with_another_backbone_is_refused_naming_both(detectors):
    paths, other = detectors
    with pytest.raises(CheckpointError) as e:
        plaindet.load_group([paths[0], paths[1], other])
    assert f"{paths[0]} and {other} have different backbones" in str(e.value)


def test_group_exports_as_one_graph_with_one_backbone(detectors, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    from typer.testing import CliRunner

    from plaindet.cli import app
    from plaindet.export.onnx import group_output_names

    paths, _ = detectors
    group = plaindet.load_group(paths[:2])
    path = tmp_path / "group.onnx"
    result = CliRunner().invoke(app, ["export", "--weights", str(paths[0]), "--weights", str(paths[1]), "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 detectors on one backbone" in result.output
    proto = onnx.load(path)
    # One backbone: the patch embedding appears once among the initializers.
    patch = [i for i in proto.graph.initializer if tuple(i.dims) == (192, 3, 16, 16)]
    assert len(patch) == 1
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    names = group_output_names(2)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(names, {"images": images.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for o in group(images) for t in o]
    for name, a, b in zip(names, out, ref):
        if name.startswith("scores"):
            np.testing.assert_allclose(np.sort(a, axis=-1), np.sort(b, axis=-1), atol=1e-5)
