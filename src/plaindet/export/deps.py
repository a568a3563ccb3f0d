"""The ``onnx`` extra (onnx, onnxruntime, onnxscript), imported lazily with an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'plaindet[onnx]'"


def require(module: str) -> ModuleType:
    """Import ``module`` (``onnx``, ``onnxruntime``, ``onnxscript``, or a submodule), or raise an
    ``ImportError`` that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for ONNX export and inference: {INSTALL_HINT} ({e})") from None
