"""Mutation fuzzing of everything plaindet reads from a file, with counts per target.

    python benchmarks/fuzz.py --budget-minutes 3 [--seed 0] [--timeout 10] [--max-rss-mb 3000]

Each target starts from a valid input (a COCO JSON file, a YOLO dataset, a VOC folder, an image, a
saved checkpoint, an ONNX file) and applies 1 to 3 random mutations drawn from what goes wrong in
real files and what attackers write: wrong types, missing keys, NaN/inf/negative/huge numbers,
duplicate ids, unicode and path-like names, deep nesting, multi-megabyte values, byte flips,
truncation, BOM and CRLF, entity payloads, lying headers, pickles under another name. An image goes
through every path that reads one: its header and pixels, ``predict``, one training step (transform,
loader, loss, backward), ``data show`` and ``OnnxDetector.predict``. Every input is run in a worker
process, and its outcome is one of:

- ``loaded``: read, no problem reported; ``problems``: read, with problems in its report;
- ``refused``: a plaindet ``UserError`` whose message names the input file (or its folder);
- ``crash``: any other exception, or a ``UserError`` that names no file;
- ``hang``: no answer within ``--timeout`` seconds (the worker is killed and restarted);
- ``memory``: the worker's RSS passed ``--max-rss-mb`` (killed and restarted).

The budget is split evenly over the targets. The table prints inputs tried and outcomes per target,
the worker's peak RSS, and the first few crashes in full. The exit code is 1 if anything crashed,
hung or ran out of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing as mp
import os
import pickle
import random
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

TARGETS = ("coco", "yolo", "voc", "image", "checkpoint", "onnx")

HOSTILE = [
    None, "", "x", -1, 0, 2**31, 2**63, 10**400, -(10**400), 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 0.5, True,
    [], {}, [1, 2, 3], {"a": {"b": [None]}}, "../../etc/passwd", "/dev/zero", "C:\\x\\y.jpg", "é漢字🙂", "a\x00b", "\ud800",
    "%s%n", "<script>", "1e5", "NaN",
]


def hostile(rng: random.Random):
    """A value drawn from :data:`HOSTILE`, or now and then a deep or large one."""
    roll = rng.random()
    if roll < 0.04:
        return "x" * rng.choice([10**5, 10**6, 10**7])  # up to a 10 MB string
    if roll < 0.07:
        value: object = 1
        for _ in range(rng.choice([100, 1000, 5000])):
            value = [value]
        return value
    # a fresh copy: a shared list or dict placed twice in one tree (or edited in place) would make a
    # cycle, or leak one input's edits into the next
    return copy.deepcopy(rng.choice(HOSTILE))


def mutate_tree(doc, rng: random.Random, edits: int):
    """Replace, delete or duplicate random nodes of a JSON-like tree, in place; returns the tree."""
    for _ in range(edits):
        node, path = doc, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append((node, key))
            node = node[key]
        if not path:
            return hostile(rng)
        parent, key = path[-1]
        action = rng.random()
        if action < 0.6:
            parent[key] = hostile(rng)
        elif action < 0.8 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key], allow_nan=True)) if _plain(parent[key]) else parent[key])
        else:
            parent[rng.choice(["id", "bbox", "file_name", "width", "extra", str(rng.random())])] = hostile(rng)
    return doc


def _plain(value) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (ValueError, TypeError, RecursionError):
        return False


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level accident: truncation, flipped bytes, inserted junk, a BOM or CRLF line ends."""
    action = rng.randrange(6)
    if action == 0 and data:
        return data[: rng.randrange(len(data))]
    if action == 1 and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if action == 2:
        at = rng.randrange(len(data) + 1)
        return data[:at] + os.urandom(rng.randint(1, 64)) + data[at:]
    if action == 3:
        return b"\xef\xbb\xbf" + data
    if action == 4:
        return data.replace(b"\n", b"\r\n").replace(b",", b",\r\n")
    return os.urandom(rng.randint(0, 4096))


def dump(doc) -> bytes:
    """JSON text of a mutated tree (NaN, Infinity, huge ints and lone surrogates as Python writes them)."""
    try:
        return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):  # an int too long for str(), or nesting json.dumps refuses
        return b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b', "annotations": [], "categories": []}'


