"""Latency, throughput and peak memory of one model across backends: ``plaindet benchmark``.

Every backend runs in a fresh Python process (a *worker*, this module run with ``--worker``), so
each one's peak memory is its own: the worker's peak resident set size (``VmHWM``, see
:func:`peak_rss_mb`) after importing its backend, loading the model and running it. It is the
whole process, interpreter and libraries included (an ONNX Runtime worker imports onnxruntime and
numpy, never torch), which is what a deployment pays. The parent process only exports and
quantizes the ONNX files.

Latency is wall time per batch of ``runs`` timed calls after ``warmup`` untimed ones, on random
``uint8`` images of ``size x size``: the whole graph for plaindet (normalization, network, top-k);
``forward`` on normalized float pixels for the transformers reference models (their
post-processing is a separate call, and cheap). Random weights do not change the cost of these
models, so latency needs no trained checkpoint.

How far each row is from what the machine can do: its GFLOPs (:func:`plaindet.flops.flop_counter`, 2 per
multiply-add; an ONNX row has the PyTorch model's), the GFLOP/s it achieves, and their share of the
machine's matrix-multiply peak at that precision, measured in the same run by a worker of its own
(:func:`matmul_peak`: the best of square fp32 and bf16 products with the same threads).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchmarkRow", "format_table", "matmul_peak", "reference_model", "run_benchmark", "time_calls"]


@dataclass
class BenchmarkRow:
    """One measured backend: ``times`` in seconds per batch, ``peak_rss_mb`` of its worker process,
    ``size_mb`` of the ONNX file or of the PyTorch weights in memory."""

    model: str
    backend: str
    precision: str
    times: list[float]
    batch: int
    peak_rss_mb: float
    size_mb: float
    note: str = ""
    flops: float | None = None  # per batch
    peak_gflops: float | None = None  # the machine's matmul peak at this precision, measured in the same run

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def p90_ms(self) -> float:
        t = sorted(self.times)
        return t[min(len(t) - 1, round(0.9 * (len(t) - 1)))] * 1000

    @property
    def images_per_s(self) -> float:
        return self.batch / statistics.median(self.times)

    @property
    def gflops_per_s(self) -> float | None:
        return None if self.flops is None else self.flops / 1e9 / statistics.median(self.times)

    @property
    def share_of_peak(self) -> float | None:
        achieved = self.gflops_per_s
        return None if achieved is None or not self.peak_gflops else achieved / self.peak_gflops


@dataclass
class WorkerSpec:
    """What one worker process measures (JSON on its command line)."""

    backend: str  # "torch", "ort", "hf", or "peak" (the matmul peak)
    precision: str  # "fp32", "bf16" or an ONNX file's precision
    size: int
    batch: int
    threads: int
    runs: int
    warmup: int
    model: str = ""  # a registered plaindet model, or "detr-r50" / "rtdetr-r18" for "hf"
    weights: str = ""  # a plaindet checkpoint (instead of model)
    onnx: str = ""  # an ONNX file for "ort"
    extra: dict[str, Any] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """This process's peak resident set size.

    On Linux it is ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process image:
    ``getrusage``'s ``ru_maxrss`` would report the parent's peak instead whenever that is larger,
    because Linux carries the forked parent's high-water mark across ``exec`` into the child's
    ``ru_maxrss``. Elsewhere it falls back to ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def time_calls(fn, runs: int, warmup: int) -> list[float]:
    """Wall seconds of each of ``runs`` calls of ``fn()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def reference_model(name: str):
    """A transformers reference detector with random weights, built from its config alone (no timm,
    no download): ``detr-r50`` (``DetrForObjectDetection``, ResNet-50) or ``rtdetr-r18``
    (``RTDetrForObjectDetection`` with the dims of RT-DETR-R18: ResNet-18-vd, hidden expansion 0.5,
    3 decoder layers) or ``yolos-tiny`` (``YolosForObjectDetection`` with hustvl/yolos-tiny's dims:
    a DeiT-Ti, 100 detection tokens, position embeddings of an 800x1333 grid resized to the input). 80 classes."""
    from transformers import (
        DetrConfig,
        DetrForObjectDetection,
        ResNetConfig,
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrResNetConfig,
        YolosConfig,
        YolosForObjectDetection,
    )

    if name == "detr-r50":
        config = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), use_timm_backbone=False, num_labels=80)
        return DetrForObjectDetection(config).eval()
    if name == "rtdetr-r18":
        backbone = RTDetrResNetConfig(
            depths=[2, 2, 2, 2],
            layer_type="basic",
            hidden_sizes=[64, 128, 256, 512],
            embedding_size=64,
            out_features=["stage2", "stage3", "stage4"],
        )
        config = RTDetrConfig(backbone_config=backbone, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3, num_labels=80)
        return RTDetrForObjectDetection(config).eval()
    if name == "yolos-tiny":
        config = YolosConfig(
            hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=[800, 1333],
            num_detection_tokens=100, use_mid_position_embeddings=False, num_labels=80,
        )  # fmt: skip
        return YolosForObjectDetection(config).eval()
    raise ValueError(f"unknown reference model {name!r}: detr-r50, rtdetr-r18 or yolos-tiny")


def matmul_peak(
    threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), runs: int = 5, max_seconds: float = 0.1, precisions: tuple[str, ...] = ("fp32", "bf16")
) -> dict[str, float]:
    """This machine's matrix-multiply throughput with ``threads`` intra-op threads, in GFLOP/s:
    ``{"fp32": ..., "bf16": ...}``, the best median over square products of ``sizes`` (2 n^3 FLOPs
    each). What a model's GFLOP/s is compared with: a model cannot run its products faster.

    Sizes are tried smallest first, and a larger one only while a product takes under
    ``max_seconds``: on a CPU without native bf16 (emulated at a few GFLOP/s) one 2048-wide bf16
    product takes 15 s, and the measured rate no longer grows with the size there. ``precisions``:
    which of the two to measure (the dict has those keys only)."""
    import torch

    torch.set_num_threads(threads)
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in precisions:
            continue
        best = 0.0
        for n in sorted(sizes):
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            seconds = statistics.median(time_calls(lambda: torch.mm(a, b), runs, warmup=2))
            best = max(best, 2 * n**3 / seconds / 1e9)
            if seconds > max_seconds:
                break
        peak[name] = best
    return peak


def _flops(call) -> int:
    """FLOPs of one ``call()`` (:func:`plaindet.flops.flop_counter`: 2 per multiply-add)."""
    from plaindet.flops import flop_counter

    with flop_counter() as counter:
        call()
    return counter.get_total_flops()


def _worker(spec: WorkerSpec) -> dict[str, Any]:
    """Run inside the worker process: import the backend, build the model, time it."""
    if spec.backend == "peak":
        return matmul_peak(spec.threads)
    if spec.backend == "ort":
        import numpy as np

        from plaindet.export.ort import OnnxDetector

        detector = OnnxDetector(spec.onnx, threads=spec.threads)
        h, w = detector.input_size
        images = np.random.default_rng(0).integers(0, 256, (spec.batch, 3, h, w), dtype=np.uint8)
        times = time_calls(lambda: detector(images), spec.runs, spec.warmup)
        return {"times": times, "peak_rss_mb": peak_rss_mb()}

    import torch

    torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    if spec.backend == "hf":
        model = reference_model(spec.model)
        images = torch.randn(spec.batch, 3, spec.size, spec.size)

        def call():
            return model(pixel_values=images)

    else:
        import logging

        import plaindet

        logging.getLogger("plaindet").setLevel(logging.ERROR)  # random-weight warnings are expected
        model = plaindet.load(spec.weights) if spec.weights else plaindet.create_model(spec.model)
        model.eval()
        side = -(-spec.size // model.size_divisor) * model.size_divisor
        images = torch.randint(0, 256, (spec.batch, 3, side, side), dtype=torch.uint8)

        def call():
            return model.postprocess(model(images))

    model.requires_grad_(False)  # inference only (and the FLOP counter's module hooks need no autograd)
    weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    dtype = torch.bfloat16 if spec.precision == "bf16" else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        times = time_calls(call, spec.runs, spec.warmup)
        flops = _flops(call)  # after the timing: counting slows the call down
    return {"times": times, "peak_rss_mb": peak_rss_mb(), "weights_mb": weights_mb, "flops": flops}


def _run_worker(spec: WorkerSpec) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads))
    proc = subprocess.run(
        [sys.executable, "-m", "plaindet.export.benchmark", "--worker", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        env=env,
        check=False,  # checked below, to show the worker's stderr
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec.backend}/{spec.precision} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _file_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 2**20


def torch_precisions(bf16: str, native: bool, log) -> list[str]:
    """The PyTorch precisions :func:`run_benchmark` measures for its ``bf16`` setting on a CPU that
    does (``native``) or does not multiply bf16 in hardware; ``log`` says why bf16 is left out when
    ``"auto"`` leaves it out."""
    if bf16 not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {bf16!r}")
    if bf16 == "auto" and not native:
        log("bf16: not measured, this CPU has no native bf16 (no AVX512-BF16 or AMX) and emulates it many times slower than fp32 (--bf16 on measures it)")
    return ["fp32"] + (["bf16"] if bf16 == "on" or (bf16 == "auto" and native) else [])


def run_benchmark(
    *,
    model: str | None = None,
    weights: str | None = None,
    size: int = 640,
    batch: int = 1,
    threads: int = 2,
    runs: int = 10,
    warmup: int = 2,
    compare: bool = False,
    calib_data: str | None = None,
    calib_images: int = 32,
    workdir: str | os.PathLike | None = None,
    bf16: str = "auto",
    log=print,
) -> list[BenchmarkRow]:
    """Measure PyTorch fp32/bf16 and ONNX Runtime fp32/int8 (and with ``compare`` the transformers
    references) for a registered ``model`` or a checkpoint ``weights``; returns one row per backend.

    int8-static is calibrated on ``calib_images`` images of ``calib_data`` when given; otherwise on
    random images, which gives its speed but not its accuracy (the row says so). ``workdir`` keeps
    the ONNX files (default: a temporary folder).

    ``bf16``: ``"auto"`` measures the PyTorch bf16 rows only where this CPU multiplies bf16 natively
    (AVX512-BF16 or AMX); elsewhere bf16 is emulated, many times slower than fp32, and one model's
    rows take minutes, so they are left out and ``log`` says why. ``"on"`` measures them anyway (the
    note says "emulated"), ``"off"`` never.
    """
    if (model is None) == (weights is None):
        raise ValueError("give either a model name or a checkpoint (weights), not both")
    import torch

    from plaindet.engine.train import native_bf16

    native = native_bf16(torch.device("cpu"))
    said: list[str] = []  # said once the model has loaded (a bad model name is the one line of a failure)
    precisions = torch_precisions(bf16, native, said.append)  # refuses a bad setting before the slow work
    common = dict(size=size, batch=batch, threads=threads, runs=runs, warmup=warmup)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)

        import logging

        import plaindet

        logging.getLogger("plaindet").setLevel(logging.ERROR)
        net = plaindet.load(weights) if weights else plaindet.create_model(model)
        label = model or net.config.name  # the model, not the file name (format_table names the file)
        fp32, dynamic, static, note = _export_variants(net, label, folder, size, batch, calib_data, calib_images, log)
        del net

        for line in said:
            log(line)
        # Without AVX512-BF16 or AMX, bf16 is emulated: a row measured all the same says so.
        bf16_note = "autocast; weights in memory" + ("" if native else "; emulated: no native bf16 on this CPU")
        specs = [
            (WorkerSpec("torch", precision, model=model or "", weights=weights or "", **common), "weights in memory" if precision == "fp32" else bf16_note)
            for precision in precisions
        ]
        specs += [
            (WorkerSpec("ort", "fp32", onnx=str(fp32), **common), "ONNX file"),
            (WorkerSpec("ort", "int8-dynamic", onnx=str(dynamic), **common), "ONNX file"),
            (WorkerSpec("ort", "int8-static", onnx=str(static), **common), f"ONNX file; {note}"),
        ]
        if compare:
            for ref in ("detr-r50", "rtdetr-r18"):
                for precision in precisions:
                    specs.append((WorkerSpec("hf", precision, model=ref, **common), "transformers, random init"))
        return _measure_rows(specs, label, batch, common, log)


def _export_variants(net, label: str, folder: Path, size: int, batch: int, calib_data: str | None, calib_images: int, log) -> tuple[Path, Path, Path, str]:
    """:func:`run_benchmark`'s first phase: ``net`` as fp32, int8-dynamic and int8-static ONNX files in
    ``folder``, and the note saying what int8-static was calibrated on."""
    import numpy as np

    from plaindet.export.onnx import export_onnx
    from plaindet.export.quantize import calibration_images, quantize_onnx

    log(f"exporting {label} to ONNX at {size} px ...")
    fp32 = export_onnx(net, folder / "fp32.onnx", image_size=size, dynamic_batch=batch > 1)
    log("quantizing: int8-dynamic ...")
    dynamic = quantize_onnx(fp32, folder / "int8-dynamic.onnx", "int8-dynamic")
    if calib_data:
        calib = calibration_images(calib_data, calib_images)
        note = f"calibrated on {len(calib)} images of {calib_data}"
    else:
        rng = np.random.default_rng(0)
        calib = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
        note = "random calibration: speed only"
    log(f"quantizing: int8-static ({note}) ...")
    static = quantize_onnx(fp32, folder / "int8-static.onnx", "int8-static", calib_images=calib)
    return fp32, dynamic, static, note


def _measure_rows(specs: list[tuple[WorkerSpec, str]], label: str, batch: int, common: dict, log) -> list[BenchmarkRow]:
    """:func:`run_benchmark`'s second phase: the matmul peak, then each spec in its own process, as rows."""
    log("measuring the matmul peak ...")
    peak = _run_worker(WorkerSpec("peak", "", **common))
    rows: list[BenchmarkRow] = []
    model_flops = None  # the PyTorch model's, for the ONNX rows of the same graph
    for spec, row_note in specs:
        log(f"measuring {spec.model or label} {spec.backend} {spec.precision} ...")
        result = _run_worker(spec)
        name = spec.model if spec.backend == "hf" else label
        backend = "onnxruntime" if spec.backend == "ort" else "pytorch"
        size_mb = _file_mb(spec.onnx) if spec.backend == "ort" else result["weights_mb"]
        if spec.backend == "torch" and spec.precision == "fp32":
            model_flops = result["flops"]
        flops = model_flops if spec.backend == "ort" else result["flops"]
        rows.append(
            BenchmarkRow(
                name, backend, spec.precision, result["times"], batch, result["peak_rss_mb"], size_mb, row_note,
                flops=flops, peak_gflops=peak.get(spec.precision),
            )
        )  # fmt: skip
    return rows


