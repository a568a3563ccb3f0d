"""What a predictor returns, and the numpy side of inference shared by every backend.

Reading any image input, resizing it, padding a batch and mapping boxes back to the original image
are done here, with numpy, Pillow and OpenCV only: :class:`plaindet.Detector` (PyTorch) and
:class:`plaindet.OnnxDetector` (ONNX Runtime, no torch) go through the same steps and return the same
:class:`Detections`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plaindet.data.images import read_image
from plaindet.data.resize import resize_image, resized_size, scale_boxes_to_original

__all__ = [
    "Detections",
    "as_image_list",
    "detections_for_image",
    "pad_batch",
    "predict_dataset",
    "predict_in_batches",
    "predict_many_in_batches",
    "resize_long_side",
    "to_rgb_array",
]


@dataclass
class Detections:
    """Predictions for one image.

    ``boxes``: ``float32 (N, 4)`` xyxy in pixels of the original image; ``scores``: ``float32 (N,)``
    in [0, 1], sorted high to low; ``labels``: ``int64 (N,)`` contiguous class indices;
    ``class_names``: ``N`` names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int, category_ids: list[int]) -> list[dict]:
        """COCO results of these detections: ``{image_id, category_id, bbox, score}`` per box, with
        ``category_id = category_ids[label]`` (the dataset's own ids, e.g. ``model.config.category_ids``)
        and ``bbox`` ``[x, y, w, h]`` in original-image pixels: what ``plaindet eval --predictions``
        and :func:`plaindet.engine.evaluate.evaluate_coco` read. The one place detections become COCO."""
        x1, y1, x2, y2 = self.boxes.astype(np.float64).T
        ids = np.asarray(category_ids, dtype=np.int64)[self.labels].tolist()
        xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).tolist()
        return [
            {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(ids, xywh, self.scores.astype(np.float64).tolist())
        ]

    def to_supervision(self):
        """These detections as the ``supervision`` library's ``sv.Detections`` (extra ``supervision``),
        the type its annotators, trackers and metrics take: ``xyxy float32 (N, 4)`` original-image
        pixels, ``confidence float32 (N,)``, ``class_id int (N,)`` (contiguous class indices) and
        ``data["class_name"]`` (``N`` names)."""
        from plaindet.errors import require_extra

        sv = require_extra("supervision", "supervision", "Detections.to_supervision()")
        return sv.Detections(
            xyxy=np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(self.scores, dtype=np.float32),
            class_id=np.asarray(self.labels, dtype=int),
            data={"class_name": np.array(self.class_names, dtype=str)},
        )


def _torch_tensor_type():
    # A torch tensor can only exist once torch is imported; looking it up keeps this module torch-free.
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else ()


def to_rgb_array(image: Any) -> np.ndarray:
    """One image as ``uint8 (H, W, 3)`` RGB.

    Accepts a path, a PIL image, a ``uint8``/float numpy array ``(H, W, 3)`` or ``(H, W)`` (float in
    [0, 1]), or a tensor ``(3, H, W)`` (``uint8``, or float in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, _torch_tensor_type()):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        from PIL import ImageOps

        arr = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}: pass a path, PIL image, array or tensor")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image arrays must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(np.rint(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is ``long_side``, exactly as evaluation does."""
    return resize_image(image, resized_size(image.shape[0], image.shape[1], long_side))


def as_image_list(images: Any) -> tuple[list[Any], bool]:
    """``(items, is_list)``: a list or tuple, or a ``(B, 3, H, W)`` tensor, is many images; anything else one."""
    if isinstance(images, _torch_tensor_type()) and images.ndim == 4:
        return list(images), True
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


def pad_batch(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """``uint8 (B, 3, height, width)``: each ``(h, w, 3)`` image at the top-left, zeros at the bottom and right.

    The model maps boxes in input pixels, so padding there (not centering) keeps them in the
    resized image's pixels.
    """
    batch = np.zeros((len(images), 3, height, width), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
    return batch


def detections_for_image(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float,
    resized_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    class_names: list[str],
) -> Detections:
    """One image's top-k output (``boxes (k, 4)`` in resized-image pixels, ``scores (k,)``, ``labels (k,)``)
    as :class:`Detections`: scores below ``threshold`` dropped, boxes in original pixels."""
    keep = scores >= threshold
    b = scale_boxes_to_original(boxes[keep], resized_hw, orig_hw)
    lab = labels[keep].astype(np.int64)
    return Detections(b, scores[keep].astype(np.float32), lab, [class_names[k] for k in lab])


def predict_in_batches(
    images: Any,
    run: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    image_size: int,
    batch_size: int,
    threshold: float,
    class_names: list[str],
) -> Detections | list[Detections]:
    """The ``predict`` loop every backend shares: read each image, resize its long side to
    ``image_size``, hand ``batch_size`` of them at a time to ``run`` (which pads them as its model
    needs and returns the top-k ``boxes (B, k, 4)`` in resized pixels, ``scores``, ``labels`` as numpy)
    and map the results back to original pixels. One :class:`Detections`, or a list for list input."""
    return predict_many_in_batches(images, lambda resized: [run(resized)], image_size=image_size, batch_size=batch_size, threshold=threshold, class_names=[class_names])[0]


def predict_many_in_batches(
    images: Any,
    run: Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    *,
    image_size: int,
    batch_size: int,
    threshold: float,
    class_names: list[list[str]],
) -> list[Detections | list[Detections]]:
    """:func:`predict_in_batches` for several models run on the same images at once (a
    :class:`~plaindet.models.group.DetectorGroup`): ``run`` returns one ``(boxes, scores, labels)`` per
    model, ``class_names`` holds each model's names, and the result is, per model, what
    :func:`predict_in_batches` returns for it."""
    items, is_list = as_image_list(images)
    results: list[list[Detections]] = [[] for _ in class_names]
    for start in range(0, len(items), batch_size):
        arrays = [to_rgb_array(im) for im in items[start : start + batch_size]]
        resized = [resize_long_side(a, image_size) for a in arrays]
        for per_model, names, (boxes, scores, labels) in zip(results, class_names, run(resized)):
            for i, (a, r) in enumerate(zip(arrays, resized)):
                per_model.append(
                    detections_for_image(boxes[i], scores[i], labels[i], threshold=threshold, resized_hw=r.shape[:2], orig_hw=a.shape[:2], class_names=names)
                )
    return [r if is_list else r[0] for r in results]


def predict_dataset(predictor: Any, dataset: Any, *, image_size: int | None = None, batch_size: int = 8) -> list[dict]:
    """COCO results of ``predictor`` on every image of ``dataset``, in the dataset's own ids.

    ``predictor``: anything with ``predict(images, threshold, image_size, batch_size)`` returning
    :class:`Detections` and a ``class_names`` list: a :class:`plaindet.Detector` (any registered
    model) or a :class:`plaindet.OnnxDetector`, so every backend is evaluated through the same steps.
    ``dataset``: a :class:`~plaindet.data.DetectionDataset`; classes are matched by index, so the
    predictor must have as many classes. No score threshold (COCO's AP needs the low-scored tail);
    at most the model's ``max_detections`` per image.
    """
    if len(predictor.class_names) != dataset.num_classes:
        raise ValueError(f"the model has {len(predictor.class_names)} classes but the dataset has {dataset.num_classes}")
    results: list[dict] = []
    samples = dataset.samples
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        detections = predictor.predict([s.image_path for s in chunk], threshold=0.0, image_size=image_size, batch_size=batch_size)
        for sample, det in zip(chunk, detections):
            results += det.to_coco(sample.image_id, dataset.category_ids)
    return results


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Files as given; folders replaced by their image files (by suffix, sorted, not recursive).

    Raises :class:`~plaindet.errors.NotFound` for a path that does not exist and
    :class:`~plaindet.errors.DatasetError` for a folder without images.
    """
    from plaindet.data.images import IMAGE_SUFFIXES
    from plaindet.errors import DatasetError, NotFound

    images: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(f"{path}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise NotFound(f"{path}: no such file or folder")
    return images


def predict_to_folder(
    predictor: Any,
    inputs: list[str | Path],
    out: str | Path,
    *,
    threshold: float,
    image_size: int | None = None,
    batch_size: int = 8,
    format: str = "auto",
) -> tuple[int, int]:
    """``plaindet predict``: detect objects in image files and folders (:func:`image_files`), draw them
    and write COCO results. Returns ``(detections, images)``.

    Writes ``OUT/<image stem>.jpg`` (or ``.png``: ``format``, see :func:`plaindet.viz.drawing_suffix`;
    JPEG inputs are drawn as JPEG by default) with the boxes drawn, ``OUT/predictions.json`` (COCO results
    through :meth:`Detections.to_coco`, ``category_id`` from the model's category ids, ``bbox``
    ``[x, y, w, h]`` in original pixels) and ``OUT/images.json``, a COCO-style ``images`` list giving
    each ``image_id`` its file, size and drawing (``{id, file_name, width, height, drawn}``). Ids
    are 0, 1, 2, ... in the order the images were given, folders expanded in sorted order; a
    repeated file stem gets its id appended to the drawing's name. ``predictor``: a
    :class:`plaindet.Detector` or :class:`plaindet.OnnxDetector`.
    """
    import json

    from plaindet.viz import draw, drawing_suffix, save_drawing

    drawing_suffix("", format)  # an unknown format fails before anything runs
    paths = image_files(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    category_ids = predictor.category_ids
    results: list[dict] = []
    entries: list[dict] = []
    used_stems: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        detections = predictor.predict(chunk, threshold=threshold, image_size=image_size, batch_size=batch_size)
        for image_id, (path, det) in enumerate(zip(chunk, detections), start=start):
            drawn = draw(path, det.boxes, det.labels, det.scores, class_names=predictor.class_names)
            stem = path.stem if path.stem not in used_stems else f"{path.stem}_{image_id}"
            used_stems.add(stem)
            name = stem + drawing_suffix(path, format)
            save_drawing(drawn, out / name)
            entries.append({"id": image_id, "file_name": str(path), "width": drawn.width, "height": drawn.height, "drawn": name})
            results += det.to_coco(image_id, category_ids)
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(entries, indent=1))
    return len(results), len(paths)
