"""The HTTP API and web page of ``plaindet serve`` (FastAPI), and the command that runs it (uvicorn).

Endpoints (OpenAPI page at ``/docs``):

- ``POST /v1/detect``: images as multipart file parts (any field name, up to ``max_images``) or as
  a raw image body (``Content-Type: image/...`` or ``application/octet-stream``); ``model``,
  ``threshold``, ``max_detections`` and ``classes`` (names or indices, comma-separated) as query
  parameters or form fields. Answers ``{"model", "backend", "images": [{"name", "width", "height",
  "detections": [{"box": [x1, y1, x2, y2], "score", "label", "class_name"}], "model_ms",
  "batch_size"}]}``, boxes in original-image pixels.
- ``GET /v1/models``: each model's name, family, classes, input size, backend, and what its
  micro-batcher has run. ``GET /healthz``: liveness. ``GET /readyz``: 503 until every model is
  loaded and has run a warm-up image. ``GET /``: the web page (static files in the package).

No endpoint takes a path or a URL: images arrive in the request only. Every refused request gets a
4xx and the JSON ``{"error": message, "status": code}``, and is logged (never with the API key):
413 for a body over ``max_upload_mb`` or an image over ``max_megapixels`` (checked from its header,
before decoding), 415 for a body or file that is not a JPEG, PNG, WebP or BMP image, 400 for an
empty, truncated or corrupt one or a bad parameter, 404 for an unknown model, 401 for a missing or
wrong API key (checked before the body is read).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, imported
# inside create_app so that the module imports without the extra) as objects.

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

import numpy as np

from plaindet.data.images import ImageReadError, ImageTooLarge, UnsupportedImage, decode_image
from plaindet.detections import detections_for_image
from plaindet.errors import require_extra
from plaindet.serve.backends import ModelSpec, ServedModel, load_served_model
from plaindet.serve.batching import MicroBatcher
from plaindet.serve.settings import ServeConfig

log = logging.getLogger("plaindet.serve")

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "application/octet-stream")
_QUERY_FIELDS = ("model", "threshold", "max_detections", "classes")


class ApiError(Exception):
    """A refused request: its HTTP ``status`` and a ``message`` that says what was wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class ServerState:
    """What the running app holds: the models as they load, their batchers, and readiness."""

    specs: list[ModelSpec]
    config: ServeConfig
    models: dict[str, ServedModel] = field(default_factory=dict)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    failure: str | None = None


def create_app(specs: list[ModelSpec], config: ServeConfig | None = None, *, on_fatal: Callable[[str], None] | None = None):
    """The FastAPI app serving ``specs``. Models load in the background once the app starts (its
    lifespan), so ``/healthz`` answers at once and ``/readyz`` says when they are ready.
    ``on_fatal(message)`` is called if a model fails to load (the command uses it to exit)."""
    require_extra("fastapi", "serve", "plaindet serve")
    from fastapi import FastAPI

    config = config or ServeConfig()
    state = ServerState(list(specs), config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plaindet-model")
        loading = asyncio.get_running_loop().create_task(_load_models(state, executor, on_fatal))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            for batcher in state.batchers.values():
                await batcher.stop()
            executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="plaindet serve",
        version=_version(),
        description="Object detection over HTTP. Boxes are [x1, y1, x2, y2] in pixels of the image sent.",
        lifespan=lifespan,
    )
    app.state.plaindet = state
    app.add_middleware(_BodyLimit, max_bytes=config.max_upload_bytes)
    _add_error_handlers(app)
    _add_routes(app, state, _key_check(config.api_key))
    return app


