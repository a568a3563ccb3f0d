"""Where the memory of ``quantize_onnx(..., "int8-static")`` goes: each phase in a fresh process, its
peak resident set size (``VmHWM``: the process's own, not inherited like ``ru_maxrss``) and time.

    python benchmarks/bench_quantize_memory.py [--model plaindet-b] [--size 640] [--images 1 8] [--threads 2]

A random-weights model is exported at ``--size`` (weights do not change the graph or the memory).
Phases, each a fresh Python process, so each peak is its own:

- ``load``: import onnxruntime's quantization and load the exported file (the floor every phase has);
- ``pre-process``: ONNX Runtime's ``quant_pre_process`` (shape inference, basic graph optimizations),
  which ``quantize_onnx`` runs first;
- ``int8-static, N images``: the whole ``quantize_onnx`` call with ``N`` calibration images
  (random pixels: the memory does not depend on what they show).

Prints a table: phase, peak RSS MB, seconds, and the ONNX file's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _phase(name: str, onnx_path: str, images: int, threads: int, extra: dict) -> dict:
    """Run one phase in this process and return its peak RSS (MB) and seconds."""
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    if name == "load":
        import onnx
        import onnxruntime.quantization  # noqa: F401

        onnx.load(onnx_path)
    elif name == "pre-process":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory() as tmp:
            quant_pre_process(onnx_path, str(Path(tmp) / "prepared.onnx"), skip_symbolic_shape=False)
    elif name == "int8-static":
        import numpy as np

        from plaindet.export.quantize import quantize_onnx

        rng = np.random.default_rng(0)
        calib = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(images)]
        with tempfile.TemporaryDirectory() as tmp:
            quantize_onnx(onnx_path, Path(tmp) / "int8.onnx", "int8-static", calib_images=calib, extra_options=extra)
    else:
        raise ValueError(name)
    seconds = time.perf_counter() - start
    return {"peak_mb": _vm_hwm_mb(), "seconds": seconds}


def _vm_hwm_mb() -> float:
    """This process's peak resident set size, MB (Linux; ``ru_maxrss`` would include the parent's
    memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-b")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", default="{}", help="JSON extra_options for quantize_onnx, e.g. '{\"CalibStridedMinMax\": 1}'")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, path, images = args.worker
        print(json.dumps(_phase(name, path, int(images), args.threads, json.loads(args.extra))))
        return

    import torch

    import plaindet
    from plaindet.export.onnx import export_onnx

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        export_onnx(plaindet.create_model(args.model), path, image_size=args.size)
        size_mb = path.stat().st_size / 2**20
        phases = [("load", 0), ("pre-process", 0), *(("int8-static", n) for n in args.images)]
        rows = []
        for name, images in phases:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--extra", args.extra, "--worker", name, str(path), str(images)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            label = f"int8-static, {images} images" if name == "int8-static" else name
            rows.append((label, result["peak_mb"], result["seconds"]))
            print(f"{label}: peak RSS {result['peak_mb']:.0f} MB, {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(f"\n{args.model} at {args.size} px, fp32 ONNX file {size_mb:.0f} MB, {args.threads} threads, extra_options {args.extra}")
    print("| phase (fresh process) | peak RSS MB | seconds |")
    print("|---|---:|---:|")
    for label, peak, seconds in rows:
        print(f"| {label} | {peak:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
