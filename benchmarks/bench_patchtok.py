"""Screen patch-token decoder options on the shapes set's VALIDATION split, one run per call.

    python benchmarks/bench_patchtok.py [--model patchtok-ti] [--minutes 4] [--size 256] [--threads 1]
        [--lr 3e-4] [--backbone-lr-mult 0.1] [--eval-every 0] [--set FIELD=JSON ...] [--split val]

The same recipe as ``bench_models_shapes.py`` (1,500 train images, batch 8, 50 warmup steps, constant
rate, EMA 0.998, no crop or zoom-out, ``--minutes`` of wall time), so a setting chosen here carries
over to that benchmark; but it evaluates on the validation split (settings are chosen there, never
on the test split) and takes ``--set`` model-config overrides (nested with dots, values as JSON,
``--set decoder.depth=4``). ``--eval-every N`` also evaluates every N epochs (each evaluation counts
against ``--minutes``, as in the engine), which gives a learning curve. Prints one line per evaluation,
the teacher-forced next-token accuracy per role on the first 96 images (it moves long before AP
does), and a markdown row per decoding: settings, steps, seconds, AP, AP50, AP75, and the mean
number of decoded objects per image against the labelled mean (a decoder that stops early shows
here first).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch


@torch.no_grad()
def teacher_forced_accuracy(model, dataset, size: int, images: int = 96) -> dict[str, float]:
    """How often the argmax next token is the target's, per role (class, top-left, bottom-right), and
    the EOS, given the true prefix, on the first ``images`` of ``dataset``: a signal that moves long
    before AP does."""
    from plaindet.data.collate import collate
    from plaindet.data.transforms import TransformedDataset, eval_transform

    model.eval()
    items = TransformedDataset(dataset, eval_transform(size))
    vocab, hits = model.vocab, {"class": [], "tl": [], "br": [], "eos": []}
    roles = ["class", "tl", "br"] if model.class_first else ["tl", "br", "class"]
    for start in range(0, min(images, len(dataset)), 8):
        batch = collate([items[i] for i in range(start, min(start + 8, images, len(dataset)))], size_divisor=model.size_divisor)
        out = model(batch["images"], batch["targets"])
        target = out["tokens"][:, 1:]
        guess = out["logits"].float().masked_fill(~out["allowed"], float("-inf")).argmax(-1)
        for t in range(target.shape[1]):
            for y, g in zip(target[:, t].tolist(), guess[:, t].tolist()):
                if y != vocab.pad:
                    hits["eos" if y == vocab.eos else roles[t % 3]].append(y == g)
    return {k: sum(v) / max(len(v), 1) for k, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="patchtok-ti")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--backbone-lr-mult", type=float, default=0.1, help="the engine's default, as bench_models_shapes uses")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=0, help="epochs between evaluations (0: only at the end)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    ap.add_argument(
        "--decode-set", action="append", default=[], metavar="FIELD=JSON[;FIELD=JSON]",
        help="after training, evaluate the same weights once more with these decoding fields changed (repeatable)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("runs/bench_patchtok"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate_coco
    from plaindet.engine.train import load_splits, train
    from plaindet.engine.train_config import TrainConfig
    from plaindet.models.factory import load_model

    cfg = TrainConfig(
        data="shapes", shapes_train=1500, shapes_val=200, shapes_test=200, image_size=args.size, batch_size=8, epochs=100,
        warmup_steps=args.warmup, min_lr_ratio=1.0, ema_decay=0.998, time_limit=args.minutes, max_steps=args.max_steps,
        augment={"crop": 0.0, "zoom_out": 0.0}, model=args.model, lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
        model_overrides=parse_sets(args.set), val_split=args.split, eval_every=args.eval_every or 1000, out=str(args.out),
    )  # fmt: skip
    datasets = load_splits(cfg)
    curve: list[dict] = []
    start = time.time()
    train(cfg, curve.append, datasets=datasets)
    final = curve[-1]
    for r in curve:
        if "AP" in r:
            print(f"epoch {r['epoch']} step {r['step']} {r['time']:.0f}s: {args.split} AP {r['AP']:.3f} AP50 {r['AP50']:.3f}")
    # The last weights (EMA), decoded again (as trained, then with each --decode-set) to count objects.
    val = datasets[1]
    labelled = sum(len(s.boxes) for s in val) / len(val)
    settings = ", ".join([f"lr {args.lr:g}", f"bb x{args.backbone_lr_mult:g}", *args.set])
    tf = teacher_forced_accuracy(load_model(Path(cfg.out) / "last.safetensors"), val, args.size)
    print(f"teacher-forced {args.split} accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in tf.items()))
    print("| settings | decoding | steps | s | AP | AP50 | AP75 | objects/image (labelled) |")
    for variant in ["", *args.decode_set]:
        model = load_model(Path(cfg.out) / "last.safetensors")
        changes = parse_sets([kv for kv in variant.split(";") if kv])
        for key, value in changes.items():
            setattr(model.config, key, value)
        tic = time.time()
        results = predict_dataset(model, val, image_size=args.size)
        metrics = evaluate_coco(val, results).stats
        per_image = len([r for r in results if r["score"] > 0]) / len(val)
        print(f"| {settings} | {variant or 'as trained'} ({time.time() - tic:.0f} s) | {final['step']} | {time.time() - start:.0f} | "
              f"{metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['AP75']:.3f} | {per_image:.2f} ({labelled:.2f}) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