# --- input makers: each writes one input under ``folder`` and returns the path the worker reads ------


def write_images(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((48, 64, 3), 120, np.uint8)
    Image.fromarray(pixels).save(folder / "a.jpg")
    Image.fromarray(pixels).save(folder / "b.png")


def make_coco(folder: Path, rng: random.Random) -> Path:
    write_images(folder / "images")
    doc = {
        "images": [{"id": i, "file_name": name, "width": 64, "height": 48} for i, name in enumerate(["a.jpg", "b.png", "a.jpg"], 1)],
        "annotations": [{"id": i, "image_id": 1 + i % 3, "category_id": 1 + i % 2, "bbox": [4 + i, 5, 20, 10], "area": 200, "iscrowd": 0} for i in range(6)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    data = dump(mutate_tree(doc, rng, rng.randint(1, 3)))
    if rng.random() < 0.2:
        data = mutate_bytes(data, rng)
    file = folder / "annotations" / "instances_train.json"
    file.parent.mkdir()
    file.write_bytes(data)
    return file


YOLO_FIELDS = ["0", "1", "5", "-1", "1.5", "0.5", "1e-3", "5E-1", "nan", "inf", "1e400", "0x1", "٣", "1,5", "", "0.5.5", "1" + "0" * 5000]


def make_yolo(folder: Path, rng: random.Random) -> Path:
    write_images(folder / "images" / "train")
    labels = folder / "labels" / "train"
    labels.mkdir(parents=True)
    for stem in ("a", "b"):
        lines = ["0 0.5 0.5 0.2 0.3", "1 0.25 0.25 0.1 0.1"]
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines) + 1)
            choice = rng.random()
            if choice < 0.4:
                lines.insert(i, " ".join(rng.choice(YOLO_FIELDS) for _ in range(rng.choice([1, 4, 5, 6, 7, 9]))))
            elif choice < 0.6:
                lines.insert(i, rng.choice(["", "   ", "\t", "\x00", "# comment", "\ufeff0 0.5 0.5 0.1 0.1"]))
            elif lines:
                fields = lines[i % len(lines)].split() or ["0"]
                fields[rng.randrange(len(fields))] = rng.choice(YOLO_FIELDS)
                lines[i % len(lines)] = " ".join(fields)
        data = "\n".join(lines).encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            data = mutate_bytes(data, rng)
        (labels / f"{stem}.txt").write_bytes(data)
    config = {"names": ["cat", "dog"], "train": "images/train"}
    if rng.random() < 0.3:
        config = mutate_tree(config, rng, 1)
    (folder / "data.yaml").write_bytes(dump(config))  # JSON is YAML
    return folder / "data.yaml"


def _laughs() -> str:
    entities = "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    return f'<!DOCTYPE a [<!ENTITY l0 "lol">{entities}]>'


XML_VALUES = ["1", "64", "-5", "1e9", "nan", "", "cat", "&amp;", "&undefined;", "]]>", "<b>", "\x01", "9" * 400]
XML_PREFIXES = ["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="latin-1"?>', "\ufeff", _laughs(),
                '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>', '<!DOCTYPE a SYSTEM "http://127.0.0.1:9/a.dtd">']


def make_voc(folder: Path, rng: random.Random) -> Path:
    write_images(folder / "JPEGImages")
    (folder / "Annotations").mkdir()
    for stem in ("a", "b"):
        values = {"filename": f"{stem}.jpg" if stem == "a" else "b.png", "width": "64", "height": "48", "name": "cat",
                  "xmin": "5", "ymin": "5", "xmax": "30", "ymax": "20", "difficult": "0"}
        for _ in range(rng.randint(1, 3)):
            values[rng.choice(list(values))] = rng.choice(XML_VALUES) if rng.random() < 0.8 else "&l9;"
        prefix = rng.choice(XML_PREFIXES) if rng.random() < 0.4 else ""
        objects = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                   "<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>").format(**values) * rng.choice([0, 1, 2])
        xml = f"{prefix}<annotation><filename>{values['filename']}</filename><size><width>{values['width']}</width>" \
              f"<height>{values['height']}</height></size>{objects}</annotation>"
        data = xml.encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            data = mutate_bytes(data, rng)
        (folder / "Annotations" / f"{stem}.xml").write_bytes(data)
    return folder


