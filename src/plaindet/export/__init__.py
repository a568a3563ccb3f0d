"""Deployment: one ONNX file per model (normalization, network and NMS-free top-k inside), its int8 and
fp16 variants, a torch-free ONNX Runtime predictor, and a latency benchmark.

- :func:`export_onnx` (:mod:`plaindet.export.onnx`): any registered model to ONNX, through
  :class:`~plaindet.export.onnx.ExportWrapper`, ``postprocess(forward(images))``.
- :func:`quantize_onnx` (:mod:`plaindet.export.quantize`): int8 static (calibrated on training
  images), int8 dynamic, fp16.
- :class:`OnnxDetector` (:mod:`plaindet.export.ort`): ``predict`` like :class:`plaindet.Detector`,
  on onnxruntime and numpy only.
- :mod:`plaindet.export.benchmark`: latency, throughput and peak memory per backend.

Names are imported on first use, so importing :class:`OnnxDetector` never imports torch.
"""

__all__ = ["OnnxDetector", "export_onnx", "quantize_onnx"]


def __getattr__(name: str):
    if name == "export_onnx":
        from plaindet.export.onnx import export_onnx

        return export_onnx
    if name == "quantize_onnx":
        from plaindet.export.quantize import quantize_onnx

        return quantize_onnx
    if name == "OnnxDetector":
        from plaindet.export.ort import OnnxDetector

        return OnnxDetector
    raise AttributeError(f"module 'plaindet.export' has no attribute {name!r}")
