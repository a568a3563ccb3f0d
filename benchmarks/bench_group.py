"""Many detectors on one backbone pass: a group of N vs the N detectors run one after another.

    python benchmarks/bench_group.py [--model plaindet-t] [--n 4] [--size 640] [--threads 2] [--runs 10] [--warmup 2] [--no-onnx]

Builds N detectors on one frozen backbone (random weights stand in for a pretrained backbone: the
time does not depend on the values), each with its own neck and head (3, 5, 8, 2, ... classes),
saves them, loads them back as a group (:func:`plaindet.load_group`) and one by one
(:func:`plaindet.load`), and times one 640x640 image (batch 1):

- ``torch``: ``group(images)`` (backbone once, N necks and heads, N postprocesses) vs the N models'
  ``postprocess(forward(images))`` in turn, fp32, ``--threads`` intra-op threads;
- ``onnx``: the group's single graph (:func:`plaindet.export.onnx.export_group_onnx`) vs the N
  models' own ONNX files, on onnxruntime's CPU provider with ``--threads`` intra-op threads.

Prints the median and p90 latency of each and the ratio (one after another / group); the ideal is
``N * (backbone + rest) / (backbone + N * rest)``. Run it alone: other work on the cores skews it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch


def _row(name: str, times: list[float]) -> tuple[str, float, float]:
    t = sorted(times)
    return name, statistics.median(t) * 1e3, t[min(len(t) - 1, int(0.9 * len(t)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-t")
    parser.add_argument("--n", type=int, default=4, help="detectors in the group")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-onnx", action="store_true", help="time PyTorch only")
    args = parser.parse_args()

    import plaindet
    from plaindet.export.benchmark import time_calls

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_group_"))
    torch.manual_seed(0)
    backbone = plaindet.create_model(args.model, num_classes=3, image_size=args.size).save(work / "backbone.safetensors")
    paths = []
    for i in range(args.n):
        torch.manual_seed(1 + i)
        model = plaindet.create_model(args.model, num_classes=(3, 5, 8, 2)[i % 4], image_size=args.size, backbone_weights=str(backbone))
        paths.append(model.save(work / f"det{i}.safetensors"))
    group = plaindet.load_group(paths)
    models = [plaindet.load(p) for p in paths]
    side = -(-args.size // group.size_divisor) * group.size_divisor
    images = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def one_by_one():
        return [m.postprocess(m(images)) for m in models]

    with torch.no_grad():
        group_times = time_calls(lambda: group(images), args.runs, args.warmup)
        single_times = time_calls(one_by_one, args.runs, args.warmup)
    rows = [("torch", _row("group", group_times), _row(f"{args.n} one after another", single_times))]

    if not args.no_onnx:
        import onnxruntime as ort

        from plaindet.export.onnx import export_group_onnx, export_onnx, group_output_names

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        group_file = export_group_onnx(group, work / "group.onnx", image_size=args.size)
        group_session = ort.InferenceSession(str(group_file), options, providers=["CPUExecutionProvider"])
        sessions = [
            ort.InferenceSession(str(export_onnx(m, work / f"det{i}.onnx", image_size=args.size)), options, providers=["CPUExecutionProvider"])
            for i, m in enumerate(models)
        ]
        feed = {"images": images.numpy()}
        names = group_output_names(args.n)
        group_times = time_calls(lambda: group_session.run(names, feed), args.runs, args.warmup)
        single_times = time_calls(lambda: [s.run(None, feed) for s in sessions], args.runs, args.warmup)
        rows.append(("onnxruntime", _row("group", group_times), _row(f"{args.n} one after another", single_times)))

    print(f"\n{args.n} x {args.model} at {side}x{side}, batch 1, {args.threads} threads, {args.runs} runs (ms)")
    print(f"| backend | group median | group p90 | {args.n} one after another median | p90 | ratio (one after another / group) |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, g, s in rows:
        print(f"| {backend} | {g[1]:.1f} | {g[2]:.1f} | {s[1]:.1f} | {s[2]:.1f} | {s[1] / g[1]:.2f}x |")


if __name__ == "__main__":
    main()