IMAGE_MODES = ["RGB", "L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1"]
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]


def _bomb_png(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def make_image(folder: Path, rng: random.Random) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    suffix = rng.choice([".jpg", ".png", ".webp", ".bmp"])
    roll = rng.random()
    if roll < 0.05:
        data = _bomb_png(*rng.choice([(40_000, 40_000), (100_000, 100_000), (2**31 - 1, 1)]))
    else:
        size = rng.choice([(1, 1), (20_000, 10), (10, 20_000), (rng.randint(1, 64), rng.randint(1, 64))])
        mode, fmt = rng.choice(IMAGE_MODES), rng.choice(IMAGE_FORMATS)
        buffer = io.BytesIO()
        try:
            image = Image.new(mode, size, color=rng.randrange(256) if mode not in ("CMYK", "RGB", "RGBA") else None)
            exif = Image.Exif()
            exif[0x0112] = rng.randint(0, 9)
            if fmt in ("GIF", "WEBP") and rng.random() < 0.5:  # animated
                frames = [image.convert("RGB").convert(mode if fmt == "GIF" and mode in ("P", "L") else "RGB") for _ in range(3)]
                frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=50)
            else:
                image.save(buffer, format=fmt, exif=exif.tobytes())
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # this format can't hold this mode or size
            buffer = io.BytesIO()
            Image.new("RGB", (16, 12)).save(buffer, format="PNG")
        data = buffer.getvalue()
        if rng.random() < 0.4:
            data = mutate_bytes(data, rng)
    path = folder / f"image{suffix}"
    path.write_bytes(data)
    return path


def _tiny_model():
    import plaindet

    return plaindet.create_model("plaindet-t", num_classes=2, image_size=64, backbone=dict(depth=1, width=64, heads=1), neck_channels=16)


def make_checkpoint(folder: Path, rng: random.Random, seed_file: Path) -> Path:
    raw = seed_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    roll = rng.random()
    if roll < 0.45:  # the config in the header
        config = mutate_tree(json.loads(header["__metadata__"]["config"]), rng, rng.randint(1, 3))
        header["__metadata__"]["config"] = dump(config).decode("utf-8", "surrogatepass")
    elif roll < 0.7:  # the tensor table: offsets, dtypes, shapes
        name = rng.choice([k for k in header if k != "__metadata__"])
        header[name][rng.choice(["data_offsets", "dtype", "shape"])] = rng.choice(
            [[0, 10**12], [5, 1], "F64", "I8", "XX", [10**6, 10**6], [-1], [], None, copy.deepcopy(rng.choice(HOSTILE))]
        )
    if roll < 0.7:
        text = json.dumps(header).encode("utf-8", "surrogatepass")
        data = struct.pack("<Q", len(text)) + text + raw[8 + n :]
    elif roll < 0.8:
        data = pickle.dumps({"state_dict": list(range(10))}) if rng.random() < 0.5 else b"PK\x03\x04" + os.urandom(200)
    else:
        data = mutate_bytes(raw, rng)
    path = folder / "model.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_onnx(folder: Path, rng: random.Random) -> Path:
    import numpy as np
    import onnx

    helper = onnx.helper
    images = helper.make_tensor_value_info("images", onnx.TensorProto.UINT8, [1, 3, 32, 32])
    if rng.random() < 0.8:  # constant detections: boxes (1, 2, 4), scores (1, 2), labels (1, 2)
        values = {"boxes": np.array([[[1, 2, 10, 12], [0, 0, 5, 5]]], np.float32), "scores": np.array([[0.9, 0.4]], np.float32),
                  "labels": np.array([[1, 0]], np.int64)}
        nodes = [helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v)) for k, v in values.items()]
        outs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in values.items()]
    else:  # a graph of another kind: copies of its input
        n = rng.choice([1, 3])
        outs = [helper.make_tensor_value_info(f"o{i}", onnx.TensorProto.UINT8, [1, 3, 32, 32]) for i in range(n)]
        nodes = [helper.make_node("Identity", ["images"], [f"o{i}"]) for i in range(n)]
    model = helper.make_model(helper.make_graph(nodes, "g", [images], outs), ir_version=10, opset_imports=[helper.make_opsetid("", 20)])
    meta = {"class_names": '["a", "b"]', "category_ids": "[1, 2]", "image_size": "32", "input_size": "[32, 32]", "max_detections": "3"}
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(meta))
        if rng.random() < 0.2:
            del meta[key]
        else:
            meta[key] = rng.choice([json.dumps(rng.choice(HOSTILE)), "x", "", "[[", "-1", "[1]", "1e9", "[" * 10000])
    helper.set_model_props(model, meta)
    data = model.SerializeToString()
    if rng.random() < 0.25:
        data = mutate_bytes(data, rng)
    path = folder / "model.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- the worker -------------------------------------------------------------------------------------


