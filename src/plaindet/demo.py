"""``plaindet demo``: the whole product on the built-in shapes dataset, in about ten minutes on a laptop CPU.

It makes the dataset, checks it, converts it to YOLO and back to show the conversion is lossless,
renders labeled samples, trains ``plaindet-t``, evaluates it on the test split (images no setting
was chosen on), draws its predictions, and ends with a summary of where everything went.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen so the demo finishes within ten minutes on a 2-core CPU.

    ``minutes`` is the whole demo's budget (0: none): training stops when what is left of it is
    ``reserve_minutes`` (for the evaluation and drawing that follow), or after ``epochs``, whichever
    comes first, so a slower machine gets fewer steps instead of a longer demo (a 2-core AVX2
    EPYC, fp32, fit 273 steps at 1.8 s a step in 8.3 minutes of training, test AP 0.086; an AMX
    Xeon ran 4 epochs, 750 steps, in bf16 within 8.7 minutes), and the log says how many fit.

    Every figure below is the AP on the ``valid`` split, on which these settings were chosen; the
    demo reports the ``test`` split, which none of them saw. The backbone starts from random weights here (nothing is downloaded), so the settings favour
    many cheap steps: 256 px inputs (windows of 8 patches tile the 16 x 16 grid exactly), and no
    random crop or zoom-out, which on this synthetic set cost more than they teach in a short run
    (300 steps: AP 0.135 without them, 0.039 with them). Fresh images replace augmentation. The
    learning rate stays at its peak after warmup (``min_lr_ratio=1``) and the EMA of the weights does
    the averaging a decaying schedule would: in this short run a cosine decay cost more than it gave
    (AP 0.265 with cosine, 0.399 with a constant rate). IoU-aware class targets
    (``quality_targets``, varifocal loss) did not help here: AP 0.371 (AP75 0.376) against
    0.399 (0.407), so they stay off. Also measured: lr 2e-3 gave AP 0.406 (within run-to-run noise
    of 1e-3's 0.399); 224 px inputs (windows of 7) gave 0.278 in 6.9 min, small shapes got too small.

    The trained model predicts at ``eval_size`` 320, the images' own size, not the 256 of training
    (it is the saved model's ``image_size``, so ``plaindet.load`` then ``predict`` uses it too):
    small shapes gain more from the extra pixels than large ones lose to the change of scale (the same trained model:
    AP 0.399 at 256, 0.423 at 288, 0.441 at 320; APs 0.276 -> 0.424, APl 0.505 -> 0.255). Measured and
    not adopted (7-minute training runs): training at
    320 (windows of 10; 403 steps) 0.207; 256 px crops of the 320 px images at their own scale (649
    steps) 0.275 at 320; a backbone learning-rate multiplier of 0.3 or 1.0 instead of 0.1, and
    mimetic or 2-D sin-cos initialization of the attention and position embeddings, all trained slower
    in 3-minute runs (AP 0.062 with the defaults; 0.039, 0.003, 0.000, 0.009).

    On the 2-core AVX2 EPYC (8 minutes of training, ``benchmarks/bench_demo_recipe.py``, one run each),
    where the run ends at about 260 steps, on the steep part of its learning curve: the demo's
    settings gave AP 0.064 in 257 steps; 25 warmup steps instead of 100 gave 0.087 in 276, but its
    loss at the same step was no lower (the classification loss leaves its plateau near step 120
    either way), so the difference is the 19 steps the machine's speed gave, and the warmup stays;
    lr 2e-3 with 25 warmup steps 0.055; batch 4 with 25 warmup steps 0.071 in 469 steps. The model
    waited for data 2.8% of the step time (``workers=0``).
    """

    train_images: int = 1500
    val_images: int = 200
    test_images: int = 200
    epochs: int = 8
    minutes: float = 10.0
    reserve_minutes: float = 1.0
    batch_size: int = 8
    image_size: int = 256
    window_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 1.0
    quality_targets: bool = False
    eval_size: int = 320
    samples_to_draw: int = 8


def _same_labels(a, b) -> tuple[int, float]:
    """Boxes compared after a round trip: ``(boxes compared, max abs coordinate difference)``; raises on class mismatch."""
    by_name = {s.image_path.name: s for s in b}
    n, worst = 0, 0.0
    for s in a:
        t = by_name[s.image_path.name]
        if not np.array_equal(np.sort(s.labels), np.sort(t.labels)):
            raise AssertionError(f"{s.image_path.name}: classes changed in the round trip")
        order_s = np.lexsort(s.boxes.T[::-1])
        order_t = np.lexsort(t.boxes.T[::-1])
        worst = max(worst, float(np.abs(s.boxes[order_s] - t.boxes[order_t]).max(initial=0.0)))
        n += len(s.boxes)
    return n, worst


def demo_config(settings: DemoSettings, data_dir: str | Path, out: str | Path, seed: int = 0, time_limit: float = 0.0):
    """The :class:`~plaindet.engine.train_config.TrainConfig` of the demo's training run (its recipe);
    ``time_limit``: minutes of training at most (0: the epochs)."""
    from plaindet.engine.train_config import TrainConfig

    s = settings
    return TrainConfig(
        time_limit=time_limit,
        model="plaindet-t",
        data=str(data_dir),
        val_split="valid",
        out=str(out),
        epochs=s.epochs,
        batch_size=s.batch_size,
        image_size=s.image_size,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        min_lr_ratio=s.min_lr_ratio,
        seed=seed,
        eval_every=0,  # the demo evaluates once, at the end: evaluation time is training time lost
        # image_size: the size the saved model predicts at by default (training runs at cfg.image_size).
        model_overrides={"backbone": {"window_size": s.window_size}, "quality_targets": s.quality_targets, "image_size": s.eval_size},
        augment={"crop": 0.0, "zoom_out": 0.0},
    )


