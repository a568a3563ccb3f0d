"""Box-aware transforms, per-sample seeding, collation and the reproducible loader."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from plaindet.data.collate import collate, make_loader
from plaindet.data.sample import DetectionDataset, Sample
from plaindet.data.transforms import (
    TransformedDataset,
    eval_transform,
    resized_size,
    scale_boxes_to_original,
    train_transform,
)

# Pure, far-apart colors for painted boxes; the background is dark gray noise, far from all three.
COLORS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)


def painted_dataset(tmp_path, boxes_per_image, size=(240, 360), seed=0, iscrowd=None):
    """Images whose box regions are filled with the color of the box's class (label k -> COLORS[k])."""
    rng = np.random.default_rng(seed)
    h, w = size
    samples = []
    for i, (boxes, labels) in enumerate(boxes_per_image):
        img = rng.integers(20, 60, size=(h, w, 3), dtype=np.uint8)
        for (x1, y1, x2, y2), k in zip(boxes, labels):
            img[int(y1) : int(y2), int(x1) : int(x2)] = COLORS[k]
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        crowd = None if iscrowd is None else iscrowd[i]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        samples.append(Sample(path, w, h, boxes, labels, image_id=100 + i, iscrowd=crowd))
    return DetectionDataset(samples, ["red", "green", "blue"])


THREE_BOXES = ([[20, 30, 120, 110], [200, 40, 330, 200], [60, 150, 150, 230]], [0, 1, 2])


def color_fraction(image, box, color):
    """Fraction of the pixels inside ``box`` (shrunk by 2 px to skip resampled edges) close to ``color``."""
    x1, y1, x2, y2 = box
    region = image[int(np.ceil(y1)) + 2 : int(y2) - 2, int(np.ceil(x1)) + 2 : int(x2) - 2].astype(int)
    if region.size == 0:
        return 1.0  # too thin to check after shrinking
    return float((np.abs(region - color.astype(int)).max(axis=-1) < 40).mean())


def assert_valid_item(item):
    h, w = item["size"]
    assert item["image"].shape == (h, w, 3) and item["image"].dtype == np.uint8
    boxes = item["boxes"]
    assert boxes.dtype == np.float32 and boxes.shape == (len(item["labels"]), 4)
    assert item["labels"].dtype == np.int64
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
    assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


# ---------------------------------------------------------------- resize, letterbox, round trip


@pytest.mark.parametrize(
    "hw,long_side", [((49, 10), 16), ((333, 1000), 640), ((1000, 333), 640), ((480, 640), 640), ((7, 7), 320)]
)
def test_resized_size_makes_long_side_exact(hw, long_side):
    # albumentations' LongestMaxSize gives 15 for (49, 10) -> 16; our rule must not.
    h, w = resized_size(*hw, long_side)
    assert max(h, w) == long_side
    assert min(h, w) == round(min(hw) * long_side / max(hw))  # short side: nearest pixel


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("hw", [(240, 360), (301, 97)])
def test_eval_transform_round_trip(tmp_path, letterbox, hw):
    h, w = hw
    boxes = np.array([[0, 0, w, h], [w * 0.1, h * 0.2, w * 0.55, h * 0.9], [w - 5, h - 7, w, h]], np.float32)
    ds = painted_dataset(tmp_path, [(boxes, [0, 1, 2])], size=hw)
    item = TransformedDataset(ds, eval_transform(160, letterbox=letterbox))[0]
    assert_valid_item(item)
    assert item["orig_size"] == (h, w)
    content = resized_size(h, w, 160)
    assert item["size"] == ((160, 160) if letterbox else content)
    assert len(item["boxes"]) == 3  # eval keeps every box
    if letterbox:  # image at the top-left, fill gray at the bottom/right
        assert np.all(item["image"][content[0] :, :] == 114) and np.all(item["image"][:, content[1] :] == 114)

    back = scale_boxes_to_original(item["boxes"], item["size"], item["orig_size"], letterbox)
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    back_torch = scale_boxes_to_original(torch.from_numpy(item["boxes"]), item["size"], item["orig_size"], letterbox)
    assert isinstance(back_torch, torch.Tensor)
    np.testing.assert_allclose(back_torch.numpy(), boxes, atol=1e-3)


def test_scale_boxes_to_original_clips_to_the_image():
    boxes = np.array([[-5, -5, 170, 170]], np.float32)  # a prediction reaching into the letterbox pad
    back = scale_boxes_to_original(boxes, (160, 160), (100, 200), letterbox=True)
    np.testing.assert_allclose(back, [[0, 0, 200, 100]])


# ---------------------------------------------------------------- geometric augmentations


def only(**overrides):
    """A train transform with every augmentation off except the ones given."""
    args = dict(hflip=0.0, crop=0.0, zoom_out=0.0, jitter=0.0)
    args.update(overrides)
    return args


