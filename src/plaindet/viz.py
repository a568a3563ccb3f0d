"""Drawing boxes on images, and ``plaindet data show``: render a dataset's labels to look at them.

Colors are stable: class ``k`` is always ``PALETTE[k % len(PALETTE)]``, in every image and every run.
Line width and font size scale with the image, so labels stay readable on a 200 px thumbnail and on
a 4000 px photo alike.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plaindet.data.images import read_image
from plaindet.errors import ConfigError, DatasetError

__all__ = ["DRAW_FORMATS", "PALETTE", "class_color", "contact_sheet", "draw", "drawing_suffix", "run_show", "save_drawing"]

# 20 colors, far apart in hue and lightness, so neighbouring class indices look different.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[misc]
    for h in (
        "e6194b", "3cb44b", "ffe119", "4363d8", "f58231", "911eb4", "42d4f4", "f032e6", "bfef45", "fabed4",
        "469990", "dcbeff", "9a6324", "fffac8", "800000", "aaffc3", "808000", "ffd8b1", "000075", "a9a9a9",
    )
)  # fmt: skip

_GRID_CELL = 320  # side of one contact-sheet thumbnail, in pixels
DRAW_FORMATS = ("auto", "png", "jpg")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_JPEG_QUALITY = 90
_GRID_MAX = 16  # thumbnails on the contact sheet


def class_color(label: int | None) -> tuple[int, int, int]:
    """The RGB color of class ``label`` (``None``: the color used when there are no labels)."""
    return PALETTE[0 if label is None else int(label) % len(PALETTE)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Perceived luminance (ITU-R BT.601): dark text on light backgrounds, white on dark ones.
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _numpy(values: Any) -> np.ndarray:
    # A torch tensor (only possible once torch is imported) becomes numpy without importing torch here.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, (str, Path)):
        return Image.fromarray(read_image(image))  # EXIF orientation applied, like the labels
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # always a copy: we never draw on the caller's image
    array = _numpy(image)
    if array.dtype != np.uint8:
        raise TypeError(f"draw: image array must be uint8 (H, W, 3) or (H, W), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")
    raise TypeError(f"draw: image array must be (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got shape {array.shape}")


def _as_numpy(values: Any) -> np.ndarray | None:
    return None if values is None else _numpy(values)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, needs Pillow built with FreeType
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _dashed_rectangle(canvas: ImageDraw.ImageDraw, xyxy: tuple[int, int, int, int], color, width: int) -> None:
    x0, y0, x1, y1 = xyxy
    dash = max(4, 4 * width)
    for start in range(x0, x1 + 1, 2 * dash):
        end = min(start + dash, x1)
        canvas.rectangle((start, y0, end, y0 + width - 1), fill=color)
        canvas.rectangle((start, y1 - width + 1, end, y1), fill=color)
    for start in range(y0, y1 + 1, 2 * dash):
        end = min(start + dash, y1)
        canvas.rectangle((x0, start, x0 + width - 1, end), fill=color)
        canvas.rectangle((x1 - width + 1, start, x1, end), fill=color)


def draw(
    image: str | Path | Image.Image | np.ndarray,
    boxes: np.ndarray | Sequence,
    labels: np.ndarray | Sequence[int] | None = None,
    scores: np.ndarray | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    crowd: np.ndarray | Sequence[bool] | None = None,
    dashed: np.ndarray | Sequence[bool] | None = None,
    thickness: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Draw boxes with class-colored outlines and ``"name 0.87"`` labels; return a new RGB image.

    Args:
        image: an image file (read with EXIF orientation applied), a PIL image, or a ``uint8``
            array ``(H, W, 3)`` RGB, ``(H, W, 4)`` (alpha ignored) or ``(H, W)`` / ``(H, W, 1)`` gray.
            The input is never modified.
        boxes: ``(N, 4)`` absolute ``x1, y1, x2, y2`` pixels (numpy, torch or nested lists).
        labels: ``(N,)`` class indices; they pick the color (:func:`class_color`) and the name.
        scores: ``(N,)`` confidences, shown with two decimals; higher-scored boxes are drawn on top.
        class_names: names of the class indices; without them the index is shown.
        crowd: ``(N,)`` booleans; crowd regions get a dashed outline and "(crowd)" after their name.
        dashed: ``(N,)`` booleans; these boxes get a dashed outline (e.g. suggested boxes beside labels).
        thickness: line width in pixels; default about 1/400 of the long side, at least 2.
        font_size: label font size in pixels; default 1/40 of the long side, at least 10.

    Returns:
        A PIL RGB image of the same size as the input. A label sits on a filled box of the class
        color just above its box, or inside the box when there is no room above; it is kept inside
        the image, and its text is black or white, whichever reads better on the color.
    """
    img = _to_pil(image)
    width, height = img.size
    boxes_np = _as_numpy(boxes)
    boxes_np = np.zeros((0, 4), np.float32) if boxes_np is None else boxes_np.astype(np.float32).reshape(-1, 4)
    n = len(boxes_np)
    labels_np, scores_np, crowd_np, dashed_np = _as_numpy(labels), _as_numpy(scores), _as_numpy(crowd), _as_numpy(dashed)
    for name, values in (("labels", labels_np), ("scores", scores_np), ("crowd", crowd_np), ("dashed", dashed_np)):
        if values is not None and values.size != n:
            raise ValueError(f"draw: {n} boxes but {values.size} {name}")

    long_side = max(width, height)
    thickness = thickness or max(2, round(long_side / 400))
    font_size = font_size or max(10, round(long_side / 40))
    font = _font(font_size)
    canvas = ImageDraw.Draw(img)

    # Low scores first, so the most confident boxes and their labels end up on top.
    order = np.argsort(scores_np.reshape(-1), kind="stable") if scores_np is not None else np.arange(n)
    placed = []
    for i in order:
        label = None if labels_np is None else int(labels_np.reshape(-1)[i])
        is_crowd = bool(crowd_np.reshape(-1)[i]) if crowd_np is not None else False
        color = class_color(label)
        # xyxy box edges are pixel boundaries; the outline is drawn on the pixels just inside them.
        x0, y0, x1, y1 = boxes_np[i]
        x0, y0 = int(np.clip(round(float(x0)), 0, width - 1)), int(np.clip(round(float(y0)), 0, height - 1))
        x1, y1 = int(np.clip(round(float(x1)) - 1, x0, width - 1)), int(np.clip(round(float(y1)) - 1, y0, height - 1))
        if is_crowd or (dashed_np is not None and bool(dashed_np.reshape(-1)[i])):
            _dashed_rectangle(canvas, (x0, y0, x1, y1), color, thickness)
        else:
            canvas.rectangle((x0, y0, x1, y1), outline=color, width=thickness)

        parts = []
        if label is not None:
            known = class_names is not None and 0 <= label < len(class_names)
            parts.append(class_names[label] if known else str(label))
        if is_crowd:
            parts.append("(crowd)")
        if scores_np is not None:
            parts.append(f"{float(scores_np.reshape(-1)[i]):.2f}")
        if parts:
            placed.append((" ".join(parts), color, x0, y0))

    # Labels after all outlines, so no outline crosses a label.
    pad = max(1, round(font_size * 0.15))  # margin around the text inside its background
    for text, color, x0, y0 in placed:
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(x0, 0), max(width - box_w, 0))
        ty = y0 - box_h if y0 - box_h >= 0 else y0  # above the box, or inside it at the top edge
        ty = min(ty, max(height - box_h, 0))
        canvas.rectangle((tx, ty, tx + box_w - 1, ty + box_h - 1), fill=color)
        canvas.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return img


