"""The ``plaindet`` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

import typer

from plaindet import __version__

app = typer.Typer(
    name="plaindet",
    help="Object detection with transformers: check data, train, distill, evaluate, predict, export, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check, convert and look at datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plaindet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def _fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; return the exit (code 2: unusable input) for the caller to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


@contextlib.contextmanager
def _user_errors(*extra: type[BaseException]):
    """Turn errors in the user's input into a one-line message and exit code 2 instead of a traceback.

    Only error types that always mean bad input (a dataset, config, checkpoint or weights file that
    can't be used) are caught, plus ``extra``; anything else is a bug and keeps its traceback.
    """
    from plaindet.checkpoint import CheckpointError
    from plaindet.config import ConfigError
    from plaindet.data import DatasetError
    from plaindet.models.clip_weights import ClipWeightsError

    try:
        yield
    except (DatasetError, ConfigError, CheckpointError, ClipWeightsError, FileNotFoundError, *extra) as e:
        raise _fail(str(e)) from None


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="Dataset: COCO JSON file or folder, YOLO yaml, VOC folder, or 'shapes'."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Split(s) to check (default: all found)."),
    max_problems: int = typer.Option(50, help="How many problems to list per split (all are counted)."),
) -> None:
    """Report images, boxes and problems per split; exit 1 when errors are found."""
    from plaindet.data.check import run_check

    raise typer.Exit(run_check(path, splits=split, max_problems=max_problems))


@data_app.command("convert")
def data_convert(
    src: Path = typer.Argument(..., help="Dataset to convert (any supported format)."),
    to: str = typer.Option(..., "--to", help="Target format: coco or yolo."),
    out: Path = typer.Argument(..., help="Output folder."),
) -> None:
    """Convert a dataset losslessly between formats (all splits)."""
    from plaindet.data.convert import run_convert

    raise typer.Exit(run_convert(src, to, out))


@data_app.command("show")
def data_show(
    path: Path = typer.Argument(..., help="Dataset (any supported format)."),
    out: Path = typer.Option(..., "--out", help="Folder for the rendered PNGs."),
    n: int = typer.Option(16, "--n", help="Number of samples to render."),
    split: str = typer.Option("train", "--split"),
    seed: int = typer.Option(0, "--seed", help="Which samples: a seeded random choice."),
) -> None:
    """Render labeled samples so you can see that the labels are right."""
    from plaindet.viz import run_show

    raise typer.Exit(run_show(path, out, n=n, split=split, seed=seed))


def _parse_sets(items: list[str] | None) -> dict:
    """``--set key=value`` options as a dict; each value is read as YAML (numbers, lists, booleans)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="A registered model (see `plaindet models`); default plaindet-t."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset (COCO, YOLO or VOC), or 'shapes' for the built-in synthetic set."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for config.yaml, checkpoints, logs and plots."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Global batch (split over torchrun processes)."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", min=1, help="Batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="After warmup: cosine or step."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", min=0),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="Long side of the training images."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", min=0, help="LoRA rank (0: no adapters)."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Where LoRA adapters go: neck, backbone or both."),
    backbone_weights: Optional[str] = typer.Option(
        None, "--backbone-weights", help="Pretrained backbone weights (file or Hugging Face Hub id); freezes the backbone."
    ),
    amp: Optional[str] = typer.Option(None, "--amp", help="Mixed precision: bf16, fp16 (GPU) or off."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", min=0.0, max=0.999999, help="EMA of the weights (0: off)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data-loading processes."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0),
    train_split: Optional[str] = typer.Option(None, "--train-split"),
    val_split: Optional[str] = typer.Option(None, "--val-split"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", min=0, help="Evaluate every N epochs (0: never)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=0, help="Also keep epoch_N.safetensors every N epochs."),
    save_every_steps: Optional[int] = typer.Option(None, "--save-every-steps", min=0, help="Update last.safetensors every N steps."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=0, help="Stop after N optimizer steps."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.0, help="Stop after this many minutes (then evaluate and save)."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Write TensorBoard events (extra: tensorboard)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (continue OUT/last.safetensors if any) or a checkpoint."),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML config (a run's config.yaml repeats that run); options given here override it."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any TrainConfig field: --set key=value (YAML value), repeatable."),
) -> None:
    """Train a detector. Settings come from TrainConfig's defaults, then --config, then the options given.

    Multi-GPU or multi-process: launch the same command with torchrun, e.g.
    `torchrun --nproc-per-node 2 -m plaindet train ...`.
    """
    import os

    from plaindet.config import apply_overrides
    from plaindet.engine.train import TrainConfig, TrainingDiverged, TrainingInterrupted, train
    from plaindet.models.registry import model_config

    main_process = os.environ.get("RANK", "0") == "0"
    # Training logs its progress (dataset summaries, parameter counts, warnings) at INFO: show it.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("plaindet").setLevel(logging.INFO if main_process else logging.WARNING)

    given = {
        "model": model, "data": data, "epochs": epochs, "out": None if out is None else str(out), "batch_size": batch_size,
        "accumulate": accumulate, "lr": lr, "schedule": schedule, "warmup_steps": warmup_steps, "image_size": image_size,
        "lora_rank": lora_rank, "lora_targets": lora_targets, "backbone_weights": backbone_weights, "amp": amp,
        "ema_decay": ema_decay, "workers": workers, "seed": seed, "train_split": train_split, "val_split": val_split,
        "eval_every": eval_every, "save_every": save_every, "save_every_steps": save_every_steps, "max_steps": max_steps,
        "time_limit": time_limit, "tensorboard": tensorboard, "device": device, "resume": resume,
    }  # fmt: skip
    overrides = {k: v for k, v in given.items() if v is not None}
    with _user_errors(ValueError):  # TrainConfig and model_config raise ValueError for bad values
        import yaml

        overrides.update(_parse_sets(set_))
        base = TrainConfig()
        if config is not None:
            try:
                loaded = yaml.safe_load(config.read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"{config}: not valid YAML ({e})") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{config}: expected a mapping of TrainConfig fields")
            base = apply_overrides(base, loaded.get("train", loaded), where=f"{config}")
        elif data is None and resume is None:
            raise ValueError("--data is required (or --config, or --resume)")
        cfg = apply_overrides(base, overrides, where="train")
        model_config(cfg.model)  # an unknown model name fails now, with a suggestion, not after loading data
    try:
        with _user_errors(ImportError):  # ImportError: an optional dependency (peft, tensorboard) is missing
            train(cfg)
    except TrainingInterrupted as e:
        typer.secho(f"interrupted: {e}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(128 + e.signum) from None
    except TrainingDiverged as e:
        raise _fail(str(e)) from None
    if main_process:
        typer.echo(f"run written to {cfg.out}: best.safetensors, last.safetensors, metrics.csv, plots/, config.yaml")


@app.command("distill")
def distill_cmd(
    teacher: Path = typer.Option(..., "--teacher", help="A trained model (.safetensors) whose predictions the student learns."),
    student: str = typer.Option("plaindet-t", "--student", help="The registered model to train."),
    data: str = typer.Option(..., "--data", help="Labeled dataset (its validation split evaluates the student)."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="A folder of unlabeled images the teacher labels."),
    unlabeled_from_train: int = typer.Option(0, "--unlabeled-from-train", min=0, help="Treat the last N training images as unlabeled."),
    threshold: float = typer.Option(0.35, "--threshold", min=0.0, max=1.0, help="Teacher score that makes a box a target."),
    mode: str = typer.Option("union", "--mode", help="Labeled images: union (labels + teacher's extra boxes), teacher or labels."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    out: Optional[Path] = typer.Option(None, "--out"),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any TrainConfig field: --set key=value, repeatable."),
) -> None:
    """Train a smaller student on a trained teacher's predictions (labeled and unlabeled images)."""
    from plaindet.config import apply_overrides
    from plaindet.engine.distill import DistillConfig, distill
    from plaindet.engine.train import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("plaindet").setLevel(logging.INFO)
    given = {"model": student, "data": data, "epochs": epochs, "out": None if out is None else str(out), "image_size": image_size, "batch_size": batch_size}
    overrides = {k: v for k, v in given.items() if v is not None}
    with _user_errors(ValueError):
        overrides.update(_parse_sets(set_))
        cfg = apply_overrides(TrainConfig(), overrides, where="train")
        dcfg = DistillConfig(teacher=str(teacher), unlabeled="" if unlabeled is None else str(unlabeled), unlabeled_from_train=unlabeled_from_train, threshold=threshold, mode=mode)
        best = distill(cfg, dcfg)
    typer.echo(f"student written to {cfg.out}; best " + "  ".join(f"{k} {best[k]:.3f}" for k in ("AP", "AP50") if best.get(k) is not None))


def _expand_images(inputs: list[Path]) -> list[Path]:
    """Files as given; folders replaced by their image files (by suffix, sorted, not recursive)."""
    from plaindet.data.images import IMAGE_SUFFIXES

    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise _fail(f"{path}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise _fail(f"{path}: no such file or folder")
    return images


@app.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files and folders (their images, not recursive)."),
    weights: Path = typer.Option(..., "--weights", help="A saved detector (.safetensors from training or Detector.save)."),
    out: Path = typer.Option(..., "--out", help="Folder for drawn images, predictions.json and images.json."),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0, help="Minimum score of a kept detection."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="Long side at inference (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)."),
) -> None:
    """Detect objects in images; draw them and write COCO results.

    Writes OUT/<image name>.png with the boxes drawn, OUT/predictions.json (COCO results: image_id,
    category_id from the model's category ids, bbox [x, y, w, h] in original pixels, score) and
    OUT/images.json, a COCO-style "images" list giving each image_id its file, size and drawn PNG
    ({id, file_name, width, height, drawn}). Ids are 0, 1, 2, ... in the order the images were given,
    folders expanded in sorted order; a repeated file stem gets its id appended to the PNG name.
    """
    import json

    import torch

    import plaindet
    from plaindet.viz import draw

    paths = _expand_images(images)
    with _user_errors(ValueError):  # ValueError: weights that don't fit their own config
        model = plaindet.load(weights, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = model.config
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    entries: list[dict] = []
    used_names: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        with _user_errors():  # an unreadable image is a DatasetError naming the file
            detections = model.predict(chunk, threshold=threshold, image_size=image_size)
        for offset, (path, det) in enumerate(zip(chunk, detections)):
            image_id = start + offset
            drawn = draw(path, det.boxes, det.labels, det.scores, class_names=config.class_names)
            name = f"{path.stem}.png" if f"{path.stem}.png" not in used_names else f"{path.stem}_{image_id}.png"
            used_names.add(name)
            drawn.save(out / name)
            entries.append({"id": image_id, "file_name": str(path), "width": drawn.width, "height": drawn.height, "drawn": name})
            for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(config.category_ids[label]),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(score, 5),
                    }
                )
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(entries, indent=1))
    typer.echo(f"{len(results)} detections (score >= {threshold}) in {len(paths)} images; written to {out}")


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Ground-truth dataset (any supported format)."),
    split: str = typer.Option("val", "--split"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="COCO results JSON, dataset's own ids."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A saved detector to run on the dataset instead of --predictions."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="With --weights: long side at inference (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="With --weights."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="With --weights: keep the COCO results here."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics as JSON here."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for per-class precision-recall PNGs."),
) -> None:
    """Evaluate a detector (--weights) or COCO-format predictions (--predictions) on a dataset: AP, AP50, AP75, APs/m/l, AR1/10/100."""
    if weights is not None:
        if predictions is not None:
            raise _fail("give either --weights or --predictions, not both")
        from plaindet.engine.eval_model import run_eval_model

        raise typer.Exit(
            run_eval_model(
                weights,
                data,
                split=split,
                image_size=image_size,
                batch_size=batch_size,
                save_predictions=save_predictions,
                output=output,
                plots=plots,
            )
        )
    if predictions is None:
        raise _fail("give --weights CKPT (a detector to run) or --predictions RESULTS.json")
    from plaindet.engine.evaluate import run_eval

    raise typer.Exit(run_eval(data, split=split, predictions=predictions, output=output, plots=plots))