def test_flip_moves_boxes_exactly(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES])
    original = np.asarray(Image.open(ds[0].image_path))
    item = TransformedDataset(ds, train_transform(360, **only(hflip=1.0)))[0]  # 360 = long side: no resize
    np.testing.assert_array_equal(item["image"], original[:, ::-1])
    expected = np.array(THREE_BOXES[0], np.float32)[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [360, 0, 360, 0]
    np.testing.assert_allclose(item["boxes"], expected, atol=1e-4)
    np.testing.assert_array_equal(item["labels"], THREE_BOXES[1])


def test_crop_rule_keeps_visible_boxes_and_drops_the_rest():
    # The training box rule: clip, keep a box when at least 30 % of its area remains in the image.
    rule = train_transform().processors["bboxes"].params
    crop = A.Compose([A.Crop(x_min=0, y_min=0, x_max=100, y_max=100)], bbox_params=rule)
    boxes = np.array(
        [[10, 10, 50, 50], [50, 0, 150, 100], [80, 80, 180, 180], [200, 200, 250, 250], [0, 60, 100, 200]], np.float32
    )  # inside, 50 % visible, 4 % visible, outside, 29 % visible
    out = crop(image=np.zeros((300, 300, 3), np.uint8), bboxes=boxes, labels=np.arange(5))
    np.testing.assert_array_equal(out["labels"], [0, 1])
    np.testing.assert_allclose(out["bboxes"], [[10, 10, 50, 50], [50, 0, 100, 100]])


def test_random_crop_drops_boxes_and_keeps_the_rest_inside(tmp_path):
    boxes = [[0, 0, 40, 40], [320, 200, 360, 240], [150, 90, 210, 150]]  # two corners and the center
    ds = painted_dataset(tmp_path, [(boxes, [0, 1, 2])])
    td = TransformedDataset(ds, train_transform(180, **only(crop=1.0, crop_fraction=0.45)))
    counts = []
    for epoch in range(20):
        td.set_epoch(epoch)
        item = td[0]
        assert_valid_item(item)
        counts.append(len(item["boxes"]))
        assert 2 in item["labels"]  # the center box is always visible enough
    assert min(counts) < 3  # some crop removed a corner box


def test_zoom_out_shrinks_all_boxes_by_one_factor(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES])
    plain = TransformedDataset(ds, train_transform(180, **only()))[0]
    td = TransformedDataset(ds, train_transform(180, **only(zoom_out=1.0, zoom_out_max=3.0)))
    factors = []
    for epoch in range(8):
        td.set_epoch(epoch)
        item = td[0]
        assert item["size"] == plain["size"]  # zoom-out keeps the canvas size
        ratio = (item["boxes"][:, 2:] - item["boxes"][:, :2]) / (plain["boxes"][:, 2:] - plain["boxes"][:, :2])
        assert np.ptp(ratio) < 0.03  # one factor for every box and both axes (up to pixel rounding)
        # Relative placement is kept: offsets between boxes shrink by the same factor.
        offsets = (item["boxes"][1:, :2] - item["boxes"][0, :2]) / (plain["boxes"][1:, :2] - plain["boxes"][0, :2])
        np.testing.assert_allclose(offsets, ratio.mean(), atol=0.03)
        factors.append(ratio.mean())
        for box, k in zip(item["boxes"], item["labels"]):
            assert color_fraction(item["image"], box, COLORS[k]) > 0.9
    assert 1 / 3 - 0.02 < min(factors) and max(factors) <= 1.0 + 1e-6 and np.ptp(factors) > 0.1


def test_multi_scale_picks_sizes_from_the_list(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES])
    td = TransformedDataset(ds, train_transform(scales=[96, 128, 160], **only()))
    letterboxed = TransformedDataset(ds, train_transform(scales=[96, 128, 160], letterbox=True, **only()))
    seen = set()
    for epoch in range(30):
        td.set_epoch(epoch)
        letterboxed.set_epoch(epoch)
        long_side = max(td[0]["size"])
        seen.add(long_side)
        assert letterboxed[0]["size"] == (long_side, long_side)  # same seed, same choice, padded square
    assert seen == {96, 128, 160}


def test_painted_boxes_stay_on_their_color_under_all_augmentations(tmp_path):
    # The strongest check of box geometry: whatever crop/zoom/flip/scale/letterbox does to the
    # image, each output box must still cover pixels of its class's color.
    ds = painted_dataset(tmp_path, [THREE_BOXES, ([[0, 0, 90, 60], [250, 150, 360, 240]], [2, 0])])
    transform = train_transform(scales=[128, 160, 192], letterbox=True, crop=0.7, zoom_out=0.5, hflip=0.5, jitter=0.0)
    td = TransformedDataset(ds, transform)
    checked = 0
    for epoch in range(12):
        td.set_epoch(epoch)
        for i in range(len(td)):
            item = td[i]
            assert_valid_item(item)
            for box, k in zip(item["boxes"], item["labels"]):
                assert color_fraction(item["image"], box, COLORS[k]) > 0.9, (epoch, i, box, k)
                checked += 1
    assert checked > 40