def drawing_suffix(source: str | Path, format: str = "auto") -> str:
    """The suffix a drawing of the image file ``source`` is saved with: ``format`` ``"png"`` or
    ``"jpg"``, or ``"auto"``: ``.jpg`` for a JPEG input (a PNG of a photo is several times its JPEG:
    coco128's 6.4 MB of JPEGs drew as 35 MB of PNGs), ``.png`` for anything else (lossless stays
    lossless)."""
    if format not in DRAW_FORMATS:
        raise ConfigError(f"unknown drawing format {format!r}; choose one of: {', '.join(DRAW_FORMATS)}")
    if format == "auto":
        return ".jpg" if Path(source).suffix.lower() in _JPEG_SUFFIXES else ".png"
    return f".{format}"


def save_drawing(image: Image.Image, path: str | Path) -> None:
    """Save a drawing as its suffix says: JPEG (quality 90) or PNG."""
    if Path(path).suffix.lower() in _JPEG_SUFFIXES:
        image.convert("RGB").save(path, quality=_JPEG_QUALITY)
    else:
        image.save(path)


def contact_sheet(tiles: list[tuple[str, Image.Image]]) -> Image.Image:
    """Thumbnails on a grid of ``_GRID_CELL`` squares, 4 per row, each captioned with its file stem."""
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    font = _font(14)
    caption_h, gap = 20, 4
    sheet_size = (cols * (_GRID_CELL + gap) + gap, rows * (_GRID_CELL + caption_h + gap) + gap)
    sheet = Image.new("RGB", sheet_size, (32, 32, 32))
    canvas = ImageDraw.Draw(sheet)
    for k, (stem, tile) in enumerate(tiles):
        x = gap + (k % cols) * (_GRID_CELL + gap)
        y = gap + (k // cols) * (_GRID_CELL + caption_h + gap)
        sheet.paste(tile, (x + (_GRID_CELL - tile.width) // 2, y + (_GRID_CELL - tile.height) // 2))
        caption = stem if len(stem) <= 36 else stem[:33] + "..."
        canvas.text((x + 2, y + _GRID_CELL + 2), caption, fill=(230, 230, 230), font=font)
    return sheet


def run_show(path: str | Path, out: str | Path, n: int = 16, split: str = "train", seed: int = 0, format: str = "auto") -> int:
    """Render the ground truth of ``n`` randomly chosen images (``plaindet data show``).

    Writes ``OUT/<image stem>.jpg`` or ``.png`` per image (``format``, see :func:`drawing_suffix`;
    ``<stem>_<image_id>`` when two images share a stem) and ``OUT/grid.png``, a contact sheet of
    the first 16. Crowd regions are drawn with a dashed
    outline in their class color, labeled "<name> (crowd)". The choice of images is a pure function
    of ``seed``.

    Returns the exit code 0. Raises :class:`~plaindet.errors.DatasetError` when the dataset cannot be
    loaded, has no image, or none of the chosen images can be read.
    """
    from plaindet.data import load_dataset

    out = Path(out)
    drawing_suffix("", format)  # an unknown format fails before anything is read or written
    dataset = load_dataset(path, split=split)
    if len(dataset) == 0:
        raise DatasetError(f"the {split!r} split of {path} has no images")

    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dataset), size=min(max(n, 0), len(dataset)), replace=False).tolist())
    out.mkdir(parents=True, exist_ok=True)
    used_names = {"grid"}
    tiles, failed, crowd_regions = [], 0, 0
    for index in chosen:
        sample = dataset[index]
        try:
            pixels = Image.fromarray(read_image(sample.image_path))
        except DatasetError as e:  # one bad image should not stop the others
            print(f"warning: skipped {e}", file=sys.stderr)
            failed += 1
            continue
        stem = sample.image_path.stem
        name = stem if stem not in used_names else f"{stem}_{sample.image_id}"
        used_names.add(name)
        names, crowd = dataset.class_names, sample.iscrowd
        crowd_regions += int(crowd.sum())
        save_drawing(draw(pixels, sample.boxes, sample.labels, class_names=names, crowd=crowd), out / f"{name}{drawing_suffix(sample.image_path, format)}")

        if len(tiles) < _GRID_MAX:
            # Draw the thumbnail at its own size, so its labels are readable on the sheet.
            scale = _GRID_CELL / max(pixels.size)
            size = (max(1, round(pixels.width * scale)), max(1, round(pixels.height * scale)))
            thumb = pixels.resize(size, Image.Resampling.LANCZOS)
            box_scale = np.array([size[0] / pixels.width, size[1] / pixels.height] * 2, dtype=np.float32)
            tiles.append((name, draw(thumb, sample.boxes * box_scale, sample.labels, class_names=names, crowd=crowd)))

    if not tiles:
        raise DatasetError(f"none of the {len(chosen)} chosen images of {path} could be read")
    contact_sheet(tiles).save(out / "grid.png")
    skipped = f", {failed} unreadable skipped" if failed else ""
    crowd_note = f" {crowd_regions} crowd regions are drawn dashed." if crowd_regions else ""
    print(
        f"Wrote {len(chosen) - failed} labeled images of the {split!r} split ({len(dataset)} images{skipped}) "
        f"to {out}/<stem>{'.jpg or .png' if format == 'auto' else '.' + format}, and a contact sheet to {out / 'grid.png'}.{crowd_note}"
    )
    return 0