def _add_error_handlers(app) -> None:
    """Every error, ours or FastAPI's, answers ``{"error": message, "status": N}`` and is logged."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(request, e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return error_response(request, e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', '')}" for err in e.errors())
        return error_response(request, 400, message or "bad request")


def _key_check(api_key: str | None) -> Callable:
    """The dependency that guards the API: a no-op without a key, else a 401 unless the request carries it."""
    from fastapi import Request

    digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def require_key(request: Request) -> None:
        if digest is None:
            return
        given = request.headers.get("x-api-key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = token.strip()
        # Digests have one length, so compare_digest's time says nothing about the key, not even its length.
        if given is None or not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), digest):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"})

    return require_key


def _add_routes(app, state: ServerState, require_key: Callable) -> None:
    """The page, the static files, liveness, readiness, the model list and detection."""
    from fastapi import Depends, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    static = resources.files("plaindet.serve") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(packages=[("plaindet.serve", "static")]), name="static")

    @app.get("/healthz", summary="Liveness: the server answers.")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 503 until every model is loaded and has run a warm-up image.")
    def readyz():
        if state.ready:
            return {"status": "ready", "models": list(state.models)}
        body = {"status": "failed" if state.failure else "loading", "loaded": list(state.models), "error": state.failure}
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models", summary="The models served: name, family, classes, input size, backend.", dependencies=[Depends(require_key)])
    def models() -> dict:
        out = []
        for spec in state.specs:
            served = state.models.get(spec.name)
            entry = served.describe() if served else {"name": spec.name, "backend": spec.backend}
            batcher = state.batchers.get(spec.name)
            entry["ready"] = batcher is not None
            if batcher is not None:
                entry["max_batch"] = batcher.max_batch
                entry["stats"] = {"batches": batcher.stats.batches, "images": batcher.stats.images, "largest_batch": batcher.stats.largest}
            out.append(entry)
        return {"models": out}

    @app.post(
        "/v1/detect",
        summary="Detect objects in one or several images.",
        dependencies=[Depends(require_key)],
        openapi_extra=_DETECT_OPENAPI,
    )
    async def detect(request: Request) -> dict:
        return await _detect(request, state)


async def _detect(request, state: ServerState) -> dict:
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    config = state.config
    fields = {k: v for k, v in request.query_params.items() if k in _QUERY_FIELDS}
    unknown = sorted(set(request.query_params) - set(_QUERY_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}; known: {', '.join(_QUERY_FIELDS)}")
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    uploads: list[tuple[str, bytes]] = []
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=config.max_images, max_fields=len(_QUERY_FIELDS))
        except HTTPException as e:  # Starlette's multipart parser: too many files or fields, a broken form
            raise ApiError(400, f"the multipart form could not be read: {e.detail} (at most {config.max_images} images per request)") from None
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads.append((_safe_name(value.filename or key), await value.read()))
                elif key in _QUERY_FIELDS:
                    fields[key] = value
                else:
                    raise ApiError(400, f"unknown form field {key!r}: images go as file parts; other fields: {', '.join(_QUERY_FIELDS)}")
        finally:
            await form.close()
        if not uploads:
            raise ApiError(400, "the form holds no image file: send each image as a file part (curl -F image=@photo.jpg)")
    elif content_type in RAW_IMAGE_TYPES or content_type == "":
        uploads.append(("body", await request.body()))
    elif content_type.startswith("image/"):
        raise ApiError(415, f"unsupported image type {content_type!r}: send JPEG, PNG, WebP or BMP")
    else:
        hint = " (curl -d sends a form: use -F image=@photo.jpg)" if content_type == "application/x-www-form-urlencoded" else ""
        raise ApiError(
            415,
            f"unsupported Content-Type {content_type!r}: send multipart/form-data with image files, or a raw image body "
            f"with Content-Type image/jpeg, image/png, image/webp or image/bmp{hint}",
        )
    if len(uploads) > config.max_images:
        raise ApiError(413, f"{len(uploads)} images in one request; at most {config.max_images}")

    served, options = _request_options(fields, state)
    inputs = []
    for name, data in uploads:  # every image is checked before any model runs
        inputs.append(await run_in_threadpool(_prepare, served, name, data, config.max_pixels))
    batcher = state.batchers[served.name]
    results = await asyncio.gather(*(batcher.submit(model_input) for model_input, _, _ in inputs))
    images = []
    for (name, _), (_, resized_hw, orig_hw), result in zip(uploads, inputs, results):
        det = detections_for_image(
            result.boxes, result.scores, result.labels, threshold=options["threshold"], resized_hw=resized_hw, orig_hw=orig_hw,
            class_names=served.class_names,
        )  # fmt: skip
        keep = np.arange(len(det))
        if options["classes"] is not None:
            keep = keep[np.isin(det.labels, options["classes"])]
        keep = keep[: options["max_detections"]]
        images.append({
            "name": name,
            "width": orig_hw[1],
            "height": orig_hw[0],
            "detections": [
                {"box": [float(v) for v in det.boxes[i]], "score": float(det.scores[i]), "label": int(det.labels[i]), "class_name": det.class_names[i]}
                for i in keep
            ],
            "model_ms": round(result.model_ms, 3),
            "batch_size": result.batch_size,
        })  # fmt: skip
    return {"model": served.name, "backend": served.backend, "images": images}


def _prepare(served: ServedModel, name: str, data: bytes, max_pixels: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """An upload as ``(model input, resized (h, w), original (h, w))``, or the :class:`ApiError` it earns."""
    try:
        image = decode_image(data, name=name, max_pixels=max_pixels)
    except ImageTooLarge as e:
        raise ApiError(413, str(e)) from None
    except UnsupportedImage as e:
        raise ApiError(415, str(e)) from None
    except ImageReadError as e:
        raise ApiError(400, str(e)) from None
    model_input, resized_hw = served.prepare(image)
    return model_input, resized_hw, image.shape[:2]


def _request_options(fields: dict[str, str], state: ServerState) -> tuple[ServedModel, dict[str, Any]]:
    """The model and the checked ``threshold``, ``max_detections`` and ``classes`` (label indices or
    ``None``) of a request's fields; :class:`ApiError` for any bad one."""
    name = fields.get("model") or (state.specs[0].name if state.specs else "")
    if name not in {s.name for s in state.specs}:
        raise ApiError(404, f"unknown model {name!r}; served: {', '.join(s.name for s in state.specs)}")
    served = state.models.get(name)
    if served is None or name not in state.batchers:
        raise ApiError(503, f"model {name!r} is still loading; GET /readyz says when it is ready")
    threshold = _number(fields.get("threshold", "0.3"), "threshold", float)
    if not 0.0 <= threshold <= 1.0:
        raise ApiError(400, f"threshold must be in [0, 1], got {threshold:g}")
    max_detections = _number(fields.get("max_detections", str(served.max_detections or 100)), "max_detections", int)
    if max_detections < 1:
        raise ApiError(400, f"max_detections must be at least 1, got {max_detections}")
    classes = None
    if fields.get("classes"):
        classes = []
        for item in (c.strip() for c in fields["classes"].split(",")):
            if item in served.class_names:
                classes.append(served.class_names.index(item))
            elif item.isdigit() and int(item) < len(served.class_names):
                classes.append(int(item))
            elif item:
                raise ApiError(400, f"unknown class {item[:64]!r} for model {name!r}; its classes: {', '.join(served.class_names[:50])}")
    return served, {"threshold": threshold, "max_detections": max_detections, "classes": classes}