def format_table(rows: list[BenchmarkRow], *, size: int, threads: int, weights: str | os.PathLike | None = None) -> str:
    """The rows as a plain-text table; ``vs first`` is each row's median latency over the first row's.
    The model column is as wide as its longest name; a last line says what ``size MB`` measures.
    ``weights``: the checkpoint benchmarked, named (with its size on disk) under the title.

    With rows of other models (``--compare``), a second table gives their latency and peak memory
    over the first model's at the same precision.
    """
    base = rows[0]
    width = max(14, *(len(r.model) for r in rows))
    header = (
        f"{'model':<{width}} {'backend':<12} {'precision':<13} {'size MB':>8} {'median ms':>10} {'p90 ms':>8} "
        f"{'img/s':>7} {'peak RSS MB':>12} {'vs first':>9} {'GFLOPs':>7} {'GFLOP/s':>8} {'of peak':>8}  note"
    )
    peaks = {r.precision: r.peak_gflops for r in rows if r.peak_gflops}
    # Three significant digits: an emulated bf16 peak is a few GFLOP/s, where whole numbers lose the share.
    measured_peak = ", ".join(f"{p} {g:.0f} GFLOP/s" if g >= 100 else f"{p} {g:.3g} GFLOP/s" for p, g in peaks.items())
    lines = [f"batch {base.batch}, {size}x{size}, {threads} threads; each row measured in a fresh process", header]
    if measured_peak:
        lines.insert(1, f"matmul peak in this run: {measured_peak}; GFLOPs: 2 per multiply-add, per batch")
    if weights is not None:
        lines.insert(1, f"weights: {weights} ({_file_mb(str(weights)):.1f} MB on disk), model {base.model}")
    for r in rows:
        flops = f"{r.flops / 1e9:>7.1f} {r.gflops_per_s:>8.1f}" if r.flops is not None else f"{'-':>7} {'-':>8}"
        share = f"{100 * r.share_of_peak:>7.0f}%" if r.share_of_peak is not None else f"{'-':>8}"
        lines.append(
            f"{r.model:<{width}} {r.backend:<12} {r.precision:<13} {r.size_mb:>8.1f} {r.median_ms:>10.0f} {r.p90_ms:>8.0f} "
            f"{r.images_per_s:>7.2f} {r.peak_rss_mb:>12.0f} {r.median_ms / base.median_ms:>8.2f}x {flops} {share}  {r.note}"
        )
    ours = {r.precision: r for r in rows if r.model == base.model and r.backend == "pytorch"}
    others = [r for r in rows if r.model != base.model]
    if others:
        lines += ["", f"{'ratio to ' + base.model + ' (pytorch, same precision)':<48} {'latency':>8} {'peak RSS':>9} {'size':>6}"]
        for r in others:
            mine = ours.get(r.precision)
            if mine is not None:
                lines.append(
                    f"{r.model + ' ' + r.precision:<48} {r.median_ms / mine.median_ms:>7.2f}x {r.peak_rss_mb / mine.peak_rss_mb:>8.2f}x "
                    f"{r.size_mb / mine.size_mb:>5.2f}x"
                )
    lines.append(
        "size MB: onnxruntime rows the .onnx file on disk; pytorch rows the model's weights in memory (a training "
        "checkpoint on disk is larger: it also holds the EMA and the optimizer's state)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(WorkerSpec(**json.loads(sys.argv[2])))))
    else:
        sys.exit("usage: plaindet benchmark --help (this module's --worker mode is internal)")
