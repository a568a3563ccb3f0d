"""Every ``plaindet serve`` setting, with its default: the CLI options are derived from :class:`ServeConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from plaindet.config import setting
from plaindet.errors import ConfigError

BACKENDS = ("auto", "torch", "onnx")


@dataclass
class ServeConfig:
    """How the server listens, runs its models and what it accepts.

    ``backend``: ``auto`` runs ``.onnx`` files with ONNX Runtime (torch is never imported) and
    checkpoints with PyTorch; ``onnx`` exports each checkpoint to ONNX at start-up and runs that;
    ``torch`` needs checkpoints. ``max_batch`` and ``batch_wait_ms`` set the micro-batching: images
    of concurrent requests for one model run as one batch of up to ``max_batch``, the first waiting at
    most ``batch_wait_ms`` for others (``max_batch=1`` turns it off). ``0`` (the default) is 8 for a
    PyTorch model on CUDA and 1 on CPU: there a model already keeps every core busy on one image, and
    a batch costs more per image, so batching only added waiting (plaindet-t at 640 px on 2 cores,
    concurrency 16: 2.20 images/s with batches of up to 8, 2.85 without; ``benchmarks/bench_serve.py``,
    README "Serving"). ``api_key``: when set, every
    ``/v1`` request must carry it (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``); the
    ``PLAINDET_API_KEY`` environment variable sets it too, and keeps it off the process list.
    """

    host: str = setting("127.0.0.1", help="Address to bind: loopback by default; 0.0.0.0 serves every interface.")
    port: int = setting(8000, help="TCP port.")
    backend: str = setting("auto", help="auto (by file: .onnx with ONNX Runtime, checkpoints with PyTorch), torch or onnx.")
    threads: int = setting(0, help="Intra-op threads of the model runs (0: one per CPU).")
    device: str = setting("cpu", help="PyTorch device: cpu, cuda, cuda:1, ...")
    api_key: str = setting("", help="Require this key on /v1 requests (or set PLAINDET_API_KEY).")
    max_batch: int = setting(0, help="Most images run as one batch (0: 8 on CUDA, 1 on CPU, where batches are no faster; 1: no micro-batching).")
    batch_wait_ms: float = setting(5.0, help="Longest wait for more images before a batch runs.")
    max_upload_mb: float = setting(20.0, help="Largest request body, in MB (413 beyond it).")
    max_megapixels: float = setting(40.0, help="Largest image, in decoded megapixels (413 beyond it: decompression bombs).")
    max_images: int = setting(16, help="Most images in one request.")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_images < 1:
            raise ConfigError(f"max_images must be at least 1, got {self.max_images}")
        for name in ("max_batch", "batch_wait_ms", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_megapixels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")

    def batch_limit(self, backend: str) -> int:
        """``max_batch`` for a model on ``backend`` (``"torch"`` or ``"onnx"``), ``0`` resolved."""
        if self.max_batch:
            return self.max_batch
        return 8 if backend == "torch" and self.device.startswith("cuda") else 1

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)
