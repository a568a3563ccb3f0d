"""Can a set-prediction model's dense head memorize one batch? A quick diagnosis of the path that
query selection depends on (backbone -> encoder -> dense head).

    python benchmarks/dense_head_memorize.py [--model detr-r18] [--steps 40] [--lr 1e-4] [--set FIELD=JSON ...]

Builds the model from random weights, takes one batch of 8 shapes images at 256 px (written to
``--data`` on first use) and trains every parameter on the dense head's own losses only (focal
classes, L1 and GIoU of its one-to-many positives, as the set criterion weighs them) for
``--steps`` steps of AdamW. Every ``--every`` steps it prints the dense head's GIoU and L1 losses,
the mean box size and the share of the memory's variance that differs between its tokens (near 0:
every location looks alike to whatever reads the memory). A dense head that cannot bring its GIoU
loss well below 0.5 on one batch cannot give the decoder useful anchors. ``--set`` overrides a
model-config field (``--set identity_init=false``, ``--set dense_inside=false``) to compare. A
diagnosis, not a test: it takes a few CPU minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="detr-r18")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a model-config override")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("runs/dense_memorize_data"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from plaindet.data import load_dataset
    from plaindet.data.collate import make_loader
    from plaindet.data.shapes import ensure_shapes
    from plaindet.data.transforms import TransformedDataset, train_transform
    from plaindet.models.detr import input_wh
    from plaindet.models.factory import create_model

    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    folder = ensure_shapes(args.data, train=64, val=8, seed=0)
    dataset = load_dataset(folder, split="train")
    loader = make_loader(TransformedDataset(dataset, train_transform(256, crop=0.0, zoom_out=0.0), seed=0), 8, shuffle=True, seed=0)
    loader.set_epoch(0)
    batch = next(iter(loader))
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=len(dataset.class_names), dropout=0.0, **overrides).train()
    if not getattr(model.config, "dense_aux", False):
        raise SystemExit(f"{args.model} has no dense head (dense_aux is off)")
    criterion = model.criterion()
    w = model.config.loss
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    print(f"{args.model}{' ' + ' '.join(args.set) if args.set else ''}, lr {args.lr:g}, one batch of 8 shapes images at 256 px")
    print("| step | dense GIoU loss | dense L1 loss | mean box size px | memory variance between tokens |")
    print("|---|---|---|---|---|")
    for step in range(args.steps + 1):
        images = batch["images"]
        features = model.backbone(model.normalize(images))
        memory = model.encode(features)[0]
        dense = model.dense_head(model.dense_maps(features, memory))
        parts = criterion.dense_losses(dense, batch["targets"], input_wh(images))
        if step % args.every == 0:
            with torch.no_grad():
                size = (dense["boxes"][..., 2:] - dense["boxes"][..., :2]).mean()
                share = memory.float().var(dim=1).mean() / memory.float().var()
            print(f"| {step} | {parts['loss_dense_giou'].item():.3f} | {parts['loss_dense_l1'].item():.3f} | {size.item():.1f} | {share.item():.3f} |", flush=True)
        if step == args.steps:
            break
        loss = w.class_weight * parts["loss_dense_ce"] + w.l1_weight * parts["loss_dense_l1"] + w.giou_weight * parts["loss_dense_giou"]
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