def _run_target(target: str, path: Path, model) -> str:
    """Read ``path`` as ``target`` does; returns "loaded" or "problems", or raises."""
    import numpy as np

    import plaindet
    from plaindet.data import load_dataset
    from plaindet.data.images import image_size, read_image

    if target in ("coco", "yolo", "voc"):
        ds = load_dataset(path)
        for sample in ds.samples:  # the contract every reader promises
            b = sample.boxes
            assert np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all(), "box contract broken"
        return "problems" if ds.report.problems else "loaded"
    if target == "image":
        width, height = image_size(path)
        pixels = read_image(path)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, "not uint8 RGB"
        model.predict(str(path), image_size=64)
        _through_training(model, path, width, height)
        _through_data_show(path, width, height)
        onnx_detector().predict(str(path))
        return "loaded"
    if target == "checkpoint":
        plaindet.load(path)
        return "loaded"
    detector = plaindet.load(path)
    detector.predict(np.zeros((20, 30, 3), np.uint8), image_size=min(detector.input_size))
    return "loaded"


def _through_training(model, path: Path, width: int, height: int) -> None:
    """One training step's data path and loss on the image: the training transform, the loader's
    collation, forward, loss and backward (one box covering the image)."""
    import numpy as np
    import torch

    from plaindet.data import DetectionDataset, Sample
    from plaindet.data.collate import make_loader
    from plaindet.data.transforms import TransformedDataset, train_transform

    sample = Sample(path, width, height, np.array([[0, 0, width, height]], np.float32), np.array([0]), 1)
    dataset = TransformedDataset(DetectionDataset([sample], ["a", "b"], [1, 2]), train_transform(64), seed=0)
    batch = next(iter(make_loader(dataset, 1, shuffle=False, seed=0)))
    model.train()
    losses = model.criterion()(model(batch["images"], batch["targets"]), batch["targets"])
    model.zero_grad()
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]), "non-finite loss"
    model.eval()


def _through_data_show(path: Path, width: int, height: int) -> None:
    """``plaindet data show`` on a one-image COCO dataset of the image (its header read again)."""
    import tempfile

    from plaindet.viz import run_show

    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        coco = Path(folder) / "instances_train.json"
        image = {"id": 1, "file_name": str(path), "width": width, "height": height}
        box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, width, height]}
        coco.write_text(json.dumps({"images": [image], "annotations": [box], "categories": [{"id": 1, "name": "a"}]}))
        with contextlib.redirect_stdout(io.StringIO()):  # its summary line, once per input
            run_show(coco, Path(folder) / "show", n=1)


_ONNX = {}


def onnx_detector():
    """The tiny model as an ONNX file, exported once per worker, for ``OnnxDetector.predict``."""
    if "detector" not in _ONNX:
        import tempfile

        from plaindet.export import OnnxDetector, export_onnx

        file = Path(tempfile.mkdtemp(prefix="fuzz-onnx-")) / "tiny.onnx"
        export_onnx(_tiny_model().eval(), file)
        _ONNX["detector"] = OnnxDetector(file)
    return _ONNX["detector"]


