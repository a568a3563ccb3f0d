"""Checkpoint and ONNX files made to hurt: every one is refused with a plaindet error naming the file,
before anything is allocated, unpickled or run. (Truncated and zero-filled checkpoints are in
``test_detector.py``; these are the files someone crafts.)"""

from __future__ import annotations

import json
import re
import pickle
import struct
import time
from pathlib import Path

import onnx
import pytest
import torch

import plaindet
from plaindet.errors import CheckpointError, ConfigError, UserError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny plaindet-t, as (raw bytes, header dict)."""
    model = plaindet.create_model("plaindet-t", num_classes=2, image_size=64, backbone=dict(depth=1, width=64, heads=1), neck_channels=16)
    path = model.save(tmp_path_factory.mktemp("ckpt") / "good.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, json.loads(raw[8 : 8 + n])


def _rewrite(raw: bytes, header: dict) -> bytes:
    """The same tensor bytes behind a new header."""
    (n,) = struct.unpack("<Q", raw[:8])
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def _with_config(saved, **changes) -> bytes:
    """The checkpoint with its config changed: ``backbone__width=...`` sets ``config["backbone"]["width"]``."""
    raw, header = saved
    header = json.loads(json.dumps(header))
    config = json.loads(header["__metadata__"]["config"])
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    header["__metadata__"]["config"] = json.dumps(config)
    return _rewrite(raw, header)


def _refused(tmp_path, data: bytes, match: str, name: str = "bad.safetensors") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=match) as info:
        plaindet.load(path)
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(backbone__width=10**7), r"backbone\.width=10000000 is over the limit of 100,000 .*MAX_SIZE"),
        (dict(backbone__depth=10**6), r"backbone\.depth=1000000 is over the limit of 256 .*MAX_LAYERS"),
        (dict(num_classes=10**9, class_names=[], category_ids=[]), r"num_classes=1000000000 is over the limit"),
        (dict(backbone__width=1e308), r"backbone\.width=1e\+308 is over the limit"),
        (dict(backbone__width=10**400), r"backbone\.width=\(an integer of 1329 bits\) is over the limit"),
        (dict(backbone__width=60_000, backbone__heads=1, backbone__depth=12), r"billion parameters, over the limit of 2 billion"),
        (dict(backbone__width=-8), r"does not describe a model that can be built"),
    ],
)
def test_absurd_config_is_refused_before_any_allocation(saved, tmp_path, monkeypatch, change, match):
    """Without the limits a width of 10^7 reached torch's allocator (a 30 GB request) and a depth of
    10^6 ran for minutes building blocks; now both stop at the config, before torch builds anything."""

    initialize = torch.nn.Linear.reset_parameters

    def only_on_meta(self):  # the size check may build on the meta device (shapes only), never for real
        assert self.weight.device.type == "meta", "a model was built on the CPU"
        initialize(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", only_on_meta)
    start = time.perf_counter()
    _refused(tmp_path, _with_config(saved, **change), match)
    assert time.perf_counter() - start < 10


def test_absurd_overrides_are_refused_by_create_model():
    with pytest.raises(ConfigError, match=r"plaindet-t: backbone\.width=10000000 is over the limit"):
        plaindet.create_model("plaindet-t", backbone=dict(width=10**7))
    with pytest.raises(ConfigError, match=r"plaindet-t: num_classes=1000000000 is over the limit"):
        plaindet.create_model("plaindet-t", num_classes=10**9)
    with pytest.raises(ConfigError, match="billion parameters"):
        plaindet.create_model("plaindet-t", backbone=dict(width=60_000, heads=1))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(name="no-such-model"), "unknown model 'no-such-model'"),
        (dict(name=5), "has no model name"),
        (dict(surprise=1), "unknown PlainDetConfig key 'surprise'"),
        (dict(backbone__width="wide"), r"backbone\.width: expected int, got 'wide'"),
        (dict(backbone=[1, 2]), "expected a mapping"),
    ],
)
def test_unknown_family_key_or_type_names_the_file(saved, tmp_path, change, match):
    _refused(tmp_path, _with_config(saved, **change), match)


def test_config_that_is_not_an_object_or_nested_too_deeply(saved, tmp_path):
    raw, header = saved
    for text, match in (("[1, 2]", "not a JSON object"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("{oops", "not valid JSON")):
        changed = json.loads(json.dumps(header))
        changed["__metadata__"]["config"] = text
        _refused(tmp_path, _rewrite(raw, changed), match)


def test_header_that_lies_about_offsets_dtype_or_shape(saved, tmp_path):
    raw, header = saved
    name = next(k for k in header if k != "__metadata__")
    for field, value in (("data_offsets", [0, 10**12]), ("dtype", "F64"), ("dtype", "Q99"), ("shape", [10**6, 10**6])):
        changed = json.loads(json.dumps(header))
        changed[name][field] = value
        _refused(tmp_path, _rewrite(raw, changed), "not a readable safetensors file")
    _refused(tmp_path, struct.pack("<Q", 2**62) + raw[8:], "not a readable safetensors file")
    changed = json.loads(json.dumps(header))  # a shape of the right size but the wrong layout: torch raised RuntimeError
    changed["head.level_scales"]["shape"] = [*header["head.level_scales"]["shape"], 1]
    _refused(tmp_path, _rewrite(raw, changed), "size mismatch for head.level_scales")


def test_pickle_or_torch_save_renamed_safetensors_is_never_unpickled(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    pickled = pickle.dumps(Boom())
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    _refused(tmp_path, pickled, "it is a Python pickle; it is not unpickled", name="pickle.safetensors")
    zipped = tmp_path / "zipped.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    _refused(tmp_path, zipped.read_bytes(), "it is a zip archive, as torch.save writes", name="zipped.safetensors")


# ------------------------------------------------------------------------------------------------
# ONNX files


def _onnx_file(path, metadata: dict[str, str], outputs: int | None = None):
    """A tiny graph carrying ``metadata``: uint8 images in, constant detections out (boxes, scores and
    labels), or with ``outputs`` given, that many copies of the images."""
    import numpy as np

    helper = onnx.helper
    images = helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, [1, 3, 32, 32])
    if outputs is None:
        values = {"boxes": np.array([[[1, 2, 10, 12], [0, 0, 5, 5]]], np.float32), "scores": np.array([[0.9, 0.1]], np.float32),
                  "labels": np.array([[1, 0]], np.int64)}
        nodes = [helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v)) for k, v in values.items()]
        outs = [helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in values.items()]
    else:
        outs = [helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UINT8, [1, 3, 32, 32]) for i in range(outputs)]
        nodes = [helper.make_node("Identity", ["images"], [f"out{i}"]) for i in range(outputs)]
    model = helper.make_model(helper.make_graph(nodes, "g", [images], outs), ir_version=10, opset_imports=[helper.make_opsetid("", 20)])
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


GOOD_METADATA = {"class_names": '["a", "b"]', "image_size": "32", "input_size": "[32, 32]", "max_detections": "10"}


@pytest.mark.parametrize(
    "key, value",
    [
        ("class_names", "[a"),
        ("class_names", "5"),
        ("class_names", "[" * 100_000),
        ("category_ids", "{"),
        ("image_size", "big"),
        ("image_size", "-3"),
        ("input_size", "[32]"),
        ("input_size", "[-1, 1e9]"),
        ("max_detections", "x"),
    ],
)
def test_onnx_metadata_of_the_wrong_kind_names_the_file_and_entry(tmp_path, key, value):
    """Each of these raised a bare JSONDecodeError, ValueError, TypeError or RecursionError before,
    or loaded and failed later inside predict."""
    path = _onnx_file(tmp_path / "m.onnx", {**GOOD_METADATA, key: value})
    with pytest.raises(UserError, match=f"its metadata {key}=.* is not ") as info:
        plaindet.load(path)
    assert str(path) in str(info.value)


def test_onnx_graph_that_is_not_a_detector(tmp_path):
    import numpy as np

    detector = plaindet.load(_onnx_file(tmp_path / "ok.onnx", GOOD_METADATA))
    assert detector.input_size == (32, 32) and len(detector.predict(np.zeros((16, 16, 3), np.uint8), threshold=0.5)) == 1
    for outputs in (1, 3):  # the wrong number of outputs, or three of the wrong rank (which predict failed on)
        path = _onnx_file(tmp_path / f"{outputs}.onnx", GOOD_METADATA, outputs=outputs)
        with pytest.raises(UserError, match=f"not a plaindet ONNX graph .*{outputs} outputs") as info:
            plaindet.load(path)
        assert str(path) in str(info.value)


def test_onnx_metadata_that_is_not_utf8(tmp_path):
    path = _onnx_file(tmp_path / "m.onnx", {**GOOD_METADATA, "model": "XXXX"})
    path.write_bytes(path.read_bytes().replace(b"XXXX", b"\xff\xfe\xfd\xfc"))  # a UnicodeDecodeError escaped before
    with pytest.raises(UserError, match="its metadata is not UTF-8 text") as info:
        plaindet.load(path)
    assert str(path) in str(info.value)


def test_onnx_labels_outside_the_class_list(tmp_path):
    """A graph whose labels index past its class names raised IndexError inside predict (found by benchmarks/fuzz.py)."""
    import numpy as np

    path = _onnx_file(tmp_path / "m.onnx", {**GOOD_METADATA, "class_names": '["only"]'})
    with pytest.raises(UserError, match="its graph gave class 1, but its metadata names 1 classes") as info:
        plaindet.load(path).predict(np.zeros((16, 16, 3), np.uint8))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x08\x07\x12", pickle.dumps({"a": 1}), bytes(range(256)) * 20])
def test_onnx_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable ONNX file") as info:
        plaindet.OnnxDetector(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------
# VOC XML: entity declarations and external DTDs are refused, never expanded or fetched


def _laughs(levels: int = 9) -> str:
    entities = "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">\n' for i in range(1, levels + 1))
    return f'<?xml version="1.0"?>\n<!DOCTYPE a [\n<!ENTITY lol0 "lol">\n{entities}]>\n<annotation><filename>&lol{levels};</filename></annotation>'


@pytest.mark.parametrize(
    "xml, text",
    [
        (_laughs(), "declares entity 'lol0'; entity declarations are refused"),
        ('<!DOCTYPE a [<!ENTITY a "' + "x" * 50_000 + '">]><annotation><filename>' + "&a;" * 20_000 + "</filename></annotation>", "declares entity 'a'"),
        ('<!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]><annotation><filename>&xxe;</filename></annotation>', "declares entity 'xxe'"),
        ('<!DOCTYPE a [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><annotation/>', "declares entity 'p'"),
        ('<!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/voc.dtd"><annotation/>', "an external DTD .* is never fetched"),
    ],
    ids=["billion-laughs", "quadratic-blowup", "external-entity", "external-parameter-entity", "external-dtd"],
)
def test_voc_entity_payloads_are_refused_not_expanded(make_voc, tmp_path, monkeypatch, xml, text):
    """Before, the billion laughs took 0.6 s to reach expat's amplification limit (and would expand
    on an expat older than 2.4); now the first entity declaration stops the parse."""
    import builtins

    from plaindet.data import load_dataset

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: pytest.fail("secret read") if str(f) == str(secret) else real_open(f, *a, **k))
    root = make_voc({"1": (64, 48, [("cat", 1, 1, 5, 5, False)]), "2": xml.replace("{secret}", str(secret))})
    start = time.perf_counter()
    ds = load_dataset(root)
    assert time.perf_counter() - start < 5
    problems = [p for p in ds.report.problems if p.kind == "malformed_xml"]
    assert len(ds) == 1 and len(problems) == 1
    assert problems[0].file.endswith("2.xml") and "refused XML" in problems[0].message
    assert re.search(text, problems[0].message)


def test_voc_bare_doctype_is_still_read(make_voc):
    from plaindet.data import load_dataset

    xml = "<!DOCTYPE annotation><annotation><filename>1.jpg</filename><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    ds = load_dataset(make_voc({"1": xml}))
    assert len(ds) == 1 and ds.class_names == ["cat"]


# ------------------------------------------------------------------------------------------------
# Images: a decompression bomb is refused by a pixel limit the user can raise


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG of under a kilobyte whose header says ``width x height`` (1-bit gray): a bomb if decoded."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    first_rows = zlib.compress((b"\x00" * (1 + (width + 7) // 8)) * 8, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", first_rows) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_with_the_limit_to_raise(make_yolo, tmp_path, monkeypatch):
    from PIL import Image

    from plaindet.data import load_dataset
    from plaindet.data.images import ImageTooLarge, image_size, read_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(40_000, 40_000))  # 1.6 gigapixels, 6.4 GB as RGB
    start = time.perf_counter()
    for read in (image_size, read_image):
        with pytest.raises(ImageTooLarge, match=r"bomb\.png: image is too large .*PIL\.Image\.MAX_IMAGE_PIXELS = <pixels>"):
            read(bomb)
    root = make_yolo({"train": {"a.jpg": (64, 48, "0 0.5 0.5 0.2 0.2\n")}})
    (root.parent / "images" / "train" / "b.png").write_bytes(bomb.read_bytes())
    ds = load_dataset(root)
    assert len(ds) == 1 and any("too large to decode safely" in p.message and p.file.endswith("b.png") for p in ds.report.problems)
    assert time.perf_counter() - start < 5
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000 * 40_000)  # the user's choice: the header is then read
    assert image_size(bomb) == (40_000, 40_000)


# ------------------------------------------------------------------------------------------------
# Interrupted writes: a writer SIGKILLed mid-write leaves the previous file or the complete new one

KILL_MID_WRITE = """
import os, signal, sys, pathlib
import onnx

