"""``plaindet serve``: every endpoint through FastAPI's test client, every hostile input (status and
message, and the server keeps serving), the API key, micro-batching (concurrent requests run as one
batch, with the results of unbatched runs), and PyTorch and ONNX Runtime giving the same detections."""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx (extra dev)")

from fastapi.testclient import TestClient  # noqa: E402

import plaindet  # noqa: E402
from plaindet.cli import app as cli_app  # noqa: E402
from plaindet.errors import ConfigError, NotFound, UserError  # noqa: E402
from plaindet.serve.app import create_app  # noqa: E402
from plaindet.serve.backends import ModelSpec, parse_model_specs  # noqa: E402
from plaindet.serve.settings import ServeConfig  # noqa: E402

from test_export import CLASSES, SIZE, tiny_model  # the tiny model the export tests use


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("serve") / "tiny.safetensors")


@pytest.fixture(scope="module")
def onnx_weights(model, tmp_path_factory):
    from plaindet.export.onnx import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp("serve_onnx") / "tiny.onnx", dynamic_batch=True)


def png_bytes(width: int = SIZE, height: int = SIZE, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG of a few hundred bytes that claims ``width x height`` pixels (1-bit gray, all zero):
    a decompression bomb when decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = compressor.compress(row * 64) + compressor.flush()  # only the first rows: enough to be a PNG
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@contextlib.contextmanager
def serving(specs, **config):
    """A started app (its models loaded and warmed up) and its test client."""
    with TestClient(create_app(specs, ServeConfig(**config))) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200, client.get("/readyz").json()
        yield client


@pytest.fixture(scope="module")
def client(weights):
    with serving([ModelSpec("tiny", weights, "torch")], max_images=3, max_upload_mb=0.5, max_megapixels=1.0, max_batch=8, batch_wait_ms=0) as c:
        yield c


def detect(client, data: bytes = b"", content_type: str = "image/png", **params):
    return client.post("/v1/detect", params=params, content=data, headers={"content-type": content_type})


def batches(client, name: str = "tiny") -> int:
    (entry,) = [m for m in client.get("/v1/models").json()["models"] if m["name"] == name]
    return entry["stats"]["batches"]


# ----------------------------------------------------------------------------------------------------------------------
# endpoints


def test_health_ready_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["tiny"]}
    (entry,) = client.get("/v1/models").json()["models"]
    assert entry["name"] == "tiny" and entry["model"] == "plaindet-t" and entry["family"] == "plaindet"
    assert entry["backend"] == "torch" and entry["classes"] == CLASSES
    assert entry["input_size"] == [SIZE, SIZE] and entry["image_size"] == SIZE and entry["ready"]
    assert entry["max_batch"] == 8
    assert client.get("/openapi.json").json()["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]


def test_the_default_batch_limit_is_8_on_cuda_and_1_on_cpu():
    assert ServeConfig().batch_limit("torch") == 1 and ServeConfig().batch_limit("onnx") == 1
    assert ServeConfig(device="cuda").batch_limit("torch") == 8 and ServeConfig(device="cuda:1").batch_limit("onnx") == 1
    assert ServeConfig(max_batch=4).batch_limit("torch") == 4
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(max_batch=-1)


def test_a_cpu_server_runs_each_image_alone_by_default(weights):
    with serving([ModelSpec("tiny", weights, "torch")]) as c:
        (entry,) = c.get("/v1/models").json()["models"]
    assert entry["max_batch"] == 1


def test_readyz_is_503_until_the_models_are_loaded(weights):
    app = create_app([ModelSpec("tiny", weights, "torch")], ServeConfig())
    unstarted = TestClient(app)  # without `with`, the lifespan (which loads the models) never runs
    assert unstarted.get("/healthz").status_code == 200
    response = unstarted.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "loading"


def test_a_model_that_fails_to_load_makes_readyz_say_why(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    failures = []
    with TestClient(create_app([ModelSpec("broken", bad, "torch")], on_fatal=failures.append)) as c:
        for _ in range(200):
            if failures:
                break
            time.sleep(0.05)
        body = c.get("/readyz").json()
    assert body["status"] == "failed" and "broken" in body["error"] and failures == [body["error"]]


def test_detect_a_raw_body_equals_predict(client, model):
    image = png_bytes(seed=1)
    response = detect(client, image, threshold=0.05)
    assert response.status_code == 200, response.text
    body = response.json()
    (result,) = body["images"]
    assert body["model"] == "tiny" and body["backend"] == "torch"
    assert (result["width"], result["height"], result["batch_size"]) == (SIZE, SIZE, 1) and result["model_ms"] > 0
    # A square image at the model's size is padded to nothing by either path: the same input.
    expected = model.predict(np.asarray(Image.open(io.BytesIO(image))), threshold=0.05)
    assert len(result["detections"]) == len(expected) > 0
    np.testing.assert_allclose([d["box"] for d in result["detections"]], expected.boxes, atol=1e-4)
    np.testing.assert_allclose([d["score"] for d in result["detections"]], expected.scores, atol=1e-6)
    assert [d["label"] for d in result["detections"]] == expected.labels.tolist()
    assert [d["class_name"] for d in result["detections"]] == expected.class_names


def test_detect_several_files_and_form_fields(client):
    files = [("image", ("a.png", png_bytes(seed=2), "image/png")), ("image", ("wide.jpg", png_bytes(200, 90, seed=3, fmt="JPEG"), "image/jpeg"))]
    response = client.post("/v1/detect", files=files, data={"threshold": "0.1", "max_detections": "3", "classes": "circle,2"})
    assert response.status_code == 200, response.text
    first, wide = response.json()["images"]
    assert (first["name"], wide["name"]) == ("a.png", "wide.jpg")
    assert (wide["width"], wide["height"]) == (200, 90) and first["batch_size"] == wide["batch_size"] == 2
    for result in (first, wide):
        assert 0 < len(result["detections"]) <= 3
        assert {d["class_name"] for d in result["detections"]} <= {"circle", "triangle"}
        assert all(d["score"] >= 0.1 for d in result["detections"])
        scores = [d["score"] for d in result["detections"]]
        assert scores == sorted(scores, reverse=True)
    boxes = np.array([d["box"] for d in wide["detections"]])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 200 and boxes[:, [1, 3]].max() <= 90  # original pixels


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert "http://" not in text and "https://" not in text and "cdn" not in text.lower()  # nothing fetched from elsewhere


# ----------------------------------------------------------------------------------------------------------------------
# hostile and broken input: a 4xx with a JSON error that says what was wrong, logged; the server goes on


BAD_INPUTS = {
    "not an image": (b"hello, this is text", "image/png", {}, 415, "not an image"),
    "truncated png": (png_bytes()[:300], "image/png", {}, 400, "truncated or corrupt"),
    "gif": (b"GIF89a" + png_bytes()[6:], "image/gif", {}, 415, "unsupported image type 'image/gif'"),
    "gif sent as octet-stream": (png_bytes(fmt="GIF"), "application/octet-stream", {}, 415, "a GIF image"),
    "zero bytes": (b"", "image/png", {}, 400, "empty (0 bytes)"),
    "decompression bomb 30000x30000": (png_header_only(30_000, 30_000), "image/png", {}, 413, "too large to decode safely"),
    "over max megapixels": (png_header_only(1500, 1000), "image/png", {}, 413, "1.5 megapixels, more than the 1 allowed"),
    "json body": (b'{"image": "x"}', "application/json", {}, 415, "unsupported Content-Type 'application/json'"),
    "form urlencoded (curl -d)": (png_bytes(), "application/x-www-form-urlencoded", {}, 415, "unsupported Content-Type"),
    "unknown model": (png_bytes(), "image/png", {"model": "nope"}, 404, "unknown model 'nope'; served: tiny"),
    "threshold not a number": (png_bytes(), "image/png", {"threshold": "high"}, 400, "threshold must be a number"),
    "threshold above 1": (png_bytes(), "image/png", {"threshold": "1.5"}, 400, "threshold must be in [0, 1]"),
    "threshold nan": (png_bytes(), "image/png", {"threshold": "nan"}, 400, "threshold must be finite"),
    "max_detections 0": (png_bytes(), "image/png", {"max_detections": "0"}, 400, "max_detections must be at least 1"),
    "unknown class": (png_bytes(), "image/png", {"classes": "dog"}, 400, "unknown class 'dog'"),
    "unknown parameter": (png_bytes(), "image/png", {"url": "http://example.com/a.jpg"}, 400, "unknown query parameter(s) 'url'"),
    "body over max upload": (b"\x00" * 600_000, "image/png", {}, 413, "larger than the 0.5 MB allowed"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_that_says_why_and_the_server_goes_on(client, case, caplog):
    data, content_type, params, status, message = BAD_INPUTS[case]
    before = batches(client)
    with caplog.at_level(logging.WARNING, logger="plaindet.serve"):
        response = detect(client, data, content_type, **params)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status and message in response.json()["error"], response.json()
    assert message in caplog.text  # logged
    assert batches(client) == before  # no model ran
    assert detect(client, png_bytes(seed=9)).status_code == 200


def test_a_streamed_body_over_the_limit_gets_413(client):
    chunks = iter([b"\x89PNG" + b"\x00" * 200_000] * 4)  # no Content-Length: chunked transfer
    response = client.post("/v1/detect", content=chunks, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "larger than the 0.5 MB" in response.json()["error"]
    form_chunks = iter([b"--x\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\n"] + [b"\x00" * 200_000] * 4)
    response = client.post("/v1/detect", content=form_chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413, response.text
    assert detect(client, png_bytes()).status_code == 200


def test_too_many_files_and_a_form_without_files(client):
    files = [("image", (f"{i}.png", png_bytes(32, 32, seed=i), "image/png")) for i in range(4)]
    response = client.post("/v1/detect", files=files)
    assert response.status_code == 400 and "at most 3 images per request" in response.json()["error"]
    response = client.post("/v1/detect", files={"note": (None, "hello")}, data={"threshold": "0.2"})
    assert response.status_code == 400 and "unknown form field 'note'" in response.json()["error"]
    response = client.post("/v1/detect", data={"threshold": "0.2"}, files=[("x", ("", b"", "text/plain"))])
    assert response.status_code == 400, response.text
    bad_file = [("image", ("ok.png", png_bytes(), "image/png")), ("image", ("../../etc/passwd\x00.png", b"root:x:0:0", "image/png"))]
    response = client.post("/v1/detect", files=bad_file)
    error = response.json()["error"]
    assert response.status_code == 415 and "passwd" in error and "not an image" in error and "etc/" not in error  # named, cleaned


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/v1/nothing").json() == {"error": "Not Found", "status": 404}
    assert client.get("/v1/detect").status_code == 405


# ----------------------------------------------------------------------------------------------------------------------
# API key


def test_api_key(weights, caplog):
    key = "s3cret-key-value"
    with serving([ModelSpec("tiny", weights, "torch")], api_key=key, batch_wait_ms=0) as c:
        image = png_bytes()
        with caplog.at_level(logging.INFO):
            for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {key}"}):
                response = c.post("/v1/detect", content=image, headers={"content-type": "image/png", **headers})
                assert response.status_code == 401 and "API key" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/models").status_code == 401
            models = c.get("/v1/models", headers={"x-api-key": key}).json()["models"]
            assert models[0]["stats"]["batches"] == 0  # none of the refused requests ran the model
            for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}):
                assert c.post("/v1/detect", content=image, headers={"content-type": "image/png", **headers}).status_code == 200
            assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200 and c.get("/").status_code == 200
        assert key not in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# micro-batching


def test_two_concurrent_requests_run_as_one_batch_of_two_with_unbatched_results(weights):
    images = [png_bytes(seed=11), png_bytes(160, 100, seed=12)]
    with serving([ModelSpec("tiny", weights, "torch")], max_batch=1) as alone:
        expected = [detect(alone, im, threshold=0.05).json()["images"][0] for im in images]
    assert [e["batch_size"] for e in expected] == [1, 1]
    # A long wait: the batch runs when its second image arrives, however slow the machine.
    with serving([ModelSpec("tiny", weights, "torch")], max_batch=2, batch_wait_ms=60_000) as c:
        results: list = [None, None]

        def post(i: int) -> None:
            results[i] = detect(c, images[i], threshold=0.05)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(r is not None and r.status_code == 200 for r in results)
        got = [r.json()["images"][0] for r in results]
        (entry,) = c.get("/v1/models").json()["models"]
    assert [g["batch_size"] for g in got] == [2, 2]
    assert entry["stats"] == {"batches": 1, "images": 2, "largest_batch": 2}  # the warm-up is not counted
    for g, e in zip(got, expected):
        assert [d["label"] for d in g["detections"]] == [d["label"] for d in e["detections"]] and e["detections"]
        np.testing.assert_allclose([d["box"] for d in g["detections"]], [d["box"] for d in e["detections"]], atol=1e-4)
        np.testing.assert_allclose([d["score"] for d in g["detections"]], [d["score"] for d in e["detections"]], atol=1e-5)


def test_batcher_splits_at_max_batch_and_keeps_each_images_rows():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from plaindet.serve.batching import MicroBatcher

    calls = []

    def run(batch):
        calls.append(len(batch))
        ids = batch[:, 0, 0, 0].astype(np.float32)
        return ids[:, None, None].repeat(4, 2), ids[:, None], ids[:, None].astype(np.int64)

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(run, max_batch=4, wait_s=30.0, executor=executor)
            batcher.start()
            first = await asyncio.gather(*(batcher.submit(np.full((1, 2, 2), i, np.uint8)) for i in range(4)))
            batcher.wait_s = 0.0
            second = await asyncio.gather(*(batcher.submit(np.full((1, 2, 2), i, np.uint8)) for i in range(4, 6)))
            await batcher.stop()
            return first + second, batcher.stats

    results, stats = asyncio.run(main())
    assert calls[0] == 4 and sum(calls) == 6  # four at once without waiting 30 s; then the rest
    assert [float(r.scores[0]) for r in results] == [0, 1, 2, 3, 4, 5]
    assert stats.images == 6 and stats.largest == 4


# ----------------------------------------------------------------------------------------------------------------------
# backends


def test_torch_and_onnx_backends_give_the_same_detections(weights, onnx_weights):
    images = [png_bytes(seed=21), png_bytes(200, 90, seed=22, fmt="JPEG"), png_bytes(100, 240, seed=23)]
    files = [("image", (f"{i}.png", im, "image/png")) for i, im in enumerate(images)]
    answers = {}
    # "o": the exported file; "e": the checkpoint on the onnx backend, exported at start-up.
    specs = [ModelSpec("t", weights, "torch"), ModelSpec("o", onnx_weights, "onnx"), ModelSpec("e", weights, "onnx")]
    with serving(specs, batch_wait_ms=0) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["o"]["backend"] == models["e"]["backend"] == "onnx" and models["o"]["input_size"] == models["t"]["input_size"]
        for name in ("t", "o", "e"):
            response = c.post("/v1/detect", params={"model": name, "threshold": 0.05}, files=files)
            assert response.status_code == 200, response.text
            answers[name] = response.json()["images"]
    for onnx_name in ("o", "e"):
        compared = 0
        for t, o in zip(answers["t"], answers[onnx_name]):
            assert [d["label"] for d in t["detections"]] == [d["label"] for d in o["detections"]]
            np.testing.assert_allclose([d["box"] for d in t["detections"]], [d["box"] for d in o["detections"]], atol=1e-4)
            np.testing.assert_allclose([d["score"] for d in t["detections"]], [d["score"] for d in o["detections"]], atol=1e-4)
            compared += len(t["detections"])
        assert compared > 10


def test_an_onnx_model_serves_without_torch(onnx_weights):
    code = f"""
import sys, io, numpy as np
from PIL import Image
from fastapi.testclient import TestClient
from plaindet.serve.app import create_app
from plaindet.serve.backends import parse_model_specs
from plaindet.serve.settings import ServeConfig
buf = io.BytesIO(); Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(buf, format="PNG")
with TestClient(create_app(parse_model_specs([{str(onnx_weights)!r}]), ServeConfig(batch_wait_ms=0))) as c:
    import time
    while c.get("/readyz").status_code != 200:
        time.sleep(0.05)
    r = c.post("/v1/detect", content=buf.getvalue(), headers={{"content-type": "image/png"}})
    assert r.status_code == 200 and r.json()["images"][0]["width"] == 80, r.text
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_model_specs(weights, onnx_weights, tmp_path):
    specs = parse_model_specs([str(weights), f"second={onnx_weights}"])
    assert [(s.name, s.backend) for s in specs] == [("tiny", "torch"), ("second", "onnx")]
    assert parse_model_specs([str(weights)], "onnx")[0].backend == "onnx"  # exported at start-up
    with pytest.raises(UserError, match="two models are named 'tiny'"):
        parse_model_specs([str(weights), f"tiny={onnx_weights}"])
    with pytest.raises(UserError, match="runs on --backend onnx"):
        parse_model_specs([str(onnx_weights)], "torch")
    with pytest.raises(NotFound, match="does not exist"):
        parse_model_specs([str(tmp_path / "missing.safetensors")])
    with pytest.raises(UserError, match="must be letters"):
        parse_model_specs([f"a b={weights}"])


def test_serve_command_reports_user_errors(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app, ["serve", "--weights", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(cli_app, ["serve", "--weights", str(tmp_path / "x.onnx"), "--backend", "tf"])
    assert result.exit_code == 2 and "backend must be one of auto, torch, onnx" in result.output
    assert plaindet.serve.ServeConfig().host == "127.0.0.1"  # loopback unless told otherwise


def test_serve_options_are_the_config_fields():
    """Every ServeConfig field is a `plaindet serve` option with its help, and no other option exists
    besides --weights (the command line is derived, so it cannot drift)."""
    import dataclasses

    import typer.main

    params = {p.name: p for p in typer.main.get_command(cli_app).commands["serve"].params}
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    assert set(params) - {"weights"} == set(fields)
    for name, f in fields.items():
        # The derived help is the field's, with its default appended when it has one.
        assert params[name].help.startswith(f.metadata["help"]) and params[name].default is None, name


def test_the_wheel_holds_the_page(tmp_path):
    """The page's files are package data: a wheel built from this checkout has them."""
    import shutil
    import zipfile
    from pathlib import Path

    pytest.importorskip("setuptools", reason="building a wheel without isolation needs setuptools in this environment")
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src_copy"  # build a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(root / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("plaindet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"plaindet/serve/static/{n}" for n in ("index.html", "app.js", "style.css")} <= names
