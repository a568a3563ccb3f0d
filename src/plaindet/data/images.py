"""Reading images the same way everywhere: oriented by EXIF, always 8-bit RGB.

The rule (also in :mod:`plaindet.data.sample`): labels are drawn on the image *as displayed*, so the
EXIF orientation tag is applied before anything else, and sizes are reported after it.

Modes: grayscale (``L``), grayscale+alpha (``LA``), palette (``P``/``PA``), ``RGBA``, ``CMYK`` and
16-bit (``I;16``, ``I``) images all become ``uint8`` RGB. Alpha is dropped, not composited, which is
what labeling tools show for fully opaque images and what training pipelines of other libraries do.
16-bit grayscale is scaled to 8 bits (``value / 257``) instead of being clipped at 255.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from plaindet.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# EXIF orientations 5-8 rotate by 90 or 270 degrees, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}
# The transform that displays an image stored with orientation k (the same table Pillow's exif_transpose uses).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# The pixel limit is Pillow's own (Image.MAX_IMAGE_PIXELS, 89 megapixels by default): a header that
# promises more is refused before a pixel is decoded. A user with genuinely large images raises it.
RAISE_LIMIT = "if the image is genuine, raise the limit first: PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None removes it)"


class ImageReadError(DatasetError):
    """An image file is missing, unreadable, truncated or too large. The message names the file."""


class ImageTooLarge(ImageReadError):
    """An image whose header promises more pixels than the reader's limit (a decompression bomb, or
    simply too big to decode here); raised before any pixel is decoded."""


class UnsupportedImage(ImageReadError):
    """Bytes that are not an image in one of the accepted formats."""


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on decompression bombs; we want one clear error instead.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{path}: image is too large to decode safely ({e}); {RAISE_LIMIT}") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open image ({e})") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) known from the file's header, without decoding any pixels.

    Both :func:`image_size` and :func:`read_image` take the orientation from here, so the size a
    reader reports and the pixels it later gets always agree.
    """
    try:
        if img.format == "PNG":
            # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk stored after
            # the pixel data, which would make every size query a full decode. The base class reads
            # only what the header gave (eXIf and XMP chunks before the pixels, where writers put them).
            exif = Image.Image.getexif(img)
        else:
            exif = img.getexif()
        orientation = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not a reason to reject the image
        return 1
    return orientation if orientation in _TRANSPOSE or orientation == 1 else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image as displayed (after EXIF orientation), reading only the header.

    A truncated file whose header is intact passes here; only :func:`read_image` finds it.
    """
    path = Path(path)
    with _open(path) as img:
        w, h = img.size
        orientation = _orientation(img)
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data uses the 0..65535 range; plain 32-bit "I" images are usually 16-bit data too.
        scale = 257.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 1.0
        arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr = np.clip(np.rint((arr - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning about palette transparency
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to a ``uint8`` array ``(H, W, 3)``, RGB, EXIF orientation applied.

    Raises :class:`ImageReadError` naming the file when it is missing, not an image, truncated or
    larger than Pillow's decompression-bomb limit.
    """
    path = Path(path)
    return _decode(_open(path), str(path))


# What decode_image accepts by default: the formats of IMAGE_SUFFIXES. Pillow can open many more
# (EPS runs Ghostscript, for one), which bytes from a stranger should never reach.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# Formats worth naming when they arrive anyway, by their first bytes.
_SIGNATURES = ((b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"))


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = None, formats: tuple[str, ...] = UPLOAD_FORMATS) -> np.ndarray:
    """Decode image bytes (an upload) exactly as :func:`read_image` decodes a file: ``uint8 (H, W, 3)``
    RGB, EXIF orientation applied.

    Only ``formats`` (Pillow format names) are tried. The size is read from the header first, so an
    image of more than ``max_pixels`` (default: Pillow's decompression-bomb limit) raises
    :class:`ImageTooLarge` without decoding a pixel. Other bytes raise :class:`UnsupportedImage`
    (not an image of ``formats``) or :class:`ImageReadError` (empty, truncated or corrupt), each
    message naming ``name``.
    """
    if not data:
        raise ImageReadError(f"{name}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{name}: image is too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        known = next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)
        what = f"a {known} image" if known else "not an image"
        raise UnsupportedImage(f"{name}: {what}; send {', '.join(formats)}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: image data is truncated or corrupt ({e})") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise ImageTooLarge(f"{name}: {w}x{h} is {w * h / 1e6:.1f} megapixels, more than the {max_pixels / 1e6:g} allowed")
    return _decode(img, name)


def _decode(img: Image.Image, name: str) -> np.ndarray:
    """The pixels of an opened image, oriented and RGB (see :func:`read_image`); closes ``img``."""
    try:
        with img:
            orientation = _orientation(img)  # before load(), exactly as image_size() sees it
            img.load()
            if orientation in _TRANSPOSE:
                img = img.transpose(_TRANSPOSE[orientation])
            return np.ascontiguousarray(np.asarray(_to_rgb(img), dtype=np.uint8))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: image data is truncated or corrupt ({e})") from None