@app.command("models")
def models_cmd() -> None:
    """List the registered models with their sizes (parameters counted with the default 80 classes)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from plaindet.models.registry import describe_model, list_models, model_config

    table = Table(title="plaindet models", title_justify="left")
    for column in ("model", "parameters", "image size", "what it is"):
        table.add_column(column, justify="right" if column in ("parameters", "image size") else "left")
    for name in list_models():
        config = model_config(name)
        with torch.device("meta"):  # shapes only: counting needs neither memory nor initialization
            count = sum(p.numel() for p in config.model_class()(config).parameters())
        table.add_row(name, f"{count / 1e6:.1f}M", str(config.image_size), describe_model(name))
    Console().print(table)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("plaindet-demo"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the end-to-end demo on the built-in synthetic shapes dataset."""
    from plaindet.demo import run_demo

    raise typer.Exit(run_demo(out, seed=seed))


@app.command("export")
def export_cmd(
    weights: Path = typer.Option(..., "--weights", help="A saved model (.safetensors from training or save())."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Optional[Path] = typer.Option(None, "--out", help="The file to write (default: next to the weights, .onnx)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="Long side of the input images (default: the model's)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch size instead of a fixed batch of 1."),
    opset: Optional[int] = typer.Option(None, "--opset", min=7, help="ONNX opset (default: the exporter's)."),
    max_detections: Optional[int] = typer.Option(None, "--max-detections", min=1, help="Top-k detections per image (default: the model's)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8-static, int8-dynamic or fp16."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="int8-static: a dataset or image folder to calibrate on."),
    calib_images: int = typer.Option(100, "--calib-images", min=1, help="int8-static: how many of its images."),
    calib_split: str = typer.Option("train", "--calib-split", help="int8-static: the dataset split to calibrate on."),
) -> None:
    """Export a model to one ONNX file: normalization, network and NMS-free top-k inside.

    Input: uint8 images (B, 3, S, S), RGB 0..255, resized to the long side and zero-padded at the
    bottom/right (S: the image size rounded up to the model's size divisor). Outputs: boxes (B, k, 4)
    xyxy in input pixels, scores (B, k), labels (B, k). Class names, input size and the plaindet
    version are in the file's metadata; `plaindet.OnnxDetector(path).predict(images)` runs it.
    """
    import tempfile

    import plaindet

    if format != "onnx":
        raise _fail(f"unknown export format {format!r}: only onnx is supported")
    from plaindet.export.quantize import MODES

    if quantize is not None and quantize not in MODES:
        raise _fail(f"unknown --quantize {quantize!r}: choose one of {', '.join(MODES)}")
    if quantize == "int8-static" and calib_data is None:
        raise _fail("--quantize int8-static needs --calib-data (training images to calibrate on)")
    if calib_data is not None and quantize != "int8-static":
        raise _fail("--calib-data is only used with --quantize int8-static")
    out = out or weights.with_name(weights.stem + (f"-{quantize}" if quantize else "") + ".onnx")

    import torch

    from plaindet.export.onnx import export_input_size, export_onnx, onnx_parity
    from plaindet.export.quantize import calibration_images, quantize_onnx

    with _user_errors(ValueError, ImportError):  # ImportError: the onnx extra is missing
        model = plaindet.load(weights)
        calib = calibration_images(calib_data, calib_images, split=calib_split) if calib_data is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(
                model,
                out if quantize is None else Path(tmp) / "fp32.onnx",
                image_size=image_size,
                dynamic_batch=dynamic_batch,
                opset=opset,
                max_detections=max_detections,
            )
            side = export_input_size(image_size or model.config.image_size, model.size_divisor)
            images = torch.randint(0, 256, (2 if dynamic_batch else 1, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            parity = onnx_parity(model, fp32, images, max_detections)
            if quantize is not None:
                quantize_onnx(fp32, out, quantize, calib_images=calib)
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {quantize or 'fp32'}): input images uint8 "
        f"({'B' if dynamic_batch else 1}, 3, {side}, {side})"
    )
    typer.echo(
        f"fp32 graph vs PyTorch on random images: max abs diff boxes {parity['boxes']:.2e} px, scores {parity['scores']:.2e}"
        + (f" ({quantize} changes the numbers by design: measure its AP)" if quantize else "")
    )


@app.command("benchmark")
def benchmark_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="A registered model (random weights)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A saved model, instead of --model."),
    size: int = typer.Option(640, "--size", min=32, help="Square input side."),
    batch: int = typer.Option(1, "--batch", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: all CPUs)."),
    runs: int = typer.Option(10, "--runs", min=1, help="Timed runs per backend."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed runs before them."),
    compare: bool = typer.Option(False, "--compare", help="Add transformers' DETR-R50 and RT-DETR-R18 (random init) to the run."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibrate int8-static on this data (default: random images, speed only)."),
    keep_onnx: Optional[Path] = typer.Option(None, "--keep-onnx", help="Keep the ONNX files in this folder."),
) -> None:
    """CPU latency (median, p90), throughput and peak memory: PyTorch fp32/bf16 and ONNX Runtime fp32/int8.

    Each backend runs in a fresh process; peak memory is that process's maximum resident set size.
    """
    import os

    from plaindet.export.benchmark import format_table, run_benchmark

    if (model is None) == (weights is None):
        raise _fail("give either --model NAME or --weights CKPT")
    threads = threads or os.cpu_count() or 1
    with _user_errors(ValueError, ImportError):
        rows = run_benchmark(
            model=model,
            weights=None if weights is None else str(weights),
            size=size,
            batch=batch,
            threads=threads,
            runs=runs,
            warmup=warmup,
            compare=compare,
            calib_data=None if calib_data is None else str(calib_data),
            workdir=keep_onnx,
            log=lambda message: typer.echo(message, err=True),
        )
    typer.echo(format_table(rows, size=size, threads=threads))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
