"""How far each exported ONNX graph is from PyTorch, at full model size and deployment resolution.

    python benchmarks/onnx_parity.py [--models plaindet-t plaindet-s plaindet-b detr-r50] [--size 640] [--images 4]

For each model (random weights, 80 classes, seed 0; a ``.safetensors`` path is loaded instead), it
exports the one-file graph (:func:`plaindet.export.export_onnx`, fixed batch 1), then runs the same
``uint8`` images through PyTorch (``postprocess(forward(x))``) and ONNX Runtime, one image at a time.
The images are real photos from ``--coco`` when that folder exists (coco128), else shapes images;
each is resized to the long side and zero-padded, as deployment does. Prints the max abs difference
of the scores and of the boxes (input pixels, and as a fraction of the input side), over all images,
with :func:`plaindet.export.onnx.onnx_parity`'s rules (boxes compared with their same-label,
same-score twin, so near-ties that swap ranks don't count as errors).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def load_images(coco: Path, count: int) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted(coco.glob("*.jpg"))[:count] if coco.is_dir() else []
    if paths:
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from plaindet.data.shapes import render

    return [render(i, split="valid")[0] for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["plaindet-t", "plaindet-s", "plaindet-b", "detr-r50"])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--coco", type=Path, default=Path("../shared/data/coco128/images/train2017"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("plaindet").setLevel(logging.ERROR)  # random-weight warnings are expected

    import plaindet
    from plaindet.detections import pad_batch, resize_long_side
    from plaindet.export.onnx import export_input_size, export_onnx, onnx_parity

    images = load_images(args.coco, args.images)
    source = "coco128" if args.coco.is_dir() else "shapes"
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = plaindet.load(name) if name.endswith(".safetensors") else plaindet.create_model(name)
        model.eval()
        side = export_input_size(args.size, model.size_divisor)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.time()
            path = export_onnx(model, Path(tmp) / "model.onnx", image_size=args.size)
            export_s = time.time() - t
            worst = {"boxes": 0.0, "scores": 0.0, "labels": 0.0, "boxes_compared": 0}
            for image in images:
                batch = torch.from_numpy(pad_batch([resize_long_side(image, args.size)], side, side))
                p = onnx_parity(model, path, batch)
                worst = {k: (worst[k] + p[k] if k == "boxes_compared" else max(worst[k], p[k])) for k in worst}
        rows.append((name, side, export_s, worst))
        print(f"{name}: {worst}", flush=True)

    print(f"\nONNX Runtime vs PyTorch, fp32, {len(images)} {source} images at {args.size} px (batch 1)")
    print("| model | input | export s | max abs diff scores | boxes (px) | boxes / input side | boxes compared | labels differing |")
    print("|---|---|---|---|---|---|---|---|")
    for name, side, secs, w in rows:
        print(
            f"| {name} | {side}x{side} | {secs:.0f} | {w['scores']:.1e} | {w['boxes']:.1e} | {w['boxes'] / side:.1e} | "
            f"{w['boxes_compared']} | {w['labels']:.1%} |"
        )


if __name__ == "__main__":
    main()
