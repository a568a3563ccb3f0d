"""Smaller and faster variants of an exported ONNX file: int8 (static or dynamic) and fp16.

- ``int8-static``: post-training static quantization in ONNX Runtime's QDQ format, calibrated on
  real training images preprocessed exactly as at inference (resize the long side, pad at the
  bottom/right: :class:`ImageCalibrationReader`). Weights int8 per output channel, activations
  uint8 (the u8 x s8 kernels that use AVX512-VNNI / AVX-VNNI on x86). Quantized: every ``MatMul``
  (linear layers and the attention products) and ``Conv``/``ConvTranspose``. Kept in float:
  normalization, softmax, GELU, the prediction layers (the last ``Conv``/``MatMul`` before each
  graph output, :func:`output_layers`: class logits and box deltas, whose exact values rank the
  detections) and the post-processing (exp, top-k, gather). ``MatMul`` outputs are not
  re-quantized, so ONNX Runtime runs them as ``MatMulIntegerToFloat`` and the softmax between the
  two attention products stays float (a quantized softmax input becomes ``QLinearSoftmax``, three
  times slower than the float one here); conv outputs are, so convs run as ``QLinearConv``.
  On plaindet-s at 640 px (2 threads, AVX512-VNNI) this measured 1.7-1.8x faster than onnxruntime
  fp32 with no AP change (``benchmarks/bench_deploy.py``); leaving the attention in float was as
  fast where windows tile the patch grid and slower where they are padded and masked.
- ``int8-dynamic``: weights of the ``MatMul`` ops quantized ahead of time, activations quantized at
  run time per tensor; needs no data. Convs stay float (ONNX Runtime's dynamic ``ConvInteger`` is
  slower than the float conv on CPU).
- ``fp16``: weights and compute in float16, inputs and outputs unchanged (``keep_io_types``); the
  prediction layers and the post-processing stay float32 (:func:`prediction_nodes`: box decoding
  multiplies ``exp`` by the stride, past float16's range). On CPU, ONNX Runtime has few fp16
  kernels and inserts casts around the rest: the variant is for GPUs and halves the file; it does
  not speed up a CPU.

Weights use 7 of their 8 bits (``reduce_range``, on by default): on an x86 CPU without VNNI, ONNX
Runtime's u8 x s8 kernels add pairs of products in 16-bit registers that saturate at full-range
weights. Measured on a 2-core AVX2 EPYC (no VNNI), an int8-static plaindet-t moved its boxes by up
to 6.8 px (median 1.07) of 128 against fp32 with full-range weights, and by up to 0.86 px (median
0.17) with 7-bit weights, as on VNNI machines with 8 (1.0 / 0.18). A file is made once and run
on whichever CPU serves it, so the default is the range that is safe on all of them.

bfloat16: ONNX Runtime's CPU provider (1.31) has no bf16 kernels for the ops these models need
(MatMul, Conv, Add, Softmax, Gelu fail to load; only Cast and LayerNormalization take bf16), so there
is no bf16 ONNX variant; the bf16 path on CPU is PyTorch's ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (see :mod:`plaindet.export.benchmark`).

Every variant keeps the fp32 file's inputs, outputs and metadata (``precision`` says which it is),
so :class:`plaindet.OnnxDetector` runs them all.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plaindet.errors import DatasetError, require_extra
from plaindet.weights import atomic_write

MODES = ("int8-static", "int8-dynamic", "fp16")
# The ops whose inputs are quantized in int8-static; everything else stays float.
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "ConvTranspose")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


class ImageCalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over images, preprocessed exactly as at inference.

    Args:
        images: image paths or ``uint8 (H, W, 3)`` arrays (anything :func:`plaindet.detections.to_rgb_array` reads).
        input_name: the model's input name.
        image_size: long side the images are resized to.
        input_size: ``(H, W)`` of the model input; images are padded at the bottom/right to it.
        batch_size: images per calibration batch (1 fits any model, fixed or dynamic batch).
    """

    def __init__(self, images: Sequence[Any], input_name: str, image_size: int, input_size: tuple[int, int], batch_size: int = 1) -> None:
        self.images = list(images)
        if not self.images:
            raise ValueError("calibration needs at least one image")
        self.input_name = input_name
        self.image_size = image_size
        self.input_size = tuple(input_size)
        self.batch_size = batch_size
        self._next, self._end = 0, len(self.images)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only batches ``start_index`` to ``end_index`` (ONNX Runtime's strided calibration)."""
        self._next, self._end = start_index * self.batch_size, min(len(self.images), end_index * self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        from plaindet.detections import pad_batch, resize_long_side, to_rgb_array

        if self._next >= self._end:
            return None
        chunk = self.images[self._next : min(self._end, self._next + self.batch_size)]
        self._next += len(chunk)
        resized = [resize_long_side(to_rgb_array(im), self.image_size) for im in chunk]
        return {self.input_name: pad_batch(resized, *self.input_size)}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.images)


def calibration_images(data: str | os.PathLike, count: int, *, split: str = "train", seed: int = 0) -> list[Path]:
    """``count`` training images for calibration, a seeded random choice.

    ``data`` is a folder of images, or a dataset in any format :func:`plaindet.data.load_dataset`
    reads (its ``split``).
    """
    from plaindet.data.images import IMAGE_SUFFIXES

    path = Path(data)
    direct = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
    if direct:
        paths = direct
    else:
        from plaindet.data import load_dataset

        paths = [s.image_path for s in load_dataset(path, split=split)]
    if not paths:
        raise DatasetError(f"{data}: no images to calibrate on")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    return [paths[i] for i in sorted(chosen)]


def output_layers(model: Any, op_types: Iterable[str] = STATIC_OP_TYPES) -> list[str]:
    """Names of the layers (``op_types`` nodes) from which a graph output is reached through no other layer.

    These are the layers that make the predictions (for plaindet the class and box convs of every
    pyramid level; for a DETR the last linear layers of its class and box MLPs). Keeping them in
    float costs little time and keeps the scores that rank detections and the box regression exact.
    Found from the graph alone, so it works for any exported model.
    """
    op_types = set(op_types)
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in op_types:
            found.append(node.name)
            continue  # stop here: layers before it are ordinary layers
        stack.extend(node.input)
    return sorted(found)


def prediction_nodes(model: Any) -> list[str]:
    """The :func:`output_layers` and every node downstream of them (the post-processing)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {node.name: node for node in model.graph.node}
    found: set[str] = set()
    stack = [by_name[name] for name in output_layers(model)]
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, []))
    return sorted(found)


def activation_matmuls(model: Any) -> list[str]:
    """Names of the ``MatMul`` nodes that multiply two activations (attention's ``q @ k^T`` and
    ``attn @ v``), i.e. whose second input is neither an initializer nor a constant."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return sorted(n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in constants)


def _drop_duplicate_casts(model: Any) -> None:
    """Remove repeated identical nodes, in place. onnxruntime's float16 converter adds a cast per
    blocked consumer of a tensor, all with the same name and output, which onnxruntime refuses to load."""
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _copy_metadata(src: Any, dst_path: Path, precision: str) -> None:
    onnx = require_extra("onnx", "onnx", "ONNX export and inference")

    dst = onnx.load(dst_path)
    values = {p.key: p.value for p in (*dst.metadata_props, *src.metadata_props)}
    onnx.helper.set_model_props(dst, {**values, "precision": precision})
    dst.doc_string = src.doc_string
    onnx.save(dst, dst_path)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    mode: str,
    *,
    calib_images: Sequence[Any] | None = None,
    per_channel: bool = True,
    reduce_range: bool = True,
    keep_output_layers: bool = True,
    quantize_attention: bool = True,
    calibrate_method: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Write the ``mode`` variant (``int8-static``, ``int8-dynamic`` or ``fp16``) of the ONNX file ``src`` to ``dst``.

    Args:
        calib_images: for ``int8-static``, the calibration images (paths or arrays; see
            :func:`calibration_images`), preprocessed like inference at the file's image size.
        per_channel: int8 weights with one scale per output channel (more accurate, as fast on
            VNNI CPUs).
        reduce_range: 7-bit int8 weights, which do not saturate ONNX Runtime's u8 x s8 kernels on
            CPUs without VNNI (see the module docstring); ``False`` for the full 8 bits where every
            CPU that runs the file has VNNI.
        keep_output_layers: keep :func:`output_layers` in float (int8 modes).
        quantize_attention: quantize the attention products too (:func:`activation_matmuls`;
            int8-static; dynamic mode quantizes only the linear layers' constant weights).
        calibrate_method: ``minmax``, ``percentile`` or ``entropy`` (int8-static).
        nodes_to_exclude: more node names to keep in float (int8 modes).
        extra_options: passed on to onnxruntime's ``quantize_static`` / ``quantize_dynamic`` (int8
            modes), over plaindet's choices.

    Returns ``dst``. See the module docstring for what each mode quantizes.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}: choose one of {', '.join(MODES)}")
    onnx = require_extra("onnx", "onnx", "ONNX export and inference")
    require_extra("onnxruntime", "onnx", "ONNX export and inference")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    methods = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
    if mode == "int8-static" and not calib_images:
        raise ValueError("int8-static quantization needs calibration images (calib_images=...)")
    if mode != "fp16" and calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}, got {calibrate_method!r}")
    model = onnx.load(src)

    def write(tmp: str) -> None:  # into a temporary file beside dst, renamed over it when complete
        if mode == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # The prediction layers and everything after them (box decoding: exp(d) * stride overflows
            # float16's 65504; sigmoid, top-k) stay float32.
            half = convert_float_to_float16(model, keep_io_types=True, node_block_list=prediction_nodes(model))
            _drop_duplicate_casts(half)
            onnx.save(half, tmp)
        else:
            _to_int8(
                model, src, Path(tmp), mode, calib_images=calib_images, per_channel=per_channel, reduce_range=reduce_range, keep_output_layers=keep_output_layers,
                quantize_attention=quantize_attention, calibrate_method=methods[calibrate_method], nodes_to_exclude=nodes_to_exclude,
                extra_options=extra_options or {},
            )  # fmt: skip
        _copy_metadata(model, Path(tmp), mode)

    atomic_write(dst, write)  # a kill mid-write leaves the previous file, never a torn one
    return dst