def _number(text: str, name: str, kind: type):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, got {str(text)[:32]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"{name} must be finite, got {text[:32]!r}")
    return value


def _safe_name(name: str) -> str:
    """An upload's file name as it may appear in answers and logs: printable, at most 100 characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in os.path.basename(name.replace("\\", "/")))
    return cleaned[:100] or "image"


async def _load_models(state: ServerState, executor: ThreadPoolExecutor, on_fatal: Callable[[str], None] | None) -> None:
    """Load each model on the executor thread, run a warm-up image through it, start its batcher;
    then the server is ready. A model that fails to load makes the server fail, not half-serve."""
    loop = asyncio.get_running_loop()
    config = state.config
    for spec in state.specs:
        try:
            served = await loop.run_in_executor(executor, lambda s=spec: load_served_model(s, threads=config.threads, device=config.device))
            blank = np.zeros((1, 3, *served.input_size), dtype=np.uint8)
            await loop.run_in_executor(executor, served.run, blank)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            state.failure = f"model {spec.name!r} ({spec.path}) failed to load: {e}"
            log.error("%s", state.failure)
            if on_fatal is not None:
                on_fatal(state.failure)
            return
        max_batch = config.batch_limit(served.backend)
        max_batch = min(max_batch, served.batch_limit or max_batch)
        batcher = MicroBatcher(served.run, max_batch=max_batch, wait_s=config.batch_wait_ms / 1000, executor=executor)
        batcher.start()
        state.models[spec.name] = served
        state.batchers[spec.name] = batcher
        log.info("%s: %s (%s, %s backend, input %dx%d, batches of up to %d) ready", spec.name, spec.path, served.model, served.backend, *served.input_size, max_batch)
    state.ready = True


class _BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, whether it declares its length
    (refused before a byte is read) or streams in chunks (refused once the count passes the limit)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than the {self.max_bytes / 1e6:g} MB allowed (--max-upload-mb)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            from fastapi.responses import JSONResponse

            log.warning("%s %s -> 413: %s", scope.get("method"), scope.get("path"), message)
            return await JSONResponse({"error": message, "status": 413}, status_code=413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, message)  # raised inside the endpoint's body read: its handler answers
            return event

        await self.app(scope, limited_receive, send)


def _version() -> str:
    from plaindet.version import __version__

    return __version__


_DETECT_OPENAPI = {
    "parameters": [
        {"name": "model", "in": "query", "schema": {"type": "string"}, "description": "A served model's name (default: the first)."},
        {"name": "threshold", "in": "query", "schema": {"type": "number", "default": 0.3, "minimum": 0, "maximum": 1}},
        {"name": "max_detections", "in": "query", "schema": {"type": "integer", "minimum": 1}, "description": "Most detections per image (default: the model's)."},
        {"name": "classes", "in": "query", "schema": {"type": "string"}, "description": "Keep only these classes: names or indices, comma-separated."},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "One or several image files."},
                        "model": {"type": "string"},
                        "threshold": {"type": "number"},
                        "max_detections": {"type": "integer"},
                        "classes": {"type": "string"},
                    },
                    "required": ["image"],
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/jpeg", "image/png", "image/webp", "image/bmp")},
        },
    },
}


def run_serve(weights: list[str], config: ServeConfig) -> int:
    """``plaindet serve``: check the model files, then serve them with uvicorn until stopped.

    The API key comes from ``config.api_key`` or else the ``PLAINDET_API_KEY`` environment variable.
    Returns the exit code: 0 when stopped, 2 when a model failed to load.
    """
    import dataclasses

    from plaindet.serve.backends import parse_model_specs

    uvicorn = require_extra("uvicorn", "serve", "plaindet serve")
    specs = parse_model_specs(weights, config.backend)
    if not config.api_key and os.environ.get("PLAINDET_API_KEY"):
        config = dataclasses.replace(config, api_key=os.environ["PLAINDET_API_KEY"])
    threads = config.threads or os.cpu_count() or 1
    if any(s.backend == "torch" for s in specs):
        import torch

        torch.set_num_threads(threads)
    failures: list[str] = []
    server: Any = None

    def on_fatal(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(specs, dataclasses.replace(config, threads=threads), on_fatal=on_fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info", access_log=True))
    auth = "API key required" if config.api_key else "no API key"
    log.info("serving %s on http://%s:%d (%s; page at /, API docs at /docs)", ", ".join(s.name for s in specs), config.host, config.port, auth)
    server.run()
    return 2 if failures else 0
