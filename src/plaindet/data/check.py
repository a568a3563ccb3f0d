"""``plaindet data check``: what is in a dataset, and everything wrong with it.

For each split: images, boxes, negatives (images without boxes), crowd/ignored boxes, boxes and
images per class, box sizes (min/median/max width and height in pixels, COCO small/medium/large
counts) and every problem the reader reported, with its file and line or id.

Unlike :func:`~plaindet.data.formats.load_dataset`, which reads only image headers, the check decodes
every image fully with :func:`~plaindet.data.images.read_image`, so truncated and corrupt files are
found before training trips over them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from plaindet.data.formats import detect_format, list_splits, load_dataset
from plaindet.data.images import ImageReadError, read_image
from plaindet.data.rules import image_problem
from plaindet.data.sample import DetectionDataset, LoadReport
from plaindet.errors import DatasetError

# COCO's object size ranges, by area in pixels: small < 32^2 <= medium < 96^2 <= large.
SMALL_AREA, LARGE_AREA = 32**2, 96**2
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


@dataclass
class SplitStats:
    """The numbers ``plaindet data check`` prints for one split.

    ``widths``/``heights``/``areas`` cover the non-crowd boxes; ``areas`` are the dataset's own areas
    (COCO segmentation areas) where it has them, else box areas.
    """

    images: int
    boxes: int
    negatives: int
    crowd: int
    boxes_per_class: list[int]
    images_per_class: list[int]
    widths: np.ndarray
    heights: np.ndarray
    areas: np.ndarray
    image_sizes: Counter = field(default_factory=Counter)

    @property
    def size_ranges(self) -> tuple[int, int, int]:
        """COCO ``(small, medium, large)`` box counts."""
        small = int((self.areas < SMALL_AREA).sum())
        large = int((self.areas >= LARGE_AREA).sum())
        return small, len(self.areas) - small - large, large


@dataclass
class SplitCheck:
    """One split's result: its stats and problems, or ``error`` when it could not be read at all."""

    split: str
    dataset: DetectionDataset | None
    report: LoadReport
    error: str = ""

    @cached_property
    def stats(self) -> SplitStats | None:
        return None if self.dataset is None else split_stats(self.dataset)

    @property
    def failed(self) -> bool:
        return bool(self.error) or bool(self.report.errors)


