"""Drawing boxes and ``plaindet data show``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from plaindet.errors import DatasetError
from plaindet.viz import PALETTE, _text_color, class_color, draw, run_show

NAMES = ["cat", "dog", "bird", "car"]


def black(h=120, w=160):
    return np.zeros((h, w, 3), np.uint8)


def test_draw_returns_same_size_with_class_colored_edges():
    image = black()
    out = draw(image, np.array([[10, 50, 60, 90]]), [3], [0.87], NAMES, thickness=2)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (160, 120)
    pixels = np.asarray(out)
    color = class_color(3)
    for x, y in [(10, 70), (11, 70), (59, 70), (58, 70), (35, 89), (35, 88)]:  # edges lie inside the box
        assert tuple(pixels[y, x]) == color, (x, y)
    assert tuple(pixels[70, 35]) == (0, 0, 0)  # the inside is not filled
    assert tuple(pixels[70, 61]) == (0, 0, 0)  # nothing outside the right edge
    assert tuple(pixels[49, 10]) == color  # the label's background sits just above the box
    assert tuple(pixels[49, 70]) == (0, 0, 0)  # and is not wider than the image needs
    assert not image.any()  # the input is untouched


def test_label_goes_inside_the_box_when_it_touches_the_top():
    def colored_below_top_edge(labels):
        pixels = np.asarray(draw(black(), [[30, 0, 120, 80]], labels, None, NAMES, thickness=2))
        return (pixels[2:8, 32:50] == class_color(1)).all(axis=-1).mean()

    # The filled label background covers the top-left interior of the box.
    assert colored_below_top_edge([1]) > 0.5 and colored_below_top_edge(None) == 0


def test_draw_without_boxes_returns_a_copy_of_the_image():
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for boxes in (np.zeros((0, 4)), [], torch.zeros(0, 4)):
        out = draw(image, boxes)
        np.testing.assert_array_equal(np.asarray(out), image)


def test_draw_accepts_torch_tensors_and_sorts_by_score():
    boxes = torch.tensor([[10.0, 30.0, 100.0, 100.0], [10.0, 30.0, 100.0, 100.0]])
    out = np.asarray(draw(black(), boxes, torch.tensor([0, 2]), torch.tensor([0.9, 0.2]), NAMES, thickness=3))
    assert tuple(out[60, 11]) == class_color(0)  # the higher score is drawn last, on top


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 80), 128, np.uint8),
        np.full((64, 80, 1), 128, np.uint8),
        Image.new("L", (80, 64), 128),
        Image.new("RGBA", (80, 64)),
    ],
    ids=["gray-2d", "gray-1ch", "pil-L", "pil-RGBA"],
)
def test_draw_converts_any_input_to_rgb(image):
    out = draw(image, [[5, 5, 40, 40]], [0])
    assert out.mode == "RGB" and out.size == (80, 64)
    assert tuple(np.asarray(out)[20, 5]) == class_color(0)


def test_draw_reads_image_files(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(black(30, 40)).save(path)
    assert draw(path, [[1, 1, 20, 20]], [0]).size == (40, 30)


def test_draw_rejects_mismatched_lengths_and_float_images():
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw(black(), [[0, 0, 5, 5], [1, 1, 6, 6]], [0])
    with pytest.raises(TypeError, match="uint8"):
        draw(np.zeros((10, 10, 3), np.float32), [])


def test_crowd_boxes_are_dashed():
    pixels = np.asarray(draw(black(), [[10, 40, 150, 110]], [2], crowd=[True], thickness=2))
    top_edge = (pixels[40, 10:150] == class_color(2)).all(axis=-1)
    assert 0.3 < top_edge.mean() < 0.8  # gaps in the line


def test_colors_are_stable_and_text_contrasts():
    assert class_color(0) == PALETTE[0] and class_color(len(PALETTE) + 1) == PALETTE[1]
    assert len(set(PALETTE)) == len(PALETTE)
    assert _text_color((255, 225, 25)) == (0, 0, 0)  # yellow: black text
    assert _text_color((0, 0, 117)) == (255, 255, 255)  # navy: white text


def test_label_size_scales_with_the_image():
    def label_height(side):
        pixels = np.asarray(draw(black(side, side), [[side // 4, side // 2, side // 2, side * 3 // 4]], [0], [0.5]))
        above = (pixels[: side // 2] == class_color(0)).all(axis=-1)  # the label is all that is above the box
        return above.any(axis=1).sum()

    small, large = label_height(200), label_height(1600)
    assert small >= 10 and 3 * small < large < 5 * small  # font 10 px (the minimum) vs 40 px


# ---------------------------------------------------------------- plaindet data show


def write_yolo(root, n=5):
    """A tiny YOLO dataset: data.yaml, images/train/*.jpg, labels/train/*.txt."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / "train" / f"im{i}.jpg")
        (root / "labels" / "train" / f"im{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n0 0.2 0.25 0.2 0.3\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: ['cat', 'dog']\n")
    return root / "data.yaml"


def test_run_show_writes_one_drawing_per_image_and_a_grid(tmp_path, capsys):
    yaml = write_yolo(tmp_path / "ds")
    out = tmp_path / "out"
    assert run_show(yaml, out, n=3, seed=0) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4 and "grid.png" in written
    for name in written:
        if name != "grid.png":  # JPEG inputs are drawn as JPEG
            assert name.endswith(".jpg") and Image.open(out / name).format == "JPEG" and Image.open(out / name).size == (64, 48)
    assert str(out) in capsys.readouterr().out
    # Same seed, same choice.
    assert run_show(yaml, tmp_path / "again", n=3, seed=0) == 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == written
    # --format png draws them losslessly instead.
    assert run_show(yaml, tmp_path / "png", n=3, seed=0, format="png") == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [n.replace(".jpg", ".png") for n in written]
    with pytest.raises(ValueError, match="unknown drawing format 'gif'"):
        run_show(yaml, tmp_path / "gif", n=3, format="gif")


def test_drawings_keep_the_input_format_unless_told():
    from plaindet.viz import drawing_suffix

    assert [drawing_suffix(name) for name in ("a.jpg", "b.JPEG", "c.png", "d.webp", "e.bmp")] == [".jpg", ".jpg", ".png", ".png", ".png"]
    assert drawing_suffix("a.jpg", "png") == ".png" and drawing_suffix("c.png", "jpg") == ".jpg"


def test_run_show_fails_cleanly_on_a_bad_dataset(tmp_path, capsys):
    with pytest.raises(DatasetError, match="missing.yaml: no such file or folder"):
        run_show(tmp_path / "missing.yaml", tmp_path / "out", n=2)
    assert not (tmp_path / "out").exists()  # nothing written for a dataset that could not be read


def test_run_show_draws_crowd_regions_and_keeps_names_unique(tmp_path, monkeypatch, capsys):
    # Independent of the dataset readers: load_dataset is replaced by a hand-built dataset.
    import plaindet.data
    from plaindet.data import DatasetError, DetectionDataset, Sample

    samples = []
    for i, folder in enumerate(["a", "b", "c"]):  # a/img.jpg, b/img.jpg, c/grid.jpg: stems collide
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / ("grid.jpg" if folder == "c" else "img.jpg")
        Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(path)
        boxes = [[20, 30, 200, 250], [250, 40, 380, 200]]
        samples.append(Sample(path, 400, 300, boxes, [0, 1], image_id=10 + i, iscrowd=[False, True]))
    dataset = DetectionDataset(samples, ["person", "crowd of people"])

    def fake_load(path, split="train"):
        if str(path) == "bad":
            raise DatasetError("bad: no such dataset")
        return dataset

    monkeypatch.setattr(plaindet.data, "load_dataset", fake_load)
    out = tmp_path / "out"
    assert run_show("ds", out, n=16) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "grid_12.jpg", "img.jpg", "img_11.jpg"]
    assert "3 crowd regions are drawn dashed" in capsys.readouterr().out
    grid = Image.open(out / "grid.png")
    assert grid.width > 3 * 320 and grid.height > 320

    with pytest.raises(DatasetError, match="bad: no such dataset"):
        run_show("bad", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
