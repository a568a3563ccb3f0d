"""Every detector family on the shapes set with the same engine and the same CPU budget.

    python benchmarks/bench_models_shapes.py [--minutes 4 | --steps N] [--size 256] [--models plaindet-t detr-r18 ... | all]
        [--ablate [OPTION ...]] [--skip-base] [--split test|valid] [--set FIELD=JSON ...] [--curve-every 1]

Each model trains from random weights (nothing can be downloaded here) on 1,500 shapes images for
``--minutes`` of wall time (``TrainConfig.time_limit``), or for ``--steps`` optimizer steps (a
budget that a machine shared with other work does not distort), batch 8, constant learning rate after
warmup with EMA weights, one after another in this process; then its final weights are evaluated
on the 200 images of ``--split`` (test by default; the validation split is the one settings are
chosen on: screen with ``--split valid``). Prints a markdown table of AP, small-object AP, steps
done and the measured training time per step (the run's training wall time, data loading and the
learning-curve evaluations included, the final evaluation not, over its steps), and each model's
learning curve (validation AP every ``--curve-every`` epochs).

``--ablate`` also trains every set-prediction model (detr-*, deperceiver-*) once more per
convergence option with that option switched off (:data:`ABLATIONS`; ``--ablate "softmax classes"
...`` only those) and adds a column of AP per option: what the option buys at this budget.
``--skip-base`` leaves out the run with every option on, so the columns can be split over processes.
``--set`` overrides a model-config field of every model run (``--set loss.classification='"softmax"'``),
for screening. The learning rate is each
family's usual one (DETR-style set-prediction models use 1e-4, the dense plaindet head 1e-3).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

LR = {"plaindet": 1e-3, "detr": 1e-4, "deperceiver": 1e-4, "patchtok": 3e-4}  # per family
SMALL = ["plaindet-t", "detr-r18", "deperceiver-r18", "patchtok-ti"]  # the default: one per family
SET_FAMILIES = ("detr", "deperceiver")
# Each set-prediction convergence option on by default, switched off (with what depends on it).
ABLATIONS = {
    "softmax classes": {"loss": {"classification": "softmax", "class_weight": 1.0}},
    "no query selection": {"query_selection": False, "query_nms": 0.0, "selected_content": False},
    "no dense head": {"dense_aux": False, "query_selection": False, "query_nms": 0.0, "selected_content": False},
    "no anchor queries": {"anchor_queries": False, "query_selection": False, "query_nms": 0.0, "selected_content": False},
    "frozen BN": {"backbone_norm": "frozen_bn"},
    "no distinct queries": {"query_nms": 0.0},
    "no selected content": {"selected_content": False},
    "dense targets outside": {"dense_inside": False},
    "no identity init": {"identity_init": False},
}


def parse_sets(items: list[str]) -> dict:
    """``["a.b=1", "c=true"]`` -> ``{"a": {"b": 1}, "c": True}`` (values are JSON)."""
    overrides: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value)
    return overrides


def ablation_overrides(name: str, common: dict, options: list[str] | None = None) -> dict[str, dict]:
    """Each :data:`ABLATIONS` option (or each of ``options``) that model ``name`` has, as the config
    overrides of its run (``common`` with the option switched off), every one checked by building
    its config, so a combination the config refuses fails here, before any training."""
    from plaindet.models.factory import model_config

    unknown = set(options or ()) - set(ABLATIONS)
    if unknown:
        raise SystemExit(f"--ablate: no option {sorted(unknown)}; the options are {list(ABLATIONS)}")
    fields = {f.name for f in dataclasses.fields(model_config(name))}
    out = {}
    for option, off in ABLATIONS.items():
        if (not options or option in options) and set(off) <= fields:  # identity_init is DETR's own
            out[option] = merge(common, off)
            model_config(name, **out[option])
    return out


def merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, nested dicts merged."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=SMALL, help="registered names, or all")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=0, help="a step budget instead of --minutes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default="test", choices=["test", "valid"], help="the split the table reports")
    ap.add_argument("--ablate", nargs="*", default=None, metavar="OPTION",
                    help="also train each set-prediction model with each convergence option off (or only the OPTIONs named)")
    ap.add_argument("--skip-base", action="store_true", help="train only the --ablate runs (to split the columns over processes)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a model-config override for every model")
    ap.add_argument("--curve-every", type=int, default=1, help="epochs between learning-curve evaluations on valid (0: none)")
    ap.add_argument("--lr", type=float, default=None, help="the peak learning rate of every model run (default: its family's, LR)")
    ap.add_argument("--backbone-lr-mult", type=float, default=None, help="the backbone's learning-rate multiplier (default: TrainConfig's)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_models"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.data.shapes import builtin_shapes
    from plaindet.engine.evaluate import evaluate
    from plaindet.engine.train import load_splits, train
    from plaindet.engine.train_config import TrainConfig

    base = TrainConfig(
        data="shapes", shapes_train=1500, shapes_val=200, shapes_test=200, image_size=args.size, batch_size=8, epochs=100,
        warmup_steps=50, min_lr_ratio=1.0, ema_decay=0.998, eval_every=args.curve_every or 1000,
        time_limit=0.0 if args.steps else args.minutes, max_steps=args.steps,
        augment={"crop": 0.0, "zoom_out": 0.0},
    )  # fmt: skip
    if args.backbone_lr_mult is not None:
        base = dataclasses.replace(base, backbone_lr_mult=args.backbone_lr_mult)
    datasets = load_splits(base)
    folder = builtin_shapes(train=base.shapes_train, val=base.shapes_val, test=base.shapes_test, seed=base.seed)
    if args.models == ["all"]:
        from plaindet.models.factory import list_models

        args.models = list_models()
    common = parse_sets(args.set)

    def run(name: str, variant: str, overrides: dict) -> dict:
        family = name.rsplit("-", 1)[0]
        folder_name = name if not variant else f"{name}-{variant.replace(' ', '-')}"
        cfg = dataclasses.replace(base, model=name, model_overrides=overrides, lr=args.lr or LR[family], out=str(args.out / folder_name))
        records: list[dict] = []  # every epoch's record: train() returns the best one, not the last
        train(cfg, lambda r: records.append(dict(r)), datasets=datasets)
        last = records[-1]
        curve = [(r["step"], r["AP"]) for r in records if "AP" in r]
        step_s = last["time"] / max(last["step"], 1)
        metrics = evaluate(folder, args.split, weights=Path(cfg.out) / "last.safetensors", image_size=args.size).metrics.stats
        label = f"{name} ({variant})" if variant else name
        print(f"{label}: {last['step']} steps, {args.split} AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f}, APs {metrics['APs']:.3f}); "
              f"{step_s:.2f} s/step; valid AP by step: " + ", ".join(f"{s}: {a:.3f}" for s, a in curve), flush=True)  # fmt: skip
        return {"lr": cfg.lr, "steps": last["step"], "step_s": step_s, "metrics": metrics, "curve": curve}

    ablate = args.ablate is not None
    if args.skip_base and not ablate:
        raise SystemExit("--skip-base trains only the --ablate runs: name --ablate too")
    planned = {name: ablation_overrides(name, common, args.ablate) if ablate and name.rsplit("-", 1)[0] in SET_FAMILIES else {} for name in args.models}
    rows = []
    for name in args.models:
        result = None if args.skip_base else run(name, "", common)
        ablations = {option: run(name, option, overrides)["metrics"]["AP"] for option, overrides in planned[name].items()}
        rows.append((name, result, ablations))

    extra = [o for o in ABLATIONS if any(o in options for options in planned.values())]  # the columns that ran
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    print(f"\nshapes set, {args.size} px, batch 8, {budget} of training each, {args.threads} threads; "
          f"the 200 {args.split} images{'; ' + ', '.join(args.set) if args.set else ''}")  # fmt: skip
    print("| model | lr | steps | s/step | AP | AP50 | AP75 | APs |" + "".join(f" AP, {o} |" for o in extra))
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for name, r, ablations in rows:
        cells = "".join(f" {ablations[o]:.3f} |" if o in ablations else " - |" for o in extra)
        if r is None:  # --skip-base
            print(f"| {name} | - | - | - | - | - | - | - |{cells}")
            continue
        m = r["metrics"]
        print(f"| {name} | {r['lr']:g} | {r['steps']} | {r['step_s']:.2f} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['APs']:.3f} |{cells}")


if __name__ == "__main__":
    main()
