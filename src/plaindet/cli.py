"""The ``plaindet`` command line. Each command parses its options and calls the library function that
does the work (named in its docstring); no command body lives here.

- ``train`` and ``distill`` take one option per field of :class:`~plaindet.engine.train.TrainConfig`
  (and :class:`~plaindet.engine.distill.DistillConfig`), derived from the dataclasses with their
  help text and defaults, so the command line can never drift from the config.
- User errors are reported one way, for every command (:class:`_Commands`): a
  :class:`~plaindet.errors.UserError` (bad data, config, checkpoint, option, a missing extra) prints
  ``error: <message>`` on stderr and exits with code 2; SIGINT/SIGTERM during training exits with
  128 + the signal number after saving. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, get_args

import click
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from plaindet.config import cli_parameters, given_options
from plaindet.errors import TrainingInterrupted, UserError
from plaindet.version import __version__


class _Commands(TyperGroup):
    """Runs every command (and sub-command) under the one user-error rule of the module docstring."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except TrainingInterrupted as e:
            typer.secho(f"interrupted: {e}", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(128 + e.signum) from None


class _Command(TyperCommand):
    """A command whose repeated arguments read ``images... <path>`` in help, not typer's ``<list[Path]>``."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument) and param.nargs != 1 and param.type_descriptor.is_list:
                element = get_args(param.type_descriptor.annotation)[0]
                label = "path" if element is Path else getattr(element, "__name__", str(element)).lower()
                param.display_type_rich = lambda ctx, label=label: f"<{label}>"  # type: ignore[method-assign]
        super().format_options(ctx, formatter)


app = typer.Typer(
    name="plaindet",
    cls=_Commands,
    help="Object detection with transformers: check data, train, distill, evaluate, predict, export, benchmark, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help (click's layout): at 80 columns rich's boxed table left the descriptions 22 columns
    # and cut long words; click wraps them under an option name too long for its column.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
data_app = typer.Typer(cls=_Commands, help="Check, convert and look at datasets.", no_args_is_help=True, rich_markup_mode=None)
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


def _show_progress(main_process: bool = True) -> None:
    """Show the library's INFO messages (dataset summaries, parameter counts, warnings) on this process."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("plaindet").setLevel(logging.INFO if main_process else logging.WARNING)


def _with_options(params: list, command: Callable) -> Callable:
    """``command`` with extra keyword-only ``params`` (from :func:`plaindet.config.cli_parameters`)
    appended to its signature, for typer to turn into options."""
    import inspect

    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*own, *params])
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in params}}
    return command


# ----------------------------------------------------------------------------------------------------------------------
# data


_FORMAT_HELP = "Drawn images: auto (JPEG for JPEG inputs, else PNG), png or jpg."


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="Dataset: COCO JSON file or folder, YOLO yaml, VOC folder, or 'shapes'."),
    split: Optional[list[str]] = typer.Option(None, "--split", metavar="<str>", help="A split to check, repeatable (default: all found)."),
    max_problems: int = typer.Option(50, help="How many problems to list per split (all are counted)."),
) -> None:
    """Report images, boxes and problems per split; exit 1 when errors are found (plaindet.data.check.run_check)."""
    from plaindet.data.check import run_check

    raise typer.Exit(run_check(path, splits=split, max_problems=max_problems))


@data_app.command("convert")
def data_convert(
    src: Path = typer.Argument(..., help="Dataset to convert (any supported format, or 'shapes')."),
    to: str = typer.Option(..., "--to", help="Target format: coco, yolo or voc."),
    out: Path = typer.Argument(..., help="Output folder (new or empty)."),
    copy: bool = typer.Option(False, "--copy", help="Copy the images instead of hard-linking them to the source's files."),
) -> None:
    """Convert a dataset losslessly between formats, all splits (plaindet.data.convert.run_convert).

    Images are hard-linked where the file system allows (no extra space; the output shares the
    source's image files, so editing one in place edits both), else copied; --copy always copies.
    """
    from plaindet.data.convert import run_convert

    raise typer.Exit(run_convert(src, to, out, copy=copy))


