"""The training loop. It reads top to bottom: set-up, resume, then epochs of steps, evals and checkpoints.

A run folder gets:

- ``config.yaml``: the resolved :class:`TrainConfig`, the model config and the plaindet version;
  ``plaindet train --config run/config.yaml`` repeats the run.
- ``last.safetensors`` (every epoch, every ``save_every_steps`` steps and on SIGINT/SIGTERM),
  ``best.safetensors`` (highest validation AP) and ``epoch_NNNN.safetensors`` (every ``save_every``
  epochs): full training checkpoints (see :mod:`plaindet.engine.checkpoint`), each loadable alone
  with :func:`plaindet.load` and resumable with ``--resume``.
- ``steps.jsonl``/``.csv`` and ``metrics.jsonl``/``.csv`` (see :mod:`plaindet.engine.logs`),
  ``tensorboard/`` with ``tensorboard=True``, and ``plots/`` at the end.

Exact resume: the data order is a function of ``(seed, epoch)`` and per-sample augmentation is
seeded by sample, so a resumed run skips the batches already seen and restores the weights, EMA,
optimizer, scaler and every RNG; on CPU an interrupted-and-resumed run then reproduces the
uninterrupted run's losses and weights bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from plaindet import __version__
from plaindet.config import from_dict, to_dict

log = logging.getLogger("plaindet")


@dataclass
class TrainConfig:
    """Every training setting, with its default. The CLI, YAML configs and :func:`train` take the same fields.

    ``data`` is a dataset path in any supported format, or ``"shapes"`` for the built-in synthetic
    set (``shapes_train`` and ``shapes_val`` images, written under ``shapes_dir``).

    ``batch_size`` is the global batch of one optimizer step before accumulation: with ``torchrun``
    each of the ``N`` processes loads ``batch_size / N`` images, so the run matches a one-process run.
    ``accumulate`` sums gradients over that many batches per optimizer step.

    Learning rate: linear warmup over ``warmup_steps``, then ``schedule`` ``"cosine"`` (down to
    ``min_lr_ratio`` of the peak; 1.0 keeps it constant) or ``"step"`` (times ``step_gamma`` at each
    epoch in ``step_epochs``). Multipliers per part: ``backbone_lr_mult`` for the backbone's own
    weights (they train only without pretrained weights: a random ViT updated at the neck's rate
    turns noisy and starves the neck; on the shapes set 300 steps gave AP 0.000 at 1.0 and 0.135 at
    0.1), ``lora_lr_mult`` for LoRA adapters, ``neck_lr_mult`` and ``head_lr_mult``.

    ``ema_decay``: the weights evaluated and deployed are an exponential moving average of the
    training weights (0 turns it off; see :mod:`plaindet.engine.ema`).

    ``eval_every``: evaluate on the validation split every this many epochs and after the last;
    0 never evaluates (``best`` is then the last epoch's weights).

    ``resume``: ``""`` (start afresh), ``"auto"`` (continue ``out/last.safetensors`` if it exists) or
    a checkpoint path. A resumed run takes its settings from the checkpoint; only the fields in
    :data:`RESUME_OVERRIDABLE` that are set here to a non-default value replace them.

    ``max_bad_steps``: that many non-finite losses (or gradients) in a row stop the run; isolated
    ones skip their step. ``max_steps`` > 0 ends training after that many optimizer steps, and
    ``time_limit`` > 0 after the step that passes that many minutes (then evaluates and saves; the
    schedule still spans ``epochs``, so compare time-limited runs only with each other).
    """

    model: str = "plaindet-t"
    data: str = "shapes"
    out: str = "runs/train"
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 12
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    lora_lr_mult: float = 1.0
    neck_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    weight_decay: float = 0.05
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    step_epochs: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    grad_clip: float = 1.0
    image_size: int = 640
    scales: list[int] = field(default_factory=list)
    amp: str = "bf16"
    workers: int = 0
    seed: int = 0
    backbone_weights: str | None = None
    lora_rank: int = 0
    lora_targets: str = "backbone"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1
    ema_decay: float = 0.998
    save_every: int = 0
    save_every_steps: int = 0
    resume: str = ""
    max_bad_steps: int = 5
    max_steps: int = 0
    time_limit: float = 0.0
    tensorboard: bool = False
    device: str = ""
    shapes_train: int = 2000
    shapes_val: int = 200
    shapes_dir: str = ""
    max_train_images: int = 0

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be bf16, fp16 or off, got {self.amp!r}")
        if self.lora_targets not in ("neck", "backbone", "both"):
            raise ValueError(f"lora_targets must be neck, backbone or both, got {self.lora_targets!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.accumulate < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size, accumulate and epochs must be at least 1")


# Settings a resumed run may change: how long it runs and how it reports, never what it computes.
RESUME_OVERRIDABLE = ("out", "epochs", "max_steps", "time_limit", "eval_every", "save_every", "save_every_steps", "workers", "tensorboard", "max_bad_steps", "device")


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after saving a checkpoint; ``signum`` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def load_splits(cfg: TrainConfig):
    """The train and validation :class:`DetectionDataset` named by ``cfg.data``."""
    from plaindet.data import load_dataset

    if cfg.data == "shapes":
        from plaindet.data.shapes import ensure_shapes

        folder = Path(cfg.shapes_dir) if cfg.shapes_dir else Path.home() / ".cache" / "plaindet" / f"shapes-s{cfg.seed}-{cfg.shapes_train}-{cfg.shapes_val}"
        root = ensure_shapes(folder, train=cfg.shapes_train, val=cfg.shapes_val, seed=cfg.seed)
        train, val = load_dataset(root, split="train"), load_dataset(root, split="valid")
    else:
        train = load_dataset(cfg.data, split=cfg.train_split)
        val = load_dataset(cfg.data, split=cfg.val_split)
    if cfg.max_train_images:
        train.samples = train.samples[: cfg.max_train_images]
    return train, val


def _part(name: str) -> str:
    if ".lora_" in name:
        return "lora"
    for part in ("backbone", "neck", "head"):
        if name.startswith(part + ".") or name.startswith(f"aux_{part}."):
            return part
    return "other"


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups by rule: no weight decay on 1-d tensors (norms, biases, scales) and on the names
    in ``model.no_weight_decay()`` (position tables, embeddings); a learning-rate multiplier per part
    (backbone weights, LoRA adapters, neck, head; anything else at 1). Frozen weights are left out."""
    skip = model.no_weight_decay()
    mult = {"backbone": cfg.backbone_lr_mult, "lora": cfg.lora_lr_mult, "neck": cfg.neck_lr_mult, "head": cfg.head_lr_mult, "other": 1.0}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and name not in skip
        groups.setdefault((_part(name), decay), []).append(p)
    return [
        {"params": params, "name": f"{part}{'' if decay else '/no_decay'}", "weight_decay": cfg.weight_decay if decay else 0.0, "lr_mult": mult[part]}
        for (part, decay), params in groups.items()
    ]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float, schedule: str = "cosine", milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``, or times ``gamma`` at each
    step in ``milestones``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resumed_config(cfg: TrainConfig, stored: dict) -> TrainConfig:
    """The checkpoint's config, with the :data:`RESUME_OVERRIDABLE` fields ``cfg`` sets to non-defaults."""
    resumed = from_dict(TrainConfig, stored)
    defaults = TrainConfig()
    changes = {k: getattr(cfg, k) for k in RESUME_OVERRIDABLE if getattr(cfg, k) != getattr(defaults, k) and getattr(cfg, k) != getattr(resumed, k)}
    ignored = [f.name for f in fields(cfg) if f.name not in RESUME_OVERRIDABLE and f.name != "resume" and getattr(cfg, f.name) != getattr(defaults, f.name) and getattr(cfg, f.name) != getattr(resumed, f.name)]
    if changes:
        log.info("resume: changing %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    if ignored:
        log.warning("resume: keeping the checkpoint's %s (a resumed run computes what the original would)", ", ".join(ignored))
    return dataclasses.replace(resumed, **changes, resume=cfg.resume)


class _StopSignals:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving a checkpoint after this step (send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def _find_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        path = Path(cfg.out) / "last.safetensors"
        if not path.is_file():
            log.info("resume auto: no %s, starting afresh", path)
            return None
        return path
    path = Path(cfg.resume)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return path


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None, *, datasets: tuple | None = None) -> dict:
    """Train and evaluate; returns the best epoch's metrics. See :class:`TrainConfig`.

    ``datasets``: an optional ``(train, val)`` pair of :class:`~plaindet.data.DetectionDataset` to use
    instead of reading ``cfg.data`` (for datasets built in Python, e.g. a subset).

    Raises :class:`TrainingInterrupted` after saving on SIGINT/SIGTERM, and :class:`TrainingDiverged`
    when ``max_bad_steps`` non-finite steps come in a row.
    """
    from plaindet.engine import distributed as dist_utils

    world = dist_utils.setup(cfg.device or None)
    try:
        return _train(cfg, on_epoch, datasets, world)
    finally:
        dist_utils.cleanup(world)


def _train(cfg: TrainConfig, on_epoch, datasets, world) -> dict:
    from tqdm.auto import tqdm

    from plaindet.data.collate import make_loader
    from plaindet.data.transforms import TransformedDataset, train_transform
    from plaindet.engine.checkpoint import TrainState, save_train_state
    from plaindet.engine.distributed import any_true, broadcast, mean_over_ranks
    from plaindet.engine.ema import ModelEMA
    from plaindet.engine.logs import RunLog
    from plaindet.models.registry import create_model

    # Resume: the checkpoint's settings win (see resumed_config).
    resume_path = _find_resume(cfg)
    ckpt = TrainState(resume_path) if resume_path is not None else None
    if ckpt is not None:
        cfg = resumed_config(cfg, ckpt.train_config)
        log.info("resuming %s at epoch %d, step %d", resume_path, ckpt.progress["epoch"], ckpt.progress["step"])
    out = Path(cfg.out)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = world.device
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA GPU (its gradient scaler does not run on CPU); use bf16 on CPU")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]

    # Data: every process builds the same datasets and loads its share of each global batch.
    train_set, val_set = datasets if datasets is not None else load_splits(cfg)
    if world.is_main:
        log.info("train: %s", train_set)
        log.info("val:   %s", val_set)
    transform = train_transform(cfg.image_size, scales=cfg.scales or None, **cfg.augment)

    # Model, loss, optimizer.
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("image_size", cfg.image_size)
    if cfg.lora_rank:
        overrides["lora"] = {"rank": cfg.lora_rank, "targets": cfg.lora_targets}
    model = create_model(
        cfg.model, class_names=train_set.class_names, category_ids=train_set.category_ids, backbone_weights=cfg.backbone_weights, **overrides
    ).to(device)
    loader = make_loader(
        TransformedDataset(train_set, transform, seed=cfg.seed),
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.workers,
        drop_last=len(train_set) >= 2 * cfg.batch_size,
        size_divisor=model.size_divisor,
        rank=world.rank,
        world_size=world.world_size,
    )
    criterion = model.criterion()
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(loader) / cfg.accumulate)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    milestones = tuple(e * steps_per_epoch for e in cfg.step_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    progress = {"epoch": 0, "batch": 0, "step": 0, "best": {}, "bad_steps": 0}
    if ckpt is not None:
        ckpt.restore(model, ema, optimizer, scaler)  # RNG states last: nothing after this may draw
        progress = dict(ckpt.progress)
    # DDP averages gradients over processes; the criterion's normalizer makes that equal the
    # one-process gradient of the whole global batch (see plaindet.ops.losses.loss_normalizer).
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world.distributed else model
    if world.is_main:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "%s: %.2fM parameters, %.2fM trainable; %d steps of %d images on %d process(es)",
            cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, n_train / 1e6, total_steps, cfg.batch_size * cfg.accumulate, world.world_size,
        )

    runlog = None
    if world.is_main:  # only now: a run that fails on its inputs leaves no folder
        import yaml

        from plaindet.checkpoint import atomic_write

        out.mkdir(parents=True, exist_ok=True)
        # Checkpoint writes cut short by a kill: ours (.NAME.*.tmp) and safetensors' own (.tmp*).
        for stale in [*out.glob(".*.safetensors.*.tmp"), *out.glob(".tmp*")]:
            if stale.is_file():
                stale.unlink(missing_ok=True)
        saved_cfg = {**to_dict(cfg), "resume": ""}
        run_config = {"plaindet_version": __version__, "seed": cfg.seed, "train": saved_cfg, "model": to_dict(model.config)}
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(run_config, sort_keys=False)))
        runlog = RunLog(out, resume_step=progress["step"] if ckpt else None, resume_epoch=progress["epoch"] if ckpt else None, tensorboard=cfg.tensorboard)

    def save(path: Path) -> bool:
        """Write a checkpoint of the current state (main process only); a failed write keeps the old file."""
        if not world.is_main:
            return True
        try:
            save_train_state(path, model=model, ema=ema, optimizer=optimizer, scaler=scaler, train_config={**to_dict(cfg), "resume": ""}, progress=progress)
            return True
        except OSError as e:
            log.error("could not write %s (%s); the previous %s is intact", path, e.strerror or e, path.name)
            return False

    final = ema.module if ema is not None else model  # the weights we evaluate and ship
    best: dict = dict(progress["best"])
    record: dict = {}
    start = time.time()
    out_of_budget = bool(cfg.max_steps and progress["step"] >= cfg.max_steps)
    with _StopSignals() as stop:
        step = progress["step"]
        for epoch in range(progress["epoch"], cfg.epochs):
            if out_of_budget:
                break
            net.train()
            first = progress["batch"] if epoch == progress["epoch"] else 0
            loader.set_epoch(epoch, start_batch=first)
            bar = tqdm(total=len(loader), initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True, disable=not world.is_main)
            window: list[dict[str, float]] = []  # the losses of the batches accumulated into this step
            window_bad = False
            for i, batch in enumerate(loader, start=first):
                last_in_window = (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader)
                factor = lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.schedule, milestones, cfg.step_gamma)
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * g["lr_mult"] * factor
                images = batch["images"].to(device, non_blocking=True)
                targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
                sync = last_in_window or not world.distributed
                ctx = net.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        outputs = net(images, targets)
                    losses = criterion(outputs, targets)
                    loss = losses["loss"]
                    bad = any_true(not bool(torch.isfinite(loss)), world)  # ranks skip together
                    if not bad and not window_bad:
                        scaler.scale(loss / cfg.accumulate).backward()
                        window.append({k: float(v.detach()) for k, v in losses.items()})
                    window_bad = window_bad or bad
                bar.update(1)
                if not last_in_window:
                    continue

                # One optimizer step per window of `accumulate` batches.
                grad_norm = float("nan")
                if not window_bad:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                    # With fp16 the scaler skips inf gradients itself (that is how it finds its scale).
                    window_bad = not math.isfinite(grad_norm) and not scaler.is_enabled()
                if window_bad:
                    progress["bad_steps"] += 1
                    log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", step + 1, progress["bad_steps"])
                    optimizer.zero_grad(set_to_none=True)
                    if progress["bad_steps"] >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"{progress['bad_steps']} non-finite steps in a row at step {step + 1}: training diverged; "
                            f"lower the learning rate or check the data. The last good checkpoint is {out / 'last.safetensors'}"
                        )
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model)
                    progress["bad_steps"] = 0
                step += 1
                progress.update(step=step, epoch=epoch, batch=i + 1)
                row = mean_over_ranks({k: sum(w[k] for w in window) / len(window) for k in window[0]}, world) if window else {}
                if runlog is not None:
                    runlog.step({"step": step, "epoch": epoch + 1, **row, "lr": cfg.lr * factor, "grad_norm": grad_norm, "skipped": window_bad})
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", lr=f"{cfg.lr * factor:.2e}")
                window, window_bad = [], False

                if any_true(stop.signum is not None, world):
                    saved = save(out / "last.safetensors")
                    bar.close()
                    where = f"saved {out / 'last.safetensors'}" if saved else "could NOT save a checkpoint"
                    signum = stop.signum or signal.SIGTERM
                    raise TrainingInterrupted(f"{signal.Signals(signum).name} at step {step}: {where}; continue with --resume auto", signum)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and i + 1 < len(loader):
                    save(out / "last.safetensors")
                over_time = bool(cfg.time_limit) and time.time() - start > 60 * cfg.time_limit
                out_of_budget = bool(cfg.max_steps and step >= cfg.max_steps) or any_true(over_time, world)
                if out_of_budget:
                    break
            bar.close()
            epoch_done = not out_of_budget or progress["batch"] == len(loader)
            if epoch_done:
                progress.update(epoch=epoch + 1, batch=0)

            # Evaluate (every process predicts its share of the validation set), log, save.
            losses_now = [r["loss"] for r in (runlog.steps.rows if runlog else []) if r.get("epoch") == epoch + 1 and "loss" in r]
            record = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses_now)) if losses_now else float("nan"), "time": round(time.time() - start, 1)}
            finished = epoch + 1 == cfg.epochs or out_of_budget
            if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or finished):
                metrics = _evaluate(final, val_set, cfg, amp_dtype, world)
                if metrics is not None:
                    record.update({k: v for k, v in metrics.stats.items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")})
            if world.is_main:
                if record.get("AP") is not None and record["AP"] >= best.get("AP", -1.0):
                    best = dict(record)
                    progress["best"] = best
                    save(out / "best.safetensors")  # before last: a kill in between re-runs this epoch
                if runlog is not None:
                    runlog.epoch(record)
                if not save(out / "last.safetensors") and finished:
                    raise OSError(f"training finished but {out / 'last.safetensors'} could not be written; see the error above")
                if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                    save(out / f"epoch_{epoch + 1:04d}.safetensors")
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  "
                    + "  ".join(f"{k} {record[k]:.3f}" for k in ("AP", "AP50", "AP75") if record.get(k) is not None)
                    + f"  ({record['time']:.0f}s)",
                    flush=True,
                )
            if on_epoch is not None:
                on_epoch(record)
            if finished:
                break

    if runlog is not None:
        if not best:  # no epoch was evaluated with a defined AP: the last weights are the best
            best = dict(record)
            progress["best"] = best
            save(out / "best.safetensors")
        runlog.plot()
        runlog.close()
    return broadcast(best or record, world)


def _evaluate(model, val_set, cfg: TrainConfig, amp_dtype, world):
    """COCO metrics on the main process; each process predicts every ``world_size``-th image."""
    from plaindet.engine.distributed import gather_lists
    from plaindet.engine.evaluate import evaluate_coco
    from plaindet.engine.validate import predict_dataset

    shard = val_set
    if world.distributed:
        shard = copy.copy(val_set)
        shard.samples = val_set.samples[world.rank :: world.world_size]
    results = gather_lists(predict_dataset(model, shard, image_size=cfg.image_size, batch_size=cfg.batch_size, amp_dtype=amp_dtype), world)
    return evaluate_coco(val_set, results) if world.is_main else None
