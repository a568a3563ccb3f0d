"""Datasets of COCO's size: loading (against ``json.load`` of the same file), checking, converting,
the first training batch and evaluation, each at 1k, 10k and 120k images; RSS during training.

    python benchmarks/bench_scale.py [--sizes 1000,10000,120000] [--keep DIR] [--train-steps 1000]

Writes (on disk, synthetic, deterministic: seed 0) a COCO JSON file per size with COCO train2017's
box statistics (7.3 boxes per image on average, Poisson; 80 classes; boxes inside 640x480 images)
and one 640x480 JPEG hard-linked as every image (a real file to decode, no disk per image). Each
measurement runs in a fresh process, which reports its wall time and its peak RSS over the
interpreter's own baseline (``ru_maxrss`` minus the RSS before the call):

- ``json.load`` of the file, and ``load_dataset(check_images=False)``;
- ``data check`` without decoding (``check_dataset(decode=False)``: every image's header is read);
- ``data convert`` to YOLO (``convert_dataset``: a label file per image, images hard-linked);
- the first training batch (load, then batch 8 at 64 px through the training transform and loader);
- evaluation (``evaluate_coco``) of one prediction per ground-truth box (the box moved a little).

Prints a table and the growth factor per 10x images of each. With ``--train-steps N`` (default
1,000; 0 skips it) it then trains plaindet-t on the largest set at 64 px (batch 8, 1 data worker)
and prints the RSS of the process and its workers at step 10 and at step N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MEASURE = """
import json, resource, sys, time
from pathlib import Path

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

kind, file = sys.argv[1], sys.argv[2]
from plaindet.data import load_dataset  # imports before the clock starts: each measures the work alone
if kind != "json.load":
    import plaindet.data.check, plaindet.data.collate, plaindet.data.convert, plaindet.data.transforms, plaindet.engine.evaluate
before = rss_mb()
start = time.perf_counter()
if kind == "json.load":
    with open(file) as f:
        result = len(json.load(f)["annotations"])
elif kind == "load_dataset":
    result = sum(len(s.boxes) for s in load_dataset(file, check_images=False).samples)
elif kind == "check":
    from plaindet.data.check import check_dataset
    result = sum(c.stats.boxes for c in check_dataset(file, decode=False))
elif kind == "convert":
    import tempfile
    from plaindet.data.convert import convert_dataset
    with tempfile.TemporaryDirectory(dir=Path(file).parents[2]) as out:
        convert_dataset(file, "yolo", Path(out) / "yolo")
        result = sum(1 for _ in (Path(out) / "yolo" / "labels").rglob("*.txt"))
elif kind == "first_batch":
    from plaindet.data import load_dataset
    from plaindet.data.collate import make_loader
    from plaindet.data.transforms import TransformedDataset, train_transform
    dataset = load_dataset(file, check_images=False)
    batch = next(iter(make_loader(TransformedDataset(dataset, train_transform(64), seed=0), 8, shuffle=True, seed=0)))
    result = len(batch["images"]) if isinstance(batch, dict) else len(batch[0])
elif kind == "evaluate":
    import numpy as np
    from plaindet.data import load_dataset
    from plaindet.engine.evaluate import evaluate_coco
    dataset = load_dataset(file, check_images=False)
    rng = np.random.default_rng(0)
    predictions = []
    for s in dataset.samples:
        b = s.boxes + np.tile(rng.normal(0, 2, (len(s.boxes), 2)), 2).astype(np.float32)  # each box moved, its size kept
        for (x1, y1, x2, y2), label, score in zip(b.tolist(), s.labels.tolist(), rng.uniform(0.05, 1, len(b)).tolist()):
            predictions.append({"image_id": s.image_id, "category_id": dataset.category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    before = rss_mb()
    start = time.perf_counter()
    result = len(predictions)
    evaluate_coco(dataset, predictions, per_class=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, "boxes": result}))
"""


def write_dataset(folder: Path, images: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image_dir = folder / "images" / "train"
    image_dir.mkdir(parents=True)
    original = folder / "image.jpg"
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(original, quality=50)
    counts = rng.poisson(7.3, images)
    entries, annotations = [], []
    for i, n in enumerate(counts, 1):
        name = f"{i:012d}.jpg"
        if i % 50_000 == 0:  # a file system allows some 65,000 links to one file: a fresh copy now and then
            original = folder / f"image{i}.jpg"
            original.write_bytes((folder / "image.jpg").read_bytes())
        os.link(original, image_dir / name)
        entries.append({"id": i, "file_name": name, "width": 640, "height": 480})
        w, h = rng.uniform(4, 300, n), rng.uniform(4, 300, n)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        labels = rng.integers(1, 81, n)
        for k in range(n):
            box = [round(float(x[k]), 2), round(float(y[k]), 2), round(float(w[k]), 2), round(float(h[k]), 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(labels[k]), "bbox": box,
                                "area": round(box[2] * box[3], 2), "iscrowd": 0})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": ""} for c in range(1, 81)]
    file = folder / "annotations" / "instances_train.json"
    file.parent.mkdir()
    file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return file


def measure(kind: str, file: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, kind, str(file)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} on {file} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


TRAIN_RSS = """
import sys
from pathlib import Path
from plaindet.engine import train as engine
from plaindet.engine.train_config import TrainConfig