calls = 0
real_write_text, real_save = pathlib.Path.write_text, onnx.save

def torn_write_text(self, text, *args, **kwargs):  # the n-th file written under argv[3] is torn, then the process dies
    global calls
    calls += str(self).startswith(sys.argv[3])
    if calls == int(sys.argv[2]) and str(self).startswith(sys.argv[3]):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write_text(self, text, *args, **kwargs)

def torn_save(proto, path, *args, **kwargs):
    pathlib.Path(path).write_bytes(proto.SerializeToString()[:1000])
    os.kill(os.getpid(), signal.SIGKILL)

pathlib.Path.write_text, onnx.save = torn_write_text, torn_save
exec(sys.argv[1])
"""


def _killed_mid_write(code: str, nth_text_file: int = 1, under: Path = Path("/nowhere")) -> None:
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(plaindet.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, code, str(nth_text_file), str(under)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def test_convert_killed_mid_write_leaves_no_output_folder(make_yolo, tmp_path):
    """Conversion writes into a hidden staging folder renamed at the end: after a SIGKILL in the
    middle of a file, the output folder does not exist, and the next run writes it whole."""
    from plaindet.data.convert import convert_dataset

    images = {f"{i}.jpg": (64, 48, f"{i % 2} 0.5 0.5 0.{i + 1} 0.2\n") for i in range(4)}
    source = make_yolo({"train": images})
    convert_dataset(source, "coco", tmp_path / "whole")
    convert_dataset(tmp_path / "whole", "yolo", tmp_path / "whole-yolo")
    convert_dataset(tmp_path / "whole", "voc", tmp_path / "whole-voc")
    runs = (("coco", source, "killed", 1), ("yolo", tmp_path / "whole", "killed-yolo", 3), ("voc", tmp_path / "whole", "killed-voc", 2))
    for target, src, out, nth in runs:
        code = f"from plaindet.data.convert import convert_dataset; convert_dataset({str(src)!r}, {target!r}, {str(tmp_path / out)!r})"
        _killed_mid_write(code, nth, tmp_path / f".{out}.partial")
        assert not (tmp_path / out).exists()
        convert_dataset(src, target, tmp_path / out)
        reference = tmp_path / {"coco": "whole", "yolo": "whole-yolo", "voc": "whole-voc"}[target]
        written = sorted(p.relative_to(tmp_path / out) for p in (tmp_path / out).rglob("*") if p.suffix in (".json", ".txt", ".yaml", ".xml"))
        assert written and all((tmp_path / out / p).read_bytes() == (reference / p).read_bytes() for p in written)


def test_export_killed_mid_write_keeps_the_previous_file(saved, tmp_path):
    raw, _ = saved
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(raw)
    target = tmp_path / "m.onnx"
    from plaindet.export.onnx import export_onnx

    export_onnx(plaindet.load(checkpoint), target, image_size=64)
    before = target.read_bytes()
    _killed_mid_write(f"import plaindet; from plaindet.export.onnx import export_onnx; export_onnx(plaindet.load({str(checkpoint)!r}), {str(target)!r}, image_size=64)")
    assert target.read_bytes() == before and plaindet.load(target).input_size == (64, 64)
    from plaindet.export.quantize import quantize_onnx

    half = quantize_onnx(target, tmp_path / "m-fp16.onnx", "fp16")
    before = half.read_bytes()
    _killed_mid_write(f"from plaindet.export.quantize import quantize_onnx; quantize_onnx({str(target)!r}, {str(half)!r}, 'fp16')")
    assert half.read_bytes() == before and plaindet.load(half).precision == "fp16"