@data_app.command("show")
def data_show(
    path: Path = typer.Argument(..., help="Dataset (any supported format, or 'shapes')."),
    out: Path = typer.Option(..., "--out", help="Folder for the drawn images."),
    n: int = typer.Option(16, "--n", min=0, help="Number of samples to render."),
    split: str = typer.Option("train", "--split", help="The split to draw samples from."),
    seed: int = typer.Option(0, "--seed", help="Which samples: a seeded random choice."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
) -> None:
    """Render labeled samples so you can see that the labels are right (plaindet.viz.run_show)."""
    from plaindet.viz import run_show

    raise typer.Exit(run_show(path, out, n=n, split=split, seed=seed, format=format))


def data_audit(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset to audit (any supported format, or 'shapes')."),
    out: Path = typer.Option(..., "--out", help="Report folder (report.html, suggestions.json, suggestions.csv); with --apply, the new dataset's folder."),
    split: str = typer.Option("train", "--split", help="The split to audit."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Predictions from this trained model (in-sample if it trained on the split: the report warns)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Predictions from this COCO results JSON, in the dataset's own ids."),
    folds: int = typer.Option(0, "--folds", min=0, help="Out-of-sample predictions: train K models on K-1 folds each, predict the held-out fold."),
    model: Optional[str] = typer.Option(None, "--model", help="With --folds: the registered model to train."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="With --folds: epochs per fold."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.0, help="With --folds: minutes per fold."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="With --folds: any TrainConfig field for the fold runs, repeatable."),
    apply: Optional[Path] = typer.Option(None, "--apply", help="Write a corrected copy of the audited dataset from this suggestions.json into --out."),
    min_score: Optional[float] = typer.Option(None, "--min-score", min=0.0, max=1.0, help="With --apply: only the issues scored below this (the surest)."),
    accept: Optional[Path] = typer.Option(None, "--accept", help="With --apply: only the issue ids in this file, one per line."),
    copy: bool = typer.Option(False, "--copy", help="With --apply: copy the images instead of hard-linking them."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch when predicting (with --folds: training too, unless --set)."),
    seed: int = typer.Option(0, "--seed", help="With --folds: which images go to which fold, and the runs' seed."),
    **options: Any,
) -> None:
    """Find wrong labels (overlooked objects, spurious labels, wrong classes, badly located boxes,
    duplicates), rank them and suggest fixes; or, with --apply, write the corrected copy
    (plaindet.engine.label_audit.run_audit and run_apply)."""
    from plaindet.config import apply_overrides
    from plaindet.data.audit import AuditConfig
    from plaindet.engine.label_audit import run_apply, run_audit

    _show_progress()
    if apply is not None:
        if data is not None or weights is not None or predictions is not None or folds:
            raise UserError("--apply takes the dataset from the suggestions file; drop --data, --weights, --predictions and --folds")
        raise typer.Exit(run_apply(apply, out, min_score=min_score, accept=accept, copy=copy))
    if data is None:
        raise UserError("--data is required (or --apply SUGGESTIONS.json)")
    if min_score is not None or accept is not None:
        raise UserError("--min-score and --accept go with --apply")
    train_settings = {**given_options({"model": model, "epochs": epochs, "time_limit": time_limit}), **_parse_sets(set_)}
    if not folds and train_settings:
        raise UserError("--model, --epochs, --time-limit and --set go with --folds")
    if folds:
        train_settings = {"batch_size": batch_size, **given_options({"device": device}), **train_settings}
    config = apply_overrides(AuditConfig(), given_options(options), where="audit")
    run_audit(
        data, split, out, weights=weights, predictions=predictions, folds=folds, train_settings=train_settings,
        config=config, device=device, batch_size=batch_size, seed=seed,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# train, distill


def _parse_sets(items: list[str] | None) -> dict:
    """``--set key=value`` options as a dict; each value is read as YAML (numbers, lists, booleans)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return out


def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", metavar="YAML", help="A YAML config (a run's config.yaml repeats that run); options given here override it."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Any TrainConfig field: --set key=value (YAML value), repeatable."),
    **options: Any,
) -> None:
    """Train a detector. Settings come from TrainConfig's defaults, then --config, then the options given,
    then --set (plaindet.engine.train.resolve_config and train).

    Multi-GPU or multi-process: launch the same command with torchrun, e.g.
    `torchrun --nproc-per-node 2 -m plaindet train ...`.
    """
    from plaindet.engine.train import train
    from plaindet.engine.train_config import resolve_config

    main_process = os.environ.get("RANK", "0") == "0"
    _show_progress(main_process)
    cfg = resolve_config(given_options(options), config, _parse_sets(set_))
    train(cfg)
    if main_process:
        typer.echo(f"run written to {cfg.out}: best.safetensors, last.safetensors, metrics.csv, plots/, config.yaml")


def distill_cmd(
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Any TrainConfig field: --set key=value (YAML value), repeatable."),
    **options: Any,
) -> None:
    """Train a student (--model) on a trained teacher's predictions on labeled and unlabeled images
    (plaindet.engine.distill.distill)."""
    import dataclasses

    from plaindet.config import apply_overrides
    from plaindet.engine.distill import DistillConfig, distill
    from plaindet.engine.train_config import resolve_config

    _show_progress()
    given = given_options(options)
    distill_fields = {f.name for f in dataclasses.fields(DistillConfig)}
    dcfg = apply_overrides(DistillConfig(), {k: v for k, v in given.items() if k in distill_fields}, where="distill")
    cfg = resolve_config({k: v for k, v in given.items() if k not in distill_fields}, None, _parse_sets(set_))
    best = distill(cfg, dcfg)
    typer.echo(f"student written to {cfg.out}; best " + "  ".join(f"{k} {best[k]:.3f}" for k in ("AP", "AP50") if best.get(k) is not None))


def _register_training_commands() -> None:
    from plaindet.engine.distill import DistillConfig
    from plaindet.engine.train_config import TrainConfig

    train_options = cli_parameters(TrainConfig)
    app.command("train")(_with_options(train_options, train_cmd))
    app.command("distill")(_with_options([*cli_parameters(DistillConfig), *train_options], distill_cmd))


_register_training_commands()


def _register_audit_command() -> None:
    from plaindet.data.audit import AuditConfig

    data_app.command("audit")(_with_options(cli_parameters(AuditConfig), data_audit))


_register_audit_command()


# ----------------------------------------------------------------------------------------------------------------------
# predict, eval


@app.command("predict", cls=_Command)
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Image files and folders (their images, not recursive)."),
    weights: Path = typer.Option(..., "--weights", help="A saved model: .safetensors (training or save) or .onnx (plaindet export)."),
    out: Path = typer.Option(..., "--out", help="Folder for drawn images, predictions.json and images.json."),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0, help="Minimum score of a kept detection."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="Long side at inference (default: the model's)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch, padded to the largest."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
) -> None:
    """Detect objects in images; draw them and write COCO results (plaindet.detections.predict_to_folder).

    Writes OUT/<image stem>.jpg (.png for PNG and other inputs, or as --format says) with the boxes drawn, OUT/predictions.json (COCO results: image_id,
    category_id from the model's category ids, bbox [x, y, w, h] in original pixels, score) and
    OUT/images.json, a COCO-style "images" list giving each image_id its file, size and drawing.
    """
    import plaindet
    from plaindet.detections import predict_to_folder

    predictor = plaindet.load(weights, device=device or _default_device(weights))
    found, count = predict_to_folder(predictor, images, out, threshold=threshold, image_size=image_size, batch_size=batch_size, format=format)
    typer.echo(f"{found} detections (score >= {threshold}) in {count} images; written to {out}")


def _default_device(weights: Path) -> str:
    if weights.suffix.lower() == ".onnx":
        return "cpu"  # ONNX Runtime's CPU provider; no torch import
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Ground-truth dataset (any supported format, or 'shapes')."),
    split: str = typer.Option("val", "--split", help="The split to evaluate on."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="COCO results JSON, in the dataset's own ids."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A saved model to run instead: .safetensors or .onnx."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="With --weights: long side at inference (default: the model's)."),
    batch_size: int = typer.Option(
        8, "--batch-size", min=1, help="With --weights: images per batch, padded to the largest (training validates with its own --batch-size)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="With --weights: cpu, cuda, cuda:1 (default: cuda if available)."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="With --weights: keep the COCO results here."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics as JSON here."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for per-class precision-recall PNGs."),
) -> None:
    """Evaluate a model (--weights) or COCO predictions (--predictions) on a dataset: AP, AP50, AP75,
    APs/m/l, AR1/10/100 (plaindet.engine.evaluate.run_eval)."""
    from plaindet.engine.evaluate import run_eval

    if (weights is None) == (predictions is None):
        raise UserError("give --weights MODEL (a model to run) or --predictions RESULTS.json, not both or neither")
    if weights is None and (save_predictions is not None or image_size is not None or device is not None):
        raise UserError("--image-size, --device and --save-predictions go with --weights")
    run_eval(
        data, split, weights=weights, predictions=predictions, image_size=image_size, batch_size=batch_size, device=device,
        save_predictions=save_predictions, output=output, plots=plots,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# models, demo, export, benchmark


@app.command("models")
def models_cmd() -> None:
    """List the registered models with their sizes: parameters (with the default 80 classes,
    training-only parts included) and GFLOPs of one 640x640 image and of one image at the model's
    default size (2 FLOPs per multiply-add; plaindet.models.factory.count_flops)."""
    from rich.console import Console
    from rich.table import Table

    from plaindet.models.factory import count_flops, count_parameters, describe_model, list_models, model_config

    table = Table(title="plaindet models", title_justify="left", caption="GFLOPs: 2 per multiply-add, batch 1, square input")
    for column in ("model", "parameters", "GFLOPs 640", "image size", "GFLOPs", "what it is"):
        # Only the description wraps: names and numbers stay whole however narrow the terminal.
        table.add_column(column, justify="left" if column in ("model", "what it is") else "right", no_wrap=column != "what it is", min_width=None if column == "what it is" else len(column))
    for name in list_models():
        config = model_config(name)
        at_640 = count_flops(config, 640) / 1e9
        flops = [at_640, at_640 if config.image_size == 640 else count_flops(config, config.image_size) / 1e9]
        table.add_row(name, f"{count_parameters(config) / 1e6:.1f}M", f"{flops[0]:.1f}", str(config.image_size), f"{flops[1]:.1f}", describe_model(name))
    Console().print(table)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("plaindet-demo"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dataset and the training."),
) -> None:
    """Run the end-to-end demo on the built-in synthetic shapes dataset (plaindet.demo.run_demo)."""
    from plaindet.demo import run_demo

    raise typer.Exit(run_demo(out, seed=seed))


@app.command("export")
def export_cmd(
    weights: list[Path] = typer.Option(
        ..., "--weights", metavar="<path>", help="A saved model (.safetensors from training or save()); give it several times for a group on one backbone."
    ),
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
    """Export a model to one ONNX file: normalization, network and NMS-free top-k inside
    (plaindet.export.onnx.run_export).

    Input: uint8 images (B, 3, S, S), RGB 0..255, resized to the long side and zero-padded at the
    bottom/right (S: the image size rounded up to the model's size divisor). Outputs: boxes (B, k, 4)
    xyxy in input pixels, scores (B, k), labels (B, k). Class names, input size and the plaindet
    version are in the file's metadata; `plaindet.load(path).predict(images)` runs it.

    Several --weights (detectors finetuned from one frozen backbone, plaindet.load_group): one graph
    with one backbone and outputs boxes_i, scores_i, labels_i per detector (default OUT: group.onnx
    next to the first; plaindet.export.onnx.run_export_group).
    """
    from plaindet.export.onnx import run_export, run_export_group

    if format != "onnx":
        raise UserError(f"unknown export format {format!r}: only onnx is supported")
    if len(weights) > 1:  # detectors finetuned from one frozen backbone: one graph, one backbone pass
        if quantize or dynamic_batch or max_detections or calib_data:
            raise UserError("a group export (several --weights) takes only --out, --image-size and --opset")
        _, lines = run_export_group(weights, out or weights[0].with_name("group.onnx"), image_size=image_size, opset=opset)
        for line in lines:
            typer.echo(line)
        return
    _, lines = run_export(
        weights[0], out, image_size=image_size, dynamic_batch=dynamic_batch, opset=opset, max_detections=max_detections,
        quantize=quantize, calib_data=calib_data, calib_images=calib_images, calib_split=calib_split,
    )  # fmt: skip
    for line in lines:
        typer.echo(line)


@app.command("benchmark")
def benchmark_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="A registered model (random weights)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A saved model, instead of --model (the table names its model and file)."),
    size: int = typer.Option(640, "--size", min=32, help="Square input side."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per timed call."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: all CPUs)."),
    runs: int = typer.Option(10, "--runs", min=1, help="Timed runs per backend."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed runs before them."),
    compare: bool = typer.Option(False, "--compare", help="Add transformers' DETR-R50 and RT-DETR-R18 (random init) to the run."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibrate int8-static on this data (default: random images, speed only)."),
    keep_onnx: Optional[Path] = typer.Option(None, "--keep-onnx", help="Keep the ONNX files in this folder."),
    bf16: str = typer.Option(
        "auto", "--bf16", help="PyTorch bf16 rows: auto (only where the CPU has native bf16: AVX512-BF16 or AMX; elsewhere it is emulated and slow), on, off."
    ),
) -> None:
    """CPU latency (median, p90), throughput and peak memory: PyTorch fp32/bf16 and ONNX Runtime fp32/int8
    (plaindet.export.benchmark.run_benchmark).

    Each backend runs in a fresh process; peak memory is that process's maximum resident set size.
    """
    from plaindet.export.benchmark import format_table, run_benchmark

    if (model is None) == (weights is None):
        raise UserError("give either --model NAME or --weights CKPT")
    if bf16 not in ("auto", "on", "off"):
        raise UserError(f"--bf16 must be auto, on or off, not {bf16!r}")
    threads = threads or os.cpu_count() or 1
    rows = run_benchmark(
        model=model, weights=None if weights is None else str(weights), size=size, batch=batch, threads=threads, runs=runs,
        warmup=warmup, compare=compare, calib_data=None if calib_data is None else str(calib_data), workdir=keep_onnx, bf16=bf16,
        log=lambda message: typer.echo(message, err=True),
    )  # fmt: skip
    typer.echo(format_table(rows, size=size, threads=threads, weights=weights))



# ----------------------------------------------------------------------------------------------------------------------
# serve


def serve_cmd(
    weights: list[str] = typer.Option(..., "--weights", help="A model to serve: PATH (.safetensors or .onnx; named by its stem) or NAME=PATH; repeatable."),
    **options: Any,
) -> None:
    """Serve models over HTTP: POST /v1/detect, GET /v1/models, /healthz, /readyz, and a web page at /
    (plaindet.serve.app.run_serve; extra `serve`). Binds to 127.0.0.1 unless --host says otherwise;
    the API key can come from the PLAINDET_API_KEY environment variable instead of --api-key.
    """
    from plaindet.config import apply_overrides
    from plaindet.serve.app import run_serve
    from plaindet.serve.settings import ServeConfig

    _show_progress()
    config = apply_overrides(ServeConfig(), given_options(options), where="serve")
    raise typer.Exit(run_serve(weights, config))


def _register_serve_command() -> None:
    from plaindet.serve.settings import ServeConfig

    app.command("serve")(_with_options(cli_parameters(ServeConfig), serve_cmd))


_register_serve_command()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