def split_stats(dataset: DetectionDataset) -> SplitStats:
    """Counts and box-size distributions of one split."""
    k = dataset.num_classes
    boxes_per_class = np.zeros(k, dtype=np.int64)
    images_per_class = np.zeros(k, dtype=np.int64)
    widths, heights, areas = [], [], []
    crowd = negatives = 0
    sizes: Counter = Counter()
    for s in dataset.samples:
        sizes[(s.width, s.height)] += 1
        negatives += len(s.boxes) == 0
        crowd += int(s.iscrowd.sum())
        np.add.at(boxes_per_class, s.labels, 1)
        images_per_class[np.unique(s.labels)] += 1
        keep = ~s.iscrowd
        w, h = s.boxes[keep, 2] - s.boxes[keep, 0], s.boxes[keep, 3] - s.boxes[keep, 1]
        widths.append(w)
        heights.append(h)
        areas.append(s.areas[keep] if s.areas is not None else w * h)
    return SplitStats(
        images=len(dataset),
        boxes=int(sum(len(s.boxes) for s in dataset.samples)),
        negatives=int(negatives),
        crowd=crowd,
        boxes_per_class=boxes_per_class.tolist(),
        images_per_class=images_per_class.tolist(),
        widths=_concat(widths),
        heights=_concat(heights),
        areas=_concat(areas),
        image_sizes=sizes,
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def decode_images(dataset: DetectionDataset, report: LoadReport, *, workers: int | None = None) -> None:
    """Decode every image of ``dataset`` fully; add an ``unreadable_image`` error for each failure.

    Pillow releases the GIL while decoding, so threads use all cores without copying the dataset.
    """
    paths = sorted({s.image_path for s in dataset.samples})

    def failure(path: Path) -> str:
        try:
            read_image(path)
        except ImageReadError as e:
            return image_problem(e, path)
        return ""

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, message in zip(paths, pool.map(failure, paths)):
            if message:
                report.add("error", "unreadable_image", path, "", f"{message} (found by decoding the whole image)")


def check_split(path: str | Path, split: str, *, decode: bool = True) -> SplitCheck:
    """Read one split (and with ``decode``, decode every image); a split that cannot be read at all
    gives a :class:`SplitCheck` with ``error`` set instead of raising."""
    try:
        dataset = load_dataset(path, split)
    except DatasetError as e:
        return SplitCheck(split, None, LoadReport(), error=str(e))
    report = LoadReport()
    report.extend(dataset.report)
    if decode:
        decode_images(dataset, report)
    return SplitCheck(dataset.split or split, dataset, report)


def check_dataset(path: str | Path, splits: list[str] | None = None, *, decode: bool = True) -> list[SplitCheck]:
    """:func:`check_split` for each of ``splits`` (default: every split of the dataset).

    Raises :class:`DatasetError` when ``path`` is not a dataset at all.
    """
    return [check_split(path, name, decode=decode) for name in (list(splits) if splits else list_splits(path))]


def run_check(
    path: str | Path, splits: list[str] | None = None, max_problems: int = 50, *, console=None
) -> int:
    """Print the check report of the dataset at ``path``; return 1 when any error was found in it, else 0.

    Raises :class:`~plaindet.errors.DatasetError` when ``path`` is not a dataset at all.
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    start = time.perf_counter()
    fmt = detect_format(path)
    names = list(splits) if splits else list_splits(path)
    checks = []
    for name in names:
        # Decoding every image of a large split takes a while: show what is going on.
        with console.status(f"checking {name}: reading labels and decoding every image"):
            checks.append(check_split(path, name))
    console.print(f"[bold]{escape(str(path))}[/] ({fmt}): splits {', '.join(c.split for c in checks)}", highlight=False)
    console.print(_overview(checks))
    for check in checks:
        _print_split(console, check, max_problems)
    failed = [c.split for c in checks if c.failed]
    took = f" ({time.perf_counter() - start:.1f} s)"
    if failed:
        console.print(f"[bold red]errors found[/] in {', '.join(failed)}; see the problems listed above.{took}")
        return 1
    console.print(f"[green]no errors found[/]{took}")
    return 0


def _overview(checks: list[SplitCheck]):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("split", "images", "boxes", "negatives", "crowd", "classes", "errors", "warnings", "info"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for c in checks:
        if c.dataset is None:
            table.add_row(c.split, "-", "-", "-", "-", "-", "[bold red]unreadable[/]", "-", "-")
            continue
        s = c.stats
        counts = Counter(p.severity for p in c.report.problems)
        errors = f"[bold red]{counts['error']}[/]" if counts["error"] else "0"
        table.add_row(
            c.split, str(s.images), str(s.boxes), str(s.negatives), str(s.crowd), str(c.dataset.num_classes),
            errors, str(counts["warning"]), str(counts["info"]),
        )
    return table


def _print_split(console, check: SplitCheck, max_problems: int) -> None:
    from rich.markup import escape
    from rich.rule import Rule

    console.print(Rule(f"[bold]{check.split}", align="left"))
    if check.dataset is None:
        console.print(f"[bold red]error:[/] {escape(check.error)}", highlight=False)
        return
    stats = check.stats
    common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in stats.image_sizes.most_common(3))
    more = f" and {len(stats.image_sizes) - 3} other sizes" if len(stats.image_sizes) > 3 else ""
    console.print(f"image sizes: {common or '-'}{more}", highlight=False)
    if len(stats.widths):
        small, medium, large = stats.size_ranges
        console.print(
            f"box sizes in px (crowd boxes excluded); COCO sizes by area: small {small}, medium {medium}, large {large}"
        )
        console.print(_size_table(stats))
    console.print("boxes per class (images with the class in parentheses)")
    console.print(_class_table(check.dataset, stats, console.width))
    _print_problems(console, check.report, max_problems)


def _size_table(stats: SplitStats):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("", "min", "median", "max"):
        table.add_column(column, justify="right")
    for name, values in (("width", stats.widths), ("height", stats.heights)):
        table.add_row(name, *(f"{v:.1f}" for v in (values.min(), np.median(values), values.max())))
    return table


def _class_table(dataset: DetectionDataset, stats: SplitStats, width: int):
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    k = dataset.num_classes
    # Many classes (COCO has 80) are laid out in side-by-side column groups to stay readable.
    groups = 1 if k <= 12 else max(1, min(4, width // 38, -(-k // 8)))
    rows = -(-k // groups)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for _ in range(groups):
        table.add_column("id", justify="right", style="dim")
        table.add_column("class", overflow="ellipsis", no_wrap=True, max_width=16)
        table.add_column("boxes", justify="right", no_wrap=True)
    for r in range(rows):
        cells = []
        for g in range(groups):
            i = g * rows + r
            if i < k:
                boxes = stats.boxes_per_class[i]
                count = f"{boxes} ({stats.images_per_class[i]})" if boxes else "[red]0[/]"
                cells += [str(dataset.category_ids[i]), escape(dataset.class_names[i]), count]
            else:
                cells += ["", "", ""]
        table.add_row(*cells)
    return table


def _print_problems(console, report: LoadReport, max_problems: int) -> None:
    from rich.markup import escape

    if not report.problems:
        console.print("problems: none")
        return
    counts = Counter((p.severity, p.kind) for p in report.problems)
    summary = ", ".join(
        f"[{_SEVERITY_STYLE[sev]}]{n} {kind}[/]"
        for (sev, kind), n in sorted(counts.items(), key=lambda item: (_SEVERITY_ORDER.get(item[0][0], 3), item[0][1]))
    )
    console.print(f"problems: {summary}", highlight=False)
    ordered = sorted(report.problems, key=lambda p: _SEVERITY_ORDER.get(p.severity, 3))
    for p in ordered[:max_problems]:
        style = _SEVERITY_STYLE.get(p.severity, "")
        location = f"{p.file}:{p.where}" if p.where else p.file
        console.print(
            f"  [{style}]{p.severity}[/] {p.kind}: {escape(location)}: {escape(p.message)}",
            highlight=False, soft_wrap=True,
        )
    if len(ordered) > max_problems:
        console.print(f"  ... and {len(ordered) - max_problems} more (all counted above; --max-problems to list more)")