def test_boxes_on_the_border_and_images_without_boxes_pass(tmp_path):
    ds = painted_dataset(
        tmp_path, [([[0, 0, 360, 240], [350, 230, 360, 240]], [0, 1]), (np.zeros((0, 4)), np.zeros(0, np.int64))]
    )
    td = TransformedDataset(ds, train_transform(160, jitter=1.0, crop=1.0, zoom_out=1.0, hflip=1.0, letterbox=True))
    for epoch in range(5):
        td.set_epoch(epoch)
        assert_valid_item(td[0])
        empty = td[1]
        assert_valid_item(empty)
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
        assert empty["size"] == (160, 160)


def test_crowd_boxes_dropped_for_training_and_kept_on_request(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES], iscrowd=[[False, True, False]])
    dropped = TransformedDataset(ds, eval_transform(180))[0]
    np.testing.assert_array_equal(dropped["labels"], [0, 2])
    kept = TransformedDataset(ds, eval_transform(180), keep_crowd=True)[0]
    np.testing.assert_array_equal(kept["labels"], [0, 1, 2])
    np.testing.assert_array_equal(kept["iscrowd"], [False, True, False])


# ---------------------------------------------------------------- seeding


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES] * 3)
    transform = train_transform(160, scales=[128, 160], crop=0.7, zoom_out=0.5)
    a, b = TransformedDataset(ds, transform, seed=1), TransformedDataset(ds, transform, seed=1)
    forward = [a[i] for i in range(3)]
    backward = [b[i] for i in reversed(range(3))][::-1]  # other order, same transform object
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
    a.set_epoch(1)
    other_epoch = [a[i] for i in range(3)]
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(forward, other_epoch))


# ---------------------------------------------------------------- collate and loader


def test_collate_pads_bottom_right_and_masks_the_padding():
    rng = np.random.default_rng(0)
    items = [
        {"image": rng.integers(1, 255, (50, 70, 3), dtype=np.uint8), "boxes": np.array([[1, 2, 30, 40]], np.float32),
         "labels": np.array([2]), "image_id": 5, "orig_size": (500, 700), "size": (50, 70)},
        {"image": rng.integers(1, 255, (65, 40, 3), dtype=np.uint8), "boxes": np.zeros((0, 4), np.float32),
         "labels": np.zeros(0, np.int64), "image_id": 6, "orig_size": (65, 40), "size": (65, 40)},
    ]  # fmt: skip
    batch = collate(items, size_divisor=32)
    images, mask = batch["images"], batch["mask"]
    assert images.shape == (2, 3, 96, 96) and images.dtype == torch.uint8
    assert mask.shape == (2, 96, 96) and mask.dtype == torch.bool
    for i, item in enumerate(items):
        h, w = item["image"].shape[:2]
        np.testing.assert_array_equal(images[i, :, :h, :w].permute(1, 2, 0).numpy(), item["image"])
        assert not mask[i, :h, :w].any() and mask[i, h:].all() and mask[i, :, w:].all()
        assert images[i, :, h:].eq(0).all() and images[i, :, :, w:].eq(0).all()
    t0, t1 = batch["targets"]
    assert t0["boxes"].dtype == torch.float32 and t0["labels"].dtype == torch.int64
    assert t0["boxes"].tolist() == [[1, 2, 30, 40]] and t0["labels"].tolist() == [2]
    assert t1["boxes"].shape == (0, 4) and t1["labels"].shape == (0,) and t1["iscrowd"].shape == (0,)
    assert t0["image_id"].item() == 5 and t0["orig_size"].tolist() == [500, 700] and t1["size"].tolist() == [65, 40]


def test_collate_takes_read_only_images_without_a_warning(recwarn):
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    image.flags.writeable = False  # as decoders and untouched transform outputs may return them
    item = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "image_id": 1, "orig_size": (20, 30), "size": (20, 30)}
    batch = collate([item], size_divisor=32)
    np.testing.assert_array_equal(batch["images"][0, :, :20, :30].permute(1, 2, 0).numpy(), image)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def loader_batches(dataset, epoch, num_workers):
    loader = make_loader(dataset, 3, shuffle=True, seed=7, num_workers=num_workers)
    loader.set_epoch(epoch)
    return list(loader)


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["mask"], y["mask"])
        for tx, ty in zip(x["targets"], y["targets"]):
            assert all(torch.equal(tx[k], ty[k]) for k in tx)


def test_loader_is_reproducible_across_runs_epochs_and_workers(tmp_path):
    ds = painted_dataset(tmp_path, [THREE_BOXES] * 7, size=(60, 90))
    td = TransformedDataset(ds, train_transform(64, scales=[48, 64], crop=0.5, zoom_out=0.5), seed=3)
    first = loader_batches(td, epoch=0, num_workers=0)
    assert [len(b["targets"]) for b in first] == [3, 3, 1]
    assert_same_batches(first, loader_batches(td, epoch=0, num_workers=0))
    assert_same_batches(first, loader_batches(td, epoch=0, num_workers=2))  # workers get the same samples

    order = lambda batches: [t["image_id"].item() for b in batches for t in b["targets"]]  # noqa: E731
    second = loader_batches(td, epoch=1, num_workers=2)
    assert sorted(order(second)) == sorted(order(first)) and order(second) != order(first)
    assert_same_batches(second, loader_batches(td, epoch=1, num_workers=0))  # set_epoch reached the workers
