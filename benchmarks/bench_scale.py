"""Loading COCO JSON datasets of COCO's size: ``load_dataset`` against ``json.load`` of the same file.

    python benchmarks/bench_scale.py [--sizes 1000,10000,120000] [--keep DIR]

Writes (on disk, synthetic, deterministic: seed 0) a COCO JSON file per size with COCO train2017's
box statistics (7.3 boxes per image on average, Poisson; 80 classes; boxes inside 640x480 images)
and one empty placeholder file per image (``check_images=False`` only checks that each exists).
Each measurement runs in a fresh process, which reports its wall time and its peak RSS over the
interpreter's own baseline (``ru_maxrss`` minus the RSS before the call). Prints a table and the
growth factor per 10x images.
"""

from __future__ import annotations

import argparse
import json
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
if kind == "load_dataset":
    from plaindet.data import load_dataset
before = rss_mb()
start = time.perf_counter()
if kind == "json.load":
    with open(file) as f:
        result = len(json.load(f)["annotations"])
else:
    result = sum(len(s.boxes) for s in load_dataset(file, check_images=False).samples)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, "boxes": result}))
"""


def write_dataset(folder: Path, images: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image_dir = folder / "images" / "train"
    image_dir.mkdir(parents=True)
    counts = rng.poisson(7.3, images)
    entries, annotations = [], []
    for i, n in enumerate(counts, 1):
        name = f"{i:012d}.jpg"
        (image_dir / name).touch()
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
    out = subprocess.run([sys.executable, "-c", MEASURE, kind, str(file)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,120000")
    parser.add_argument("--keep", type=Path, default=None, help="write the datasets here and keep them")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="plaindet-scale-"))
    rows = []
    for n in sizes:
        folder = root / f"coco{n}"
        file = folder / "annotations" / "instances_train.json"
        if not file.is_file():
            file = write_dataset(folder, n)
        base, ours = measure("json.load", file), measure("load_dataset", file)
        assert base["boxes"] == ours["boxes"], (base, ours)
        rows.append((n, base["boxes"], file.stat().st_size / 2**20, base, ours))
    print("| images | boxes | JSON MB | json.load s | json.load MB | load_dataset s | load_dataset MB | time vs json.load | memory vs json.load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, boxes, mb, base, ours in rows:
        print(f"| {n:,} | {boxes:,} | {mb:.0f} | {base['seconds']:.2f} | {base['peak_mb']:.0f} | {ours['seconds']:.2f} | "
              f"{ours['peak_mb']:.0f} | {ours['seconds'] / base['seconds']:.2f}x | {ours['peak_mb'] / max(base['peak_mb'], 1):.2f}x |")
    for (n0, *_, o0), (n1, *_, o1) in zip(rows, rows[1:]):
        exponent = 1 / np.log10(n1 / n0)  # the growth over n0 -> n1, as a factor per 10x images
        print(f"load_dataset growth per 10x images ({n0:,} -> {n1:,}): time {(o1['seconds'] / o0['seconds']) ** exponent:.1f}x, "
              f"memory {(o1['peak_mb'] / max(o0['peak_mb'], 1)) ** exponent:.1f}x")


if __name__ == "__main__":
    main()
