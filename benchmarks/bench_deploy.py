"""The deploy table: each way to run a trained plaindet-s, with its file size, CPU latency and AP.

    python benchmarks/bench_deploy.py [--weights CKPT] [--train-size 256] [--size 640] [--threads 2]

Without ``--weights`` it first trains plaindet-s from random weights on the built-in shapes set: a
short run at ``--train-size``, stopped after ``--train-minutes`` (the machines are shared). Then, for PyTorch fp32 and
bf16 (autocast) and ONNX Runtime fp32, int8 static (calibrated on ``--calib-images`` training
images preprocessed like inference; also with the attention products left in float, and with
per-tensor weights), int8 dynamic and fp16:

- AP and its change from PyTorch fp32 on the shapes test split (no setting is chosen on it), at
  the size the model was trained at (the ONNX files for AP are exported at that size); every
  variant is scored through the same :func:`plaindet.detections.predict_dataset`;
- file size and latency at ``--size`` (batch 1, each backend in a fresh process, as
  ``plaindet benchmark`` does; the files are exported and calibrated again at that size).

It prints one table. The machine is shared and noisy: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

VARIANTS = {
    # name: (quantize mode or None for fp32, quantize_onnx keyword arguments)
    "fp32": (None, {}),
    "int8-static": ("int8-static", {}),
    "int8-static, attn float": ("int8-static", {"quantize_attention": False}),
    "int8-static, per-tensor": ("int8-static", {"per_channel": False}),
    "int8-dynamic": ("int8-dynamic", {}),
    "fp16": ("fp16", {}),
}


def train_model(out: Path, size: int, train_images: int, epochs: int, window: int, minutes: float) -> Path:
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    cfg = TrainConfig(
        model="plaindet-s",
        data="shapes",
        out=str(out / "run"),
        epochs=epochs,
        batch_size=8,
        image_size=size,
        # The demo's short-run recipe (see plaindet.demo.DemoSettings): constant rate after warmup,
        # windows that tile the patch grid, no crop/zoom-out.
        lr=1e-3,
        min_lr_ratio=1.0,
        warmup_steps=20,
        time_limit=minutes,  # the machine is shared: the run stops (evaluates, saves) after this many minutes
        model_overrides={"backbone": {"window_size": window}},
        augment={"crop": 0.0, "zoom_out": 0.0},
        shapes_train=train_images,
        shapes_val=200,
        shapes_test=200,
        shapes_dir=str(out / "shapes"),
    )
    start = time.time()
    best = train(cfg)
    print(f"trained plaindet-s on shapes at {size} px for {time.time() - start:.0f} s: {best}")
    return out / "run" / "best.safetensors"


def build_variants(model, folder: Path, size: int, calib: list, tag: str, variants: list[str]) -> dict[str, Path]:
    """The fp32 ONNX file at ``size`` and its ``variants``, in ``folder``."""
    from plaindet.export.onnx import export_onnx
    from plaindet.export.quantize import quantize_onnx

    fp32 = export_onnx(model, folder / f"{tag}-fp32.onnx", image_size=size)
    files = {"fp32": fp32}
    for name in variants:
        mode, kwargs = VARIANTS[name]
        if mode is not None:
            start = time.time()
            extra = {"calib_images": calib} if mode == "int8-static" else {}
            slug = name.replace(", ", "-").replace(" ", "-")
            files[name] = quantize_onnx(fp32, folder / f"{tag}-{slug}.onnx", mode, **extra, **kwargs)
            print(f"  {name} at {size} px: {time.time() - start:.0f} s")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a trained plaindet-s checkpoint (default: train one)")
    parser.add_argument("--out", default="runs/deploy")
    parser.add_argument("--train-size", type=int, default=256, help="training (and AP) image size")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-minutes", type=float, default=15.0, help="stop training after this many minutes")
    parser.add_argument("--window", type=int, default=8, help="window size when training: 8 tiles a 256 px input's 16x16 grid")
    parser.add_argument("--size", type=int, default=640, help="latency image size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calib-images", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    from plaindet.data import load_dataset
    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate_coco
    from plaindet.export.benchmark import WorkerSpec, _run_worker
    from plaindet.export.ort import OnnxDetector
    from plaindet.export.quantize import calibration_images
    from plaindet.models.factory import load_model

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights) if args.weights else train_model(out, args.train_size, args.train_images, args.epochs, args.window, args.train_minutes)
    model = load_model(weights).eval()
    shapes_root = out / "shapes"
    if not (shapes_root / "test").is_dir():
        from plaindet.data.shapes import ensure_shapes

        ensure_shapes(shapes_root, train=args.train_images, val=200, test=200, seed=0)
    test = load_dataset(shapes_root, split="test")
    calib_paths = calibration_images(shapes_root, args.calib_images, split="train")

    print(f"latency at {args.size} px, batch 1, {args.threads} threads ...")
    # Speed does not depend on what calibration saw: a few images keep this step short.
    large = build_variants(model, out, args.size, calib_paths[:16], f"lat{args.size}", args.variants)
    common = dict(size=args.size, batch=1, threads=args.threads, runs=args.runs, warmup=2)
    rows = []
    for precision in ("fp32", "bf16"):
        result = _run_worker(WorkerSpec("torch", precision, weights=str(weights), **common))
        rows.append((f"pytorch {precision}", result["weights_mb"], result))
    for name, path in large.items():
        result = _run_worker(WorkerSpec("ort", name, onnx=str(path), **common))
        rows.append((f"onnxruntime {name}", path.stat().st_size / 2**20, result))

    print(f"AP on {len(test)} shapes test images at {args.train_size} px ...")

    def test_ap(predictor) -> float:
        return evaluate_coco(test, predict_dataset(predictor, test, image_size=args.train_size)).stats["AP"]

    ap = {"pytorch fp32": test_ap(model)}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # predict's forward runs under the caller's autocast
        ap["pytorch bf16"] = test_ap(model)
    small = build_variants(model, out, args.train_size, calib_paths, f"ap{args.train_size}", args.variants)
    for name, path in small.items():
        ap[f"onnxruntime {name}"] = test_ap(OnnxDetector(path, threads=args.threads))
        print(f"  onnxruntime {name}: AP {ap[f'onnxruntime {name}']:.4f}")

    import statistics

    base_ap = ap["pytorch fp32"]
    ort_fp32 = statistics.median(next(r for n, _, r in rows if n == "onnxruntime fp32")["times"])
    print(
        f"\nplaindet-s ({weights}); AP: shapes test, {len(test)} images, {args.train_size} px; latency: "
        f"{args.size}x{args.size}, batch 1, {args.threads} threads, {args.runs} runs"
    )
    print(f"{'variant':<36} {'size MB':>8} {'median ms':>10} {'p90 ms':>8} {'vs ORT fp32':>12} {'peak RSS MB':>12} {'AP':>7} {'dAP':>8}")
    for name, size_mb, result in rows:
        t = sorted(result["times"])
        median, p90 = statistics.median(t), t[min(len(t) - 1, round(0.9 * (len(t) - 1)))]
        print(
            f"{name:<36} {size_mb:>8.1f} {median * 1000:>10.0f} {p90 * 1000:>8.0f} {ort_fp32 / median:>11.2f}x "
            f"{result['peak_rss_mb']:>12.0f} {ap[name]:>7.4f} {ap[name] - base_ap:>+8.4f}"
        )


if __name__ == "__main__":
    main()
