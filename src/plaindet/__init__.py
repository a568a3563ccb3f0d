"""plaindet: object detection with transformers that is easy to use, finetune and deploy.

The public surface: :func:`create_model`, :func:`list_models`, :func:`load`, :class:`Detector`,
:func:`merge_lora`, :class:`OnnxDetector`. Heavy modules are imported on first use, so
``import plaindet`` stays fast (and ``plaindet.OnnxDetector`` never imports torch).
"""

__version__ = "0.1.0"

__all__ = ["Detector", "OnnxDetector", "__version__", "create_model", "list_models", "load", "merge_lora"]


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from plaindet.models import registry

        return getattr(registry, name)
    if name == "load":
        from plaindet.api import load

        return load
    if name == "Detector":
        from plaindet.models.detector import Detector

        return Detector
    if name == "merge_lora":
        from plaindet.models.lora import merge_lora

        return merge_lora
    if name == "OnnxDetector":
        from plaindet.export.ort import OnnxDetector

        return OnnxDetector
    raise AttributeError(f"module 'plaindet' has no attribute {name!r}")
