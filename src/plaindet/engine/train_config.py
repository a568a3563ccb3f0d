"""Every training setting (:class:`TrainConfig`) and how a command line resolves them; no torch here,
so the command line builds its options from this module without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from plaindet.config import apply_overrides, setting
from plaindet.errors import ConfigError


@dataclass
class TrainConfig:
    """Every training setting, with its default. The CLI (one option per field, help text from here),
    YAML configs and :func:`train` take the same fields.

    ``data`` is a dataset path in any supported format, or ``"shapes"`` for the built-in synthetic
    set (``shapes_train``, ``shapes_val`` and ``shapes_test`` images, written under ``shapes_dir``);
    ``"shapes:classes=star,cross,ring"`` picks its classes (see :data:`plaindet.data.shapes.SHAPE_KINDS`).

    ``batch_size`` is the global batch of one optimizer step before accumulation: with ``torchrun``
    each of the ``N`` processes loads ``batch_size / N`` images, so the run matches a one-process run.
    ``accumulate`` sums gradients over that many batches per optimizer step.

    Learning rate: linear warmup over ``warmup_steps``, then ``schedule`` ``"cosine"`` (down to
    ``min_lr_ratio`` of the peak; 1.0 keeps it constant) or ``"step"`` (times ``step_gamma`` at each
    epoch in ``step_epochs``). Multipliers per part: ``backbone_lr_mult`` for the backbone's own
    weights, ``lora_lr_mult`` for LoRA adapters, ``neck_lr_mult`` and ``head_lr_mult``. Unset
    (``None``), the backbone's is 0.1 when it starts from trained weights (``backbone_weights`` or
    ``init``: DETR's 1e-5 against 1e-4) and the model's ``scratch_backbone_lr_mult`` when it starts
    from random weights (see :func:`plaindet.engine.train.backbone_lr_mult`): 0.1 for a ViT (a
    random ViT updated at the neck's rate turns noisy and starves the neck; on the shapes set 300
    steps of plaindet-t gave AP 0.000 at 1.0 and 0.135 at 0.1) and 10 for the set-prediction models'
    ResNet, which at 0.1 barely moves from its random start (measured: see
    :class:`~plaindet.models.detr.SetDetector`).

    ``amp``: ``"auto"`` trains in bf16 autocast where the device multiplies bf16 natively (a GPU
    that supports it; a CPU with AVX512-BF16 or AMX), in fp16 on an older GPU, and in fp32 on any
    other CPU: there bf16 is emulated, and measured on a 2-core AVX2 EPYC a bf16 matrix product ran
    at 1-15 GFLOP/s against fp32's 120-180, and the demo's training step took 20.3 s in bf16 against
    1.1 s in fp32 (``benchmarks/bench_demo_step.py``). The log says which it chose and why.

    ``ema_decay``: the weights evaluated and deployed are an exponential moving average of the
    training weights (0 turns it off; see :mod:`plaindet.engine.ema`).

    ``eval_every``: evaluate on the validation split every this many epochs and after the last;
    0 never evaluates (``best`` is then the last epoch's weights). Evaluation runs the model in fp32
    through :meth:`~plaindet.models.base.DetectionModel.predict`, exactly as ``plaindet eval`` does.

    ``resume``: ``""`` (start afresh), ``"auto"`` (continue ``out/last.safetensors`` if it exists) or
    a checkpoint path. A resumed run takes its settings from the checkpoint; only the fields in
    :data:`RESUME_OVERRIDABLE` that are set here to a non-default value replace them.

    ``init``: a trained detector's checkpoint (any registered family) to start from: every weight
    whose name and shape match is taken, the class layers re-initialized when the classes differ
    (see :mod:`plaindet.engine.warm_start`); the run folder's ``init.json`` lists what was taken and
    what was not. It is not ``--resume``: the run starts at step 0 with a new optimizer. A resumed
    run keeps its checkpoint's ``init`` (and only rebuilds the model with it before the checkpoint's
    weights replace everything), so ``--init`` with ``--resume`` never changes the continued run.
    With ``backbone_weights`` too, the backbone is that one (frozen) and ``init`` gives the rest: a
    trained neck to adapt with LoRA on a pretrained backbone, say.

    ``backbone_store``: with a frozen backbone, ``"once"`` writes it to ``OUT/backbone.safetensors``
    and the checkpoints hold only what trains; ``"reference"`` copies nothing and records
    ``backbone_weights`` (which must stay where it is) with the backbone's hash; ``"every"`` keeps it
    in every checkpoint (see :mod:`plaindet.engine.backbone_store`).

    ``compile``: the training forward (and so its backward) runs through ``torch.compile``; a
    failure to compile (no C++ compiler, say) warns and the run continues eagerly. Off by default:
    on the demo's recipe it gave 1.09x the steps per second after a first step of 105 s, which a
    ten-minute run does not earn back (``benchmarks/bench_demo_step.py --set compile=true``).

    ``max_bad_steps``: that many non-finite losses (or gradients) in a row stop the run; isolated
    ones skip their step. ``max_steps`` > 0 ends training after that many optimizer steps, and
    ``time_limit`` > 0 after the step that passes that many minutes (then evaluates and saves, and
    the epoch's line says why the run stopped). The cosine schedule ends where the run will: at
    ``max_steps``, or with a time limit at the step estimated from the first steps' speed (and
    again every 10 steps and after each epoch, evaluation included; the log says what it
    estimated), so a
    time-limited run's rate decays too; the estimate depends on the machine's speed, so a
    time-limited run is not reproducible step for step.
    """

    model: str = setting("plaindet-t", help="A registered model (see `plaindet models`).")
    data: str = setting("shapes", help="Dataset (COCO, YOLO or VOC), or 'shapes' for the built-in synthetic set ('shapes:classes=star,cross,ring' picks its classes).")
    out: str = setting("runs/train", help="Run folder for config.yaml, checkpoints, logs and plots.")
    train_split: str = setting("train", help="The split to train on.")
    val_split: str = setting("val", help="The split to evaluate on (and choose the best checkpoint by).")
    epochs: int = setting(12, help="Passes over the training split.")
    batch_size: int = setting(8, help="Global batch (split over torchrun processes).")
    accumulate: int = setting(1, help="Batches per optimizer step.")
    lr: float = setting(1e-3, help="Peak learning rate (AdamW).")
    backbone_lr_mult: float | None = setting(
        None, help="Learning-rate multiplier of the backbone's own weights (default: 0.1 for trained backbone weights, else the model's choice for a backbone from random weights)."
    )
    lora_lr_mult: float = setting(1.0, help="Learning-rate multiplier of LoRA adapters.")
    neck_lr_mult: float = setting(1.0, help="Learning-rate multiplier of the neck.")
    head_lr_mult: float = setting(1.0, help="Learning-rate multiplier of the head.")
    weight_decay: float = setting(0.05, help="AdamW weight decay (not on 1-d tensors and embeddings).")
    warmup_steps: int = setting(100, help="Linear warmup steps.")
    schedule: str = setting("cosine", help="After warmup: cosine or step.")
    min_lr_ratio: float = setting(0.05, help="Cosine: final learning rate as a fraction of the peak (1: constant).")
    step_epochs: list[int] = setting(help="Step schedule: epochs at which the rate drops.", factory=list, cli=False)
    step_gamma: float = setting(0.1, help="Step schedule: factor at each drop.")
    grad_clip: float = setting(1.0, help="Gradient-norm clipping.")
    image_size: int = setting(640, help="Long side of the training images.")
    scales: list[int] = setting(help="Multi-scale training: long sides to pick from per batch.", factory=list, cli=False)
    amp: str = setting("auto", help="Mixed precision: auto (bf16 where the device has native bf16, else fp16 on a GPU, off on a CPU), bf16, fp16 (GPU) or off.")
    compile: bool = setting(False, help="torch.compile the training forward (and so its backward); falls back to eager, with a warning, where compiling fails (no C++ compiler, say).")
    workers: int = setting(0, help="Data-loading processes.")
    seed: int = setting(0, help="Seed of every random choice.")
    backbone_weights: str | None = setting(
        None, help="Pretrained backbone weights (file, Hugging Face Hub id, or a plaindet checkpoint or run folder: its backbone); freezes a ViT backbone."
    )
    init: str = setting("", help="Start from a trained detector's checkpoint: weights whose name and shape match; class layers re-initialized if the classes differ.")
    backbone_store: str = setting("once", help="Frozen backbone: once (OUT/backbone.safetensors), reference (record its source and hash) or every (in each checkpoint).")
    lora_rank: int = setting(0, help="LoRA rank (0: no adapters).")
    lora_targets: str = setting("backbone", help="Where LoRA adapters go: neck, backbone or both.")
    model_overrides: dict[str, Any] = setting(help="Model config fields, e.g. {backbone: {window_size: 8}}.", factory=dict, cli=False)
    augment: dict[str, Any] = setting(help="Augmentation settings (see plaindet.data.transforms.train_transform).", factory=dict, cli=False)
    eval_every: int = setting(1, help="Evaluate every N epochs (0: never).")
    ema_decay: float = setting(0.998, help="EMA of the weights (0: off).")
    save_every: int = setting(0, help="Also keep epoch_N.safetensors every N epochs.")
    save_every_steps: int = setting(0, help="Update last.safetensors every N steps.")
    resume: str = setting("", help="'auto' (continue OUT/last.safetensors if any) or a checkpoint to continue.")
    max_bad_steps: int = setting(5, help="Stop after this many non-finite steps in a row.")
    max_steps: int = setting(0, help="Stop after N optimizer steps (0: no limit).")
    time_limit: float = setting(0.0, help="Stop after this many minutes, then evaluate and save; the schedule is fitted to it (0: no limit).")
    tensorboard: bool = setting(False, help="Write TensorBoard events (extra: tensorboard).")
    log_every: int = setting(0, help="Output not a terminal (a log file): a progress line every N batches instead of a bar (0: every 30 s).")
    device: str = setting("", help="cpu, cuda, cuda:1 (default: cuda if available).")
    shapes_train: int = setting(2000, help="--data shapes: training images.")
    shapes_val: int = setting(200, help="--data shapes: validation images.")
    shapes_test: int = setting(200, help="--data shapes: test images.")
    shapes_dir: str = setting("", help="--data shapes: where to write them (default: ~/.cache/plaindet).")
    max_train_images: int = setting(0, help="Train on the first N images only (0: all).")

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.lora_targets not in ("neck", "backbone", "both"):
            raise ConfigError(f"lora_targets must be neck, backbone or both, got {self.lora_targets!r}")
        if self.backbone_store not in ("once", "reference", "every"):
            raise ConfigError(f"backbone_store must be once, reference or every, got {self.backbone_store!r}")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.accumulate < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size, accumulate and epochs must be at least 1")
        negative = [f.name for f in fields(self) if type(getattr(self, f.name)) in (int, float) and getattr(self, f.name) < 0]
        if negative:
            raise ConfigError(f"{', '.join(negative)} must not be negative")


# Settings a resumed run may change: how long it runs and how it reports, never what it computes.
RESUME_OVERRIDABLE = ("out", "epochs", "max_steps", "time_limit", "eval_every", "save_every", "save_every_steps", "workers", "tensorboard", "log_every", "max_bad_steps", "device", "compile")


def resolve_config(given: dict[str, Any], config_file: str | Path | None = None, sets: dict[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a ``plaindet train`` command: the defaults, then the YAML
    ``config_file`` (a run's ``config.yaml`` repeats that run), then the options ``given``, then
    ``sets`` (``--set key=value``). Unknown keys and wrong types are :class:`ConfigError`."""
    import yaml

    base = TrainConfig()
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
        base = apply_overrides(base, loaded.get("train", loaded), where=str(path))
    elif "data" not in given and not given.get("resume"):
        raise ConfigError("--data is required (or --config, or --resume)")
    cfg = apply_overrides(base, {**given, **(sets or {})}, where="train")
    from plaindet.models.factory import model_config

    model_config(cfg.model)  # an unknown model name fails now, with a suggestion, not after loading data
    return cfg
