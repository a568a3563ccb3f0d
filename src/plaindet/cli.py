"""The ``plaindet`` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from plaindet import __version__

app = typer.Typer(
    name="plaindet",
    help="Object detection with transformers: check data, train, evaluate, predict, export.",
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


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Ground-truth dataset (any supported format)."),
    split: str = typer.Option("val", "--split"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="COCO results JSON, dataset's own ids."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics as JSON here."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for per-class precision-recall PNGs."),
) -> None:
    """Evaluate COCO-format predictions against a dataset: AP, AP50, AP75, APs/m/l, AR1/10/100."""
    from plaindet.engine.evaluate import run_eval

    raise typer.Exit(run_eval(data, split=split, predictions=predictions, output=output, plots=plots))


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("plaindet-demo"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the end-to-end demo on the built-in synthetic shapes dataset."""
    from plaindet.demo import run_demo

    raise typer.Exit(run_demo(out, seed=seed))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
