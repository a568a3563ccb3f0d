"""Reading images the same way everywhere: formats, modes, EXIF orientation, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from plaindet.data import DatasetError
from plaindet.data.images import ImageReadError, image_size, read_image


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".bmp"])
def test_formats(tmp_path, make_image, suffix):
    path = make_image(tmp_path / f"a{suffix}", 40, 30)
    pixels = read_image(path)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert image_size(path) == (40, 30)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I", "F"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.fromarray(np.full((6, 8, 3), 200, dtype=np.uint8)).convert(mode)
    path = tmp_path / ("a.tiff" if mode in ("CMYK", "I", "F") else "a.png")
    img.save(path)
    pixels = read_image(path)
    assert pixels.shape == (6, 8, 3) and pixels.dtype == np.uint8


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0, 0], [10, 20, 30])


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 1, 255])


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, make_image, suffix, orientation):
    path = make_image(tmp_path / f"o{suffix}", 40, 20, orientation=orientation)
    pixels = read_image(path)
    # Size from the header and size of the pixels agree, and match Pillow's own transpose.
    assert image_size(path) == (pixels.shape[1], pixels.shape[0])
    assert image_size(path) == ((20, 40) if orientation >= 5 else (40, 20))
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(pixels, expected)


def test_png_size_reads_only_the_header(tmp_path, make_image, monkeypatch):
    path = make_image(tmp_path / "a.png", 40, 20, orientation=6)

    def no_decoding(self):
        raise AssertionError("image_size() decoded the pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert image_size(path) == (20, 40)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="a.jpg: image file not found"):
        read_image(tmp_path / "a.jpg")
    with pytest.raises(ImageReadError, match="not found"):
        image_size(tmp_path / "a.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"hello")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("a.jpg", "empty.png"):
        with pytest.raises(ImageReadError, match=f"{name}: not a readable image"):
            image_size(tmp_path / name)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp"])
def test_truncated_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # pixel data dominates
    path = tmp_path / f"t{suffix}"
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (64, 48)  # the header is intact
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(path)


def test_huge_image_is_refused(tmp_path, make_image, monkeypatch):
    path = make_image(tmp_path / "big.png", 64, 64)
    # Lower Pillow's decompression-bomb limit instead of writing a gigapixel file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for read in (image_size, read_image):
        with pytest.raises(ImageReadError, match="too large to decode safely"):
            read(path)


def test_image_read_error_is_a_dataset_error():
    assert issubclass(ImageReadError, DatasetError)
