"""How big a LoRA finetune's files are with each ``--backbone-store``, and that the small files predict
exactly like the full ones.

    python benchmarks/bench_finetune_files.py [--model plaindet-b] [--rank 8] [--targets backbone] [--steps 2] [--out /tmp/finetune-files]

A random ViT of the model's size, saved in timm's layout, stands in for CLIP weights (file sizes
don't depend on the values). Three tiny runs (``--steps`` optimizer steps at 128 px on 8 shapes
images, same seed, so the same weights), ``--backbone-store every`` (every checkpoint holds the
backbone: the format before issue 17), ``once`` (``backbone.safetensors`` in the run folder) and
``reference`` (only the source's path and hash). Prints each file's bytes (``du -b``), each run
folder's ``du -sh``, and the largest difference between ``plaindet.load(...).predict`` from the
small files and from the full ones.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plaindet-b")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="backbone")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/finetune-files"))
    args = parser.parse_args()

    from safetensors.torch import save_file

    import plaindet
    from plaindet.engine.train import train
    from plaindet.engine.train_config import TrainConfig

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vit = plaindet.create_model(args.model, num_classes=3).backbone
    weights = out / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    del vit
    stores = ("every", "once", "reference")
    for store in stores:
        cfg = TrainConfig(
            model=args.model, data="shapes", shapes_train=8, shapes_val=2, shapes_test=0, shapes_dir=str(out / "shapes"), out=str(out / f"run-{store}"),
            epochs=1, batch_size=2, image_size=128, amp="off", max_steps=args.steps, eval_every=0, backbone_weights=str(weights),
            lora_rank=args.rank, lora_targets=args.targets, backbone_store=store,
        )  # fmt: skip
        train(cfg)
    print(f"\n{args.model}, LoRA rank {args.rank} on the {args.targets}, {args.steps} steps")
    print("| --backbone-store | best.safetensors | last.safetensors | backbone.safetensors | run folder (du -sh) |")
    print("|---|---:|---:|---:|---:|")
    for store in stores:
        run = out / f"run-{store}"
        size = {p.name: int(subprocess.run(["du", "-b", str(p)], capture_output=True, text=True).stdout.split()[0]) for p in run.glob("*.safetensors")}
        folder = subprocess.run(["du", "-sh", str(run)], capture_output=True, text=True).stdout.split()[0]
        mb = lambda name: f"{size[name] / 1e6:.1f} MB" if name in size else "-"  # noqa: E731
        print(f"| {store} | {mb('best.safetensors')} | {mb('last.safetensors')} | {mb('backbone.safetensors')} | {folder} |")
    image = out / "shapes" / "valid" / "valid_000000.jpg"
    full = plaindet.load(out / "run-every" / "last.safetensors").predict(image, threshold=0.0)
    for store in stores[1:]:
        small = plaindet.load(out / f"run-{store}" / "last.safetensors").predict(image, threshold=0.0)
        print(
            f"{store} vs every, predict: max abs diff boxes {np.abs(full.boxes - small.boxes).max():.1e} px, "
            f"scores {np.abs(full.scores - small.scores).max():.1e}, labels equal: {bool((full.labels == small.labels).all())}"
        )


if __name__ == "__main__":
    main()
