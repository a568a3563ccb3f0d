"""The training loop. It reads top to bottom: data, model, optimizer, then epochs of steps and evals.

A run folder gets ``config.json`` (the resolved :class:`TrainConfig`), ``last.safetensors`` and
``best.safetensors`` (each loadable alone with :func:`plaindet.load`), and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from plaindet import __version__
from plaindet.config import to_dict

log = logging.getLogger("plaindet")


@dataclass
class TrainConfig:
    """Every training setting, with its default. The CLI and :func:`train` take the same fields.

    ``data`` is a dataset path in any supported format, or ``"shapes"`` for the built-in synthetic
    set (``shapes_train`` and ``shapes_val`` images, written under ``shapes_dir``).

    ``ema_decay``: the weights evaluated and saved are an exponential moving average of the training
    weights (0 turns it off; see :mod:`plaindet.engine.ema`).

    ``eval_every``: evaluate on the validation split every this many epochs and after the last;
    0 never evaluates (``best`` is then the last epoch's weights).

    ``backbone_lr_mult`` scales the learning rate of the backbone's own weights. It matters only when
    they train, i.e. for a backbone built without pretrained weights: a random ViT updated at the
    neck's rate turns noisy and starves the neck (on the shapes set, 300 steps gave AP 0.000 at 1.0
    and 0.135 at 0.1).
    """

    model: str = "plaindet-t"
    data: str = "shapes"
    out: str = "runs/train"
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
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
    shapes_train: int = 2000
    shapes_val: int = 200
    shapes_dir: str = ""
    max_train_images: int = 0

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be bf16, fp16 or off, got {self.amp!r}")
        if self.lora_targets not in ("neck", "backbone", "both"):
            raise ValueError(f"lora_targets must be neck, backbone or both, got {self.lora_targets!r}")


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


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups by rule: no weight decay on 1-d tensors (norms, biases, scales) and position
    tables; the backbone's own weights (not its LoRA adapters) learn at ``backbone_lr_mult`` times
    the rate."""
    skip = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and name not in skip
        is_backbone = name.startswith("backbone.") and ".lora_" not in name
        groups.setdefault((decay, is_backbone), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr_mult": cfg.backbone_lr_mult if is_backbone else 1.0,
        }
        for (decay, is_backbone), params in groups.items()
    ]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None, *, datasets: tuple | None = None) -> dict:
    """Train and evaluate; returns the best epoch's metrics. See :class:`TrainConfig`.

    ``datasets``: an optional ``(train, val)`` pair of :class:`~plaindet.data.DetectionDataset` to use
    instead of reading ``cfg.data`` (for datasets built in Python, e.g. a subset).
    """
    from tqdm.auto import tqdm

    from plaindet.data.collate import make_loader
    from plaindet.data.transforms import TransformedDataset, train_transform
    from plaindet.engine.ema import ModelEMA
    from plaindet.engine.validate import evaluate_model
    from plaindet.models.registry import create_model

    out = Path(cfg.out)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]

    # Data.
    train_set, val_set = datasets if datasets is not None else load_splits(cfg)
    log.info("train: %s", train_set)
    log.info("val:   %s", val_set)
    transform = train_transform(cfg.image_size, scales=cfg.scales or None, **cfg.augment)
    loader = make_loader(
        TransformedDataset(train_set, transform, seed=cfg.seed),
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.workers,
        drop_last=len(train_set) >= 2 * cfg.batch_size,
    )

    # Model, loss, optimizer.
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("image_size", cfg.image_size)
    if cfg.lora_rank:
        overrides["lora"] = {"rank": cfg.lora_rank, "targets": cfg.lora_targets}
    model = create_model(
        cfg.model,
        class_names=train_set.class_names,
        category_ids=train_set.category_ids,
        backbone_weights=cfg.backbone_weights,
        **overrides,
    ).to(device)
    criterion = model.criterion()
    groups = param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    total_steps = cfg.epochs * len(loader)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %.2fM parameters, %.2fM trainable; %d steps", cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, n_train / 1e6, total_steps)

    out.mkdir(parents=True, exist_ok=True)  # only now: a run that fails on its inputs leaves no folder
    run_config = {"train": to_dict(cfg), "model": to_dict(model.config), "plaindet_version": __version__}
    (out / "config.json").write_text(json.dumps(run_config, indent=2))
    metrics_log = (out / "metrics.jsonl").open("a")

    best: dict = {}
    step = 0
    start = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        loader.set_epoch(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        running = 0.0
        for i, batch in enumerate(bar):
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * g["lr_mult"] * lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
            images = batch["images"].to(device, non_blocking=True)
            targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(images, targets)
            losses = criterion(outputs, targets)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                log.warning("step %d: non-finite loss %s, step skipped", step, loss.item())
                optimizer.zero_grad(set_to_none=True)
                step += 1
                continue
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            running = 0.9 * running + 0.1 * loss.item() if i else loss.item()
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            step += 1

        final = ema.module if ema is not None else model  # the weights we evaluate and ship
        record = {"epoch": epoch + 1, "step": step, "loss": running, "time": round(time.time() - start, 1)}
        if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            metrics = evaluate_model(final, val_set, image_size=cfg.image_size, batch_size=cfg.batch_size, amp_dtype=amp_dtype)
            record.update({k: v for k, v in metrics.stats.items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")})
        final.save(out / "last.safetensors")
        if record.get("AP") is not None and record["AP"] >= best.get("AP", -1.0):
            best = dict(record)
            final.save(out / "best.safetensors")
        metrics_log.write(json.dumps(record) + "\n")
        metrics_log.flush()
        print(
            f"epoch {epoch + 1}/{cfg.epochs}  loss {running:.4f}  "
            + "  ".join(f"{k} {record[k]:.3f}" for k in ("AP", "AP50", "AP75") if record.get(k) is not None)
            + f"  ({record['time']:.0f}s)",
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(record)
    metrics_log.close()
    if not best:  # no epoch was evaluated with a defined AP: keep the last weights as best
        final.save(out / "best.safetensors")
        best = record
    return best
