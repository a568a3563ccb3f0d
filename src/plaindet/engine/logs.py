"""What a run records: per-step and per-epoch metrics (JSON lines and CSV), TensorBoard, and plots;
and what it shows while it runs.

``steps.jsonl``/``steps.csv`` get one row per optimizer step (loss, its parts, learning rate, the
step's wall time ``step_s`` and the part of it spent waiting for the batch ``data_s``);
``metrics.jsonl``/``metrics.csv`` one row per epoch (loss, validation AP...). A resumed run first
cuts every log back to the checkpoint's step, so the logs of an interrupted and resumed run equal
those of an uninterrupted one. Only the main process creates a :class:`RunLog`.

On a terminal the run shows a progress bar; when its output is a file or a pipe, a bar's every
redraw would land in the log as a line, so :class:`ProgressLines` prints a plain line now and then.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from plaindet.weights import atomic_write

log = logging.getLogger("plaindet")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                break
    return rows


# The step-row keys that hold wall-clock seconds: they differ between two runs that are otherwise equal.
TIMING_KEYS = ("step_s", "data_s")


def data_wait_share(rows: list[dict]) -> float | None:
    """The share of the steps' wall time (``step_s``) that the model spent waiting for batches
    (``data_s``), over step rows as :class:`RunLog` writes them; ``None`` without timed steps."""
    timed = [r for r in rows if isinstance(r.get("step_s"), (int, float)) and isinstance(r.get("data_s"), (int, float))]
    total = sum(r["step_s"] for r in timed)
    return sum(r["data_s"] for r in timed) / total if total > 0 else None


def run_data_wait(folder: str | Path) -> float | None:
    """:func:`data_wait_share` of a run folder's ``steps.jsonl`` (``None`` without one)."""
    return data_wait_share(_read_jsonl(Path(folder) / "steps.jsonl"))


class _Table:
    """One log as JSON lines plus a CSV with the same rows (a column for every key any row has)."""

    def __init__(self, folder: Path, name: str, key: str, keep_until: int | None) -> None:
        self.jsonl = folder / f"{name}.jsonl"
        self.csv = folder / f"{name}.csv"
        rows = [r for r in _read_jsonl(self.jsonl) if r.get(key, 0) <= keep_until] if keep_until is not None else []
        self.rows = rows
        self.columns: list[str] = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys, first seen first
        # Rewrite both files from the kept rows (atomically): the cut-back resume and a fresh start alike.
        atomic_write(self.jsonl, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))
        atomic_write(self.csv, self._write_csv)
        self._jf = self.jsonl.open("a")
        self._cf = self.csv.open("a", newline="")

    def _write_csv(self, tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if self.columns:
                w = csv.DictWriter(f, self.columns, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._jf.write(json.dumps(row) + "\n")
        self._jf.flush()
        new = [k for k in row if k not in self.columns]
        if new:
            # A row with keys the header lacks (the first evaluated epoch after epochs without
            # evaluation): rewrite the CSV with the new columns, earlier rows leaving them empty.
            self.columns += new
            self._cf.close()
            atomic_write(self.csv, self._write_csv)
            self._cf = self.csv.open("a", newline="")
        else:
            csv.DictWriter(self._cf, self.columns).writerow(row)
        self._cf.flush()

    def close(self) -> None:
        self._jf.close()
        self._cf.close()


class RunLog:
    """The run folder's logs. ``resume_step``: cut the logs back to this step (``None``: start afresh)."""

    def __init__(self, folder: Path, *, resume_step: int | None, resume_epoch: int | None, tensorboard: bool) -> None:
        self.folder = folder
        self.steps = _Table(folder, "steps", "step", resume_step)
        self.epochs = _Table(folder, "metrics", "epoch", resume_epoch)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'plaindet[tensorboard]'") from None
            # purge_step drops events past the checkpoint, so a resumed run's curves do not fork.
            self.tb = SummaryWriter(str(folder / "tensorboard"), purge_step=(resume_step + 1) if resume_step else None)

    def step(self, row: dict[str, Any]) -> None:
        self.steps.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"val/{k}" if k.startswith("AP") or k.startswith("AR") else f"epoch/{k}", v, row["step"])
            self.tb.flush()

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
        if self.tb is not None:
            self.tb.close()

    def plot(self) -> list[Path]:
        """Loss and learning-rate curves per step and validation AP per epoch, as PNGs in ``plots/``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = self.folder / "plots"
        out.mkdir(exist_ok=True)
        written = []
        steps = self.steps.rows
        curves = [("loss.png", "loss", "training loss"), ("lr.png", "lr", "learning rate")]
        for name, key, title in curves:
            xs = [r["step"] for r in steps if key in r]
            if not xs:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(xs, [r[key] for r in steps if key in r], lw=1)
            ax.set(xlabel="step", title=title)
            if key == "loss":
                ax.set_yscale("log")
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written.append(out / name)
        epochs = [r for r in self.epochs.rows if r.get("AP") is not None]
        if epochs:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for key in ("AP", "AP50", "AP75"):
                ax.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], marker="o", label=key)
            ax.set(xlabel="epoch", ylabel="validation", ylim=(0, 1), title="validation AP")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "val_ap.png", dpi=100)
            plt.close(fig)
            written.append(out / "val_ap.png")
        return written


class ProgressLines:
    """A progress bar's interface (``update``, ``set_postfix``, ``close``) that prints plain lines
    instead, for output that is not a terminal: one line every ``every`` batches, or with ``every``
    0 at most one every ``seconds``, and one at the last batch. ``stream``: where the bar would have
    drawn (default ``sys.stderr``)."""

    def __init__(self, *, total: int, initial: int, desc: str, every: int = 0, seconds: float = 30.0, stream=None) -> None:
        self.total, self.n, self.desc, self.every, self.seconds = total, initial, desc, every, seconds
        self.stream = stream
        self.postfix: dict[str, str] = {}
        self._start = self._last = time.monotonic()
        self._first = initial

    def set_postfix(self, **values: str) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due = self.n % self.every == 0 if self.every else now - self._last >= self.seconds
        if due or self.n == self.total:
            self._last = now
            done = self.n - self._first
            rate = f", {(now - self._start) / done:.2f} s/batch" if done else ""
            values = "".join(f"  {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}  batch {self.n}/{self.total}{values}  ({now - self._start:.0f}s{rate})", file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        pass