def _check_and_convert(console, data_dir: Path, out: Path) -> bool:
    """Stages 1 and 2: check every split, convert COCO -> YOLO -> COCO and compare. False if a split fails."""
    from plaindet.data import load_dataset
    from plaindet.data.check import check_dataset
    from plaindet.data.convert import convert_dataset

    for check in check_dataset(data_dir):
        if check.dataset is None:
            console.print(f"[red]  {check.split}: {check.error}[/red]")
            return False
        ds = check.dataset
        boxes = sum(len(x.boxes) for x in ds)
        console.print(f"  {check.split}: {len(ds)} images, {boxes} boxes, classes {ds.class_names}, problems: {ds.report.summary()}")

    console.rule("2. conversion: COCO -> YOLO -> COCO")
    yolo_dir, coco_dir = out / "data" / "shapes-yolo", out / "data" / "shapes-coco"
    for d in (yolo_dir, coco_dir):  # convert refuses to overwrite; these are the demo's own folders
        shutil.rmtree(d, ignore_errors=True)
    convert_dataset(data_dir, "yolo", yolo_dir)
    convert_dataset(yolo_dir, "coco", coco_dir)
    n, worst = _same_labels(load_dataset(data_dir, split="valid"), load_dataset(coco_dir, split="val"))
    console.print(f"  {n} validation boxes survive the round trip; largest coordinate change {worst:.2e} px")
    return True


def run_demo(out: str | Path, seed: int = 0, settings: DemoSettings | None = None) -> int:
    """Run the demo, writing everything under ``out``; returns a process exit code.
    ``settings``: the sizes and recipe (default: :class:`DemoSettings`)."""
    import torch
    from rich.console import Console

    from plaindet.data import load_dataset
    from plaindet.data.shapes import ensure_shapes
    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate_coco, plot_pr_curves
    from plaindet.engine.logs import run_data_wait
    from plaindet.engine.train import train
    from plaindet.errors import UserError
    from plaindet.models.factory import load_model
    from plaindet.viz import draw

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    console = Console()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a folder; the demo writes its files into a folder (--out)")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    s = settings or DemoSettings()

    console.rule("1. data: the built-in shapes dataset")
    data_dir = ensure_shapes(out / "data" / "shapes", train=s.train_images, val=s.val_images, test=s.test_images, seed=seed)
    if not _check_and_convert(console, data_dir, out):
        return 1

    console.rule("3. labeled samples")
    # The test split: no setting of the demo was chosen on it (DemoSettings were chosen on "valid").
    test = load_dataset(data_dir, split="test")
    samples_dir = out / "samples"
    samples_dir.mkdir(exist_ok=True)
    for sample in test.samples[: s.samples_to_draw]:
        draw(sample.image_path, sample.boxes, sample.labels, class_names=test.class_names).save(samples_dir / f"{sample.image_path.stem}.png")
    console.print(f"  wrote {s.samples_to_draw} labeled images to {samples_dir}")

    from plaindet.engine.train import amp_dtype

    # Whatever the data stages took comes out of training's share of the budget.
    time_limit = max(0.5, s.minutes - s.reserve_minutes - (time.time() - start) / 60) if s.minutes else 0.0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp_dtype("auto", device)]
    budget = f", at most {time_limit:.1f} min" if time_limit else ""
    console.rule(f"4. training plaindet-t for {s.epochs} epochs on {s.train_images} images{budget} ({precision})")
    torch.manual_seed(seed)
    record: dict = {}  # the last epoch's (train returns the best one's)
    train(demo_config(s, data_dir, out / "run", seed, time_limit=time_limit), record.update)
    waited = run_data_wait(out / "run")
    console.print(f"  {record['step']} steps in {record['time'] / 60:.1f} min ({100 * (waited or 0.0):.1f}% of the step time waiting for data)")

    console.rule(f"5. evaluation on the {len(test)} test images at {s.eval_size} px")
    model = load_model(out / "run" / "best.safetensors")
    metrics = evaluate_coco(test, predict_dataset(model, test))
    for table in metrics.rich_tables():
        console.print(table)
    (out / "metrics.json").write_text(metrics.to_json())
    plot_pr_curves(metrics, out / "pr_curves")

    console.rule("6. predictions")
    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    paths = [x.image_path for x in test.samples[: s.samples_to_draw]]
    for path, det in zip(paths, model.predict(paths, threshold=0.4)):
        draw(path, det.boxes, det.labels, det.scores, class_names=model.config.class_names).save(pred_dir / f"{path.stem}.png")

    elapsed = time.time() - start
    summary = {
        "AP": metrics.stats["AP"], "AP50": metrics.stats["AP50"], "AP75": metrics.stats["AP75"], "test_images": len(test),
        "train_steps": record["step"], "precision": precision, "wall_time_s": round(elapsed, 1), "data_wait": round(waited or 0.0, 4),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.rule("summary")
    console.print(
        f"  test AP {summary['AP']:.3f}, AP50 {summary['AP50']:.3f}, AP75 {summary['AP75']:.3f} on {len(test)} images "
        f"after {record['step']} training steps ({precision})\n"
        f"  model: {out / 'run' / 'best.safetensors'} (load it with plaindet.load)\n"
        f"  labeled samples: {samples_dir}   predictions: {pred_dir}   PR curves: {out / 'pr_curves'}\n"
        f"  total time {elapsed / 60:.1f} min"
    )
    return 0