def _to_int8(
    model: Any,
    src: Path,
    dst: Path,
    mode: str,
    *,
    calib_images: Sequence[Any] | None,
    per_channel: bool,
    reduce_range: bool,
    keep_output_layers: bool,
    quantize_attention: bool,
    calibrate_method: str,
    nodes_to_exclude: Sequence[str],
    extra_options: dict[str, Any],
) -> None:
    """The int8 modes of :func:`quantize_onnx` (``calibrate_method``: onnxruntime's name, e.g. ``MinMax``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and ONNX Runtime's basic graph optimizations first, as ONNX Runtime recommends.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        exclude = list(nodes_to_exclude)
        if keep_output_layers:  # found in the prepared graph: its node names are the ones quantized
            exclude += output_layers(onnx.load(prepared))
        if mode == "int8-static" and not quantize_attention:
            exclude += activation_matmuls(onnx.load(prepared))
        if mode == "int8-dynamic":
            quantize_dynamic(
                str(prepared),
                str(dst),
                op_types_to_quantize=list(DYNAMIC_OP_TYPES),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                extra_options={"MatMulConstBOnly": True, **extra_options},
            )
            return
        meta = {p.key: p.value for p in model.metadata_props}
        reader = ImageCalibrationReader(calib_images, model.graph.input[0].name, int(meta["image_size"]), tuple(json.loads(meta["input_size"])))
        method = getattr(CalibrationMethod, calibrate_method)
        cache = _calibrate(prepared, reader, method, extra_options, Path(tmp))
        quantize_static(
            str(prepared),
            str(dst),
            None if cache else reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"], **extra_options},
            **({"calibration_cache_path": str(cache)} if cache else {}),
        )


def _calibrate(prepared: Path, reader: ImageCalibrationReader, method: Any, extra_options: dict[str, Any], tmp: Path) -> Path | None:
    """The activation ranges of int8-static, computed as ``quantize_static`` computes them but in an
    ONNX Runtime session without its memory arena and memory pattern, written as the calibration
    cache ``quantize_static`` then reads; ``None`` (let ``quantize_static`` calibrate) where this
    onnxruntime has no calibration cache, or for SmoothQuant.

    Why: calibration runs the graph with a min and a max of every quantized tensor as extra
    outputs, and with the default session the first run fills the arena and the second allocates
    the memory pattern's block beside it, both kept: plaindet-b at 640 px peaked at 4.9 GB with 1
    calibration image and 7.8 GB with 2 or more (``benchmarks/bench_quantize_memory.py``). The
    ranges, hence the file, are the same.
    """
    import inspect

    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization import calibrate

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters or not hasattr(calibrate, "save_tensors_data"):
        return None
    if extra_options.get("SmoothQuant"):
        return None
    keys = {"CalibTensorRangeSymmetric": "symmetric", "CalibMovingAverage": "moving_average", "CalibMovingAverageConstant": "averaging_constant", "CalibPercentile": "percentile"}
    calibrator = calibrate.create_calibrator(
        prepared, list(STATIC_OP_TYPES), augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=method,
        extra_options={ours: extra_options[theirs] for theirs, ours in keys.items() if theirs in extra_options},
    )  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's calibrator has it
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = False
    calibrator.infer_session = ort.InferenceSession(calibrator.augmented_model_path, sess_options=options, providers=calibrator.execution_providers)
    calibrator.collect_data(reader)
    cache = tmp / "calibration.json"
    calibrate.save_tensors_data(calibrator.compute_data(), cache)
    del calibrator
    return cache
