"""``plaindet serve``: detection over HTTP, with a web page (extra ``serve``: fastapi, uvicorn).

- :mod:`plaindet.serve.settings`: :class:`ServeConfig`, every setting and its default (the CLI's options).
- :mod:`plaindet.serve.backends`: which files are served under which names, loaded on PyTorch or
  ONNX Runtime, and the fixed model input both backends share.
- :mod:`plaindet.serve.batching`: micro-batching of concurrent requests.
- :mod:`plaindet.serve.app`: the FastAPI app (:func:`create_app`), its endpoints and error rules, and
  :func:`run_serve`, the command.
- ``static/``: the web page at ``/`` (plain HTML, CSS and JavaScript; nothing is fetched from elsewhere).

Names are imported on first use, so an ONNX-only deployment never imports torch.
"""

__all__ = ["ServeConfig", "create_app", "run_serve"]


def __getattr__(name: str):
    if name in ("create_app", "run_serve"):
        from plaindet.serve import app

        return getattr(app, name)
    if name == "ServeConfig":
        from plaindet.serve.settings import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'plaindet.serve' has no attribute {name!r}")