file, steps = sys.argv[1], int(sys.argv[2])
def rss_mb(pid="self"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def children():
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    return pids
seen = {}
step = engine._Run.optimizer_step
def recording(self, *args, **kwargs):
    step(self, *args, **kwargs)
    if self.progress.step in (10, steps):
        seen[self.progress.step] = (rss_mb(), sum(rss_mb(p) for p in children()))
engine._Run.optimizer_step = recording
engine.train(TrainConfig(model="plaindet-t", data=file, val_split="train", out=str(Path(file).parents[1] / "run"), image_size=64, batch_size=8,
                         workers=1, max_steps=steps, epochs=1000, eval_every=0, warmup_steps=10))
for k in sorted(seen):
    print(f"step {k:,}: process {seen[k][0]:.0f} MB, data worker {seen[k][1]:.0f} MB")
"""


KINDS = {  # column title: measurement kind
    "json.load": "json.load", "load_dataset": "load_dataset", "data check (headers)": "check", "convert to YOLO": "convert",
    "first batch": "first_batch", "evaluate (1 prediction a box)": "evaluate",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,120000")
    parser.add_argument("--keep", type=Path, default=None, help="write the datasets here and keep them")
    parser.add_argument("--train-steps", type=int, default=1000, help="train on the largest set this many steps, printing RSS (0: skip)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="plaindet-scale-"))
    rows = []
    for n in sizes:
        folder = root / f"coco{n}"
        file = folder / "annotations" / "instances_train.json"
        if not file.is_file():
            file = write_dataset(folder, n)
        results = {title: measure(kind, file) for title, kind in KINDS.items()}
        assert results["json.load"]["boxes"] == results["load_dataset"]["boxes"] == results["data check (headers)"]["boxes"], results
        rows.append((n, results["json.load"]["boxes"], file.stat().st_size / 2**20, results))
        print(json.dumps({"images": n, **results}), flush=True)
    print("\n| images | boxes | JSON MB | json.load s | json.load MB | load_dataset s | load_dataset MB | time vs json.load | memory vs json.load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, boxes, mb, r in rows:
        base, ours = r["json.load"], r["load_dataset"]
        print(f"| {n:,} | {boxes:,} | {mb:.0f} | {base['seconds']:.2f} | {base['peak_mb']:.0f} | {ours['seconds']:.2f} | "
              f"{ours['peak_mb']:.0f} | {ours['seconds'] / base['seconds']:.2f}x | {ours['peak_mb'] / max(base['peak_mb'], 1):.2f}x |")
    titles = list(KINDS)[1:]
    print("\n| images | " + " | ".join(f"{t} s / MB" for t in titles) + " |")
    print("|---|" + "---:|" * len(titles))
    for n, _, _, r in rows:
        print(f"| {n:,} | " + " | ".join(f"{r[t]['seconds']:.2f} / {r[t]['peak_mb']:.0f}" for t in titles) + " |")
    print()
    for (n0, *_, r0), (n1, *_, r1) in zip(rows, rows[1:]):
        exponent = 1 / np.log10(n1 / n0)  # the growth over n0 -> n1, as a factor per 10x images
        growth = ", ".join(f"{t} {(r1[t]['seconds'] / r0[t]['seconds']) ** exponent:.1f}x" for t in titles)
        print(f"time growth per 10x images ({n0:,} -> {n1:,}): {growth}")
        mem = ", ".join(f"{t} {(max(r1[t]['peak_mb'], 1) / max(r0[t]['peak_mb'], 1)) ** exponent:.1f}x" for t in titles)
        print(f"memory growth per 10x images ({n0:,} -> {n1:,}): {mem}")
    if args.train_steps:
        file = root / f"coco{sizes[-1]}" / "annotations" / "instances_train.json"
        print(f"\nplaindet-t on {sizes[-1]:,} images, 64 px, batch 8, 1 data worker, RSS:", flush=True)
        subprocess.run([sys.executable, "-c", TRAIN_RSS, str(file), str(args.train_steps)], check=True)


if __name__ == "__main__":
    main()