def worker(conn) -> None:
    import resource

    import torch

    from plaindet.errors import UserError

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # Pillow's notes on broken files; plaindet turns the ones that matter into errors
    model = _tiny_model()
    onnx_detector()  # exported before the first input, so that its seconds count against no input's timeout
    conn.send("ready")
    while True:
        target, path, root = conn.recv()
        try:
            outcome, detail = _run_target(target, Path(path), model), ""
        except UserError as e:
            named = str(root) in str(e)
            outcome, detail = ("refused", "") if named else ("crash", f"UserError naming no file: {e}"[:500])
        except Exception as e:  # noqa: BLE001 (the point: anything else is a crash)
            frame = traceback.extract_tb(e.__traceback__)[-1]
            outcome, detail = "crash", f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name}): {str(e)[:160]}"
        conn.send((outcome, detail, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


class Worker:
    """A worker process that answers one input at a time; killed and restarted on a hang or memory blow-up."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=worker, args=(child,), daemon=True)
        self.process.start()
        assert self.conn.recv() == "ready"

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def run(self, target: str, path: Path, root: Path, timeout: float, max_rss_mb: float) -> tuple[str, str, float]:
        self.conn.send((target, str(path), str(root)))
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.05):
            rss = self.rss_mb()
            if rss > max_rss_mb or time.monotonic() > deadline or not self.process.is_alive():
                kind = "memory" if rss > max_rss_mb else "hang" if self.process.is_alive() else "crash"
                self.process.kill()
                self.process.join()
                self.start()
                return kind, f"{target} input {path}: {kind} (RSS {rss:.0f} MB)", rss
        return self.conn.recv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--max-rss-mb", type=float, default=3000.0, help="worker RSS that counts as a memory blow-up")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    targets = args.targets.split(",")
    warnings.simplefilter("ignore")
    rng = random.Random(args.seed)
    outcomes = ("loaded", "problems", "refused", "crash", "hang", "memory")
    counts = {t: dict.fromkeys(outcomes, 0) for t in targets}
    peak = dict.fromkeys(targets, 0.0)
    crashes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="plaindet-fuzz-") as tmp:
        tmp = Path(tmp)
        seed_checkpoint = _tiny_model().save(tmp / "seed.safetensors")
        makers = {
            "coco": make_coco, "yolo": make_yolo, "voc": make_voc, "image": make_image, "onnx": make_onnx,
            "checkpoint": lambda folder, r: make_checkpoint(folder, r, seed_checkpoint),
        }
        pool = Worker()
        per_target = args.budget_minutes * 60 / len(targets)
        for target in targets:
            end = time.monotonic() + per_target
            n = 0
            while time.monotonic() < end:
                folder = tmp / target / str(n)
                path = makers[target](folder, rng)
                outcome, detail, rss = pool.run(target, path, folder, args.timeout, args.max_rss_mb)
                counts[target][outcome] += 1
                peak[target] = max(peak[target], rss)
                if detail:
                    crashes.append(f"[{target} #{n}] {detail}")
                _remove(folder)
                n += 1
        pool.process.kill()
    print(f"fuzz: {args.budget_minutes:g} min budget, seed {args.seed}, timeout {args.timeout:g} s per input, memory bound {args.max_rss_mb:g} MB RSS")
    print(f"| target | inputs | {' | '.join(outcomes)} | worker peak RSS (MB) |")
    print("|---" * (len(outcomes) + 3) + "|")
    for t in targets:
        c = counts[t]
        print(f"| {t} | {sum(c.values())} | {' | '.join(str(c[o]) for o in outcomes)} | {peak[t]:.0f} |")
    total = {o: sum(counts[t][o] for t in targets) for o in outcomes}
    print(f"| **all** | {sum(total.values())} | {' | '.join(str(total[o]) for o in outcomes)} | {max(peak.values()):.0f} |")
    kinds: dict[str, list[str]] = {}
    for line in crashes:  # grouped by exception type and where it was raised
        kinds.setdefault(line.split("] ", 1)[1].split(": ", 1)[0], []).append(line)
    for kind, lines in kinds.items():
        print(f"\n{len(lines)} x {kind}; first: {lines[0]}")
    return 1 if total["crash"] or total["hang"] or total["memory"] else 0


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
