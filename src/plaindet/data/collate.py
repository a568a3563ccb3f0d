"""Batching: pad variable-size images into one tensor, and a reproducible data loader.

Images keep their own size and aspect ratio through the transforms (see
:mod:`plaindet.data.transforms`), so a batch is padded at the bottom and right to a common size, and
a mask tells the model which pixels are padding. The model normalizes the pixels itself.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["DetectionLoader", "EpochBatchSampler", "EpochSampler", "collate", "make_loader"]


def collate(batch: Sequence[dict[str, Any]], *, size_divisor: int = 32) -> dict[str, Any]:
    """Pad a list of dataset items (:class:`~plaindet.data.transforms.TransformedDataset`) into a batch.

    Args:
        batch: items with ``image`` ``uint8 (h, w, 3)``, ``boxes`` ``float32 (N, 4)`` xyxy pixels,
            ``labels`` ``int64 (N,)``, ``image_id``, ``orig_size`` ``(H, W)``, ``size`` ``(h, w)``,
            and optionally ``iscrowd`` ``bool (N,)``.
        size_divisor: the padded height and width are multiples of this (backbone strides need it).

    Returns:
        A dict with

        - ``images``: ``uint8`` tensor ``(B, 3, H, W)``, each image at the top-left, zero-padded at the
          bottom and right. ``H, W`` are the largest ``h, w`` in the batch rounded up to
          ``size_divisor``. Not normalized.
        - ``mask``: ``bool`` tensor ``(B, H, W)``, ``True`` on padding, ``False`` on image pixels.
        - ``targets``: a list of ``B`` dicts of tensors: ``boxes`` ``float32 (N, 4)`` absolute xyxy
          pixels of the (unpadded) image, ``labels`` ``int64 (N,)``, ``iscrowd`` ``bool (N,)``,
          ``image_id`` ``int64 ()``, ``orig_size`` and ``size`` ``int64 (2,)`` as ``(h, w)``.
          Padding does not move boxes, so they are also pixels of the padded batch image.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    heights = [item["image"].shape[0] for item in batch]
    widths = [item["image"].shape[1] for item in batch]
    pad_h = -(-max(heights) // size_divisor) * size_divisor
    pad_w = -(-max(widths) // size_divisor) * size_divisor

    images = torch.zeros((len(batch), 3, pad_h, pad_w), dtype=torch.uint8)
    # Copied through numpy: the transforms may return read-only arrays (e.g. an untouched decoded
    # image), which numpy reads fine but torch.from_numpy warns about.
    images_np = images.numpy()
    mask = torch.ones((len(batch), pad_h, pad_w), dtype=torch.bool)
    targets = []
    for i, item in enumerate(batch):
        h, w = heights[i], widths[i]
        images_np[i, :, :h, :w] = np.asarray(item["image"]).transpose(2, 0, 1)
        mask[i, :h, :w] = False
        n = len(item["boxes"])
        iscrowd = item.get("iscrowd")
        iscrowd = np.zeros(n, dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(n)
        targets.append(
            {
                "boxes": torch.as_tensor(np.asarray(item["boxes"], dtype=np.float32).reshape(n, 4)),
                "labels": torch.as_tensor(np.asarray(item["labels"], dtype=np.int64).reshape(n)),
                "iscrowd": torch.as_tensor(iscrowd),
                "image_id": torch.tensor(int(item["image_id"]), dtype=torch.int64),
                "orig_size": torch.tensor(tuple(item["orig_size"]), dtype=torch.int64),
                "size": torch.tensor((h, w), dtype=torch.int64),
            }
        )
    return {"images": images, "mask": mask, "targets": targets}


class EpochSampler(Sampler[int]):
    """Sample indices in an order that is a pure function of ``(seed, epoch)``.

    With ``shuffle`` each epoch gets its own permutation, the same on every run and on resume (unlike
    a generator-driven sampler, whose order depends on how many epochs were iterated before).
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of :class:`EpochSampler`'s order, split across data-parallel ranks, resumable mid-epoch.

    The epoch's order is cut into global batches of ``batch_size`` samples; rank ``r`` of
    ``world_size`` gets the ``r``-th contiguous slice of each (``batch_size // world_size`` samples).
    So every optimizer step sees the same samples whatever the number of processes, and a run on two
    processes matches a run on one with the same global batch. ``set_epoch(epoch, start_batch)``
    skips the first ``start_batch`` batches without reading them: how a resumed run continues
    exactly where the interrupted one stopped.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} must be a multiple of the number of processes {world_size}")
        if world_size > 1 and not drop_last and num_samples % batch_size:
            drop_last = True  # a short last batch cannot be split evenly over the ranks
        self.order = EpochSampler(num_samples, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.order.set_epoch(epoch)
        self.start_batch = start_batch

    def __len__(self) -> int:
        n = self.order.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.order)
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                batch = batch[self.rank * local : (self.rank + 1) * local]
            yield batch


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive Python's and NumPy's global
    # generators from it too, so any code that uses them in a worker is reproducible. (Our own
    # augmentations do not: they are seeded per sample.)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class DetectionLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` with :meth:`set_epoch`; build it with :func:`make_loader`."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s sample order and augmentation randomness, starting at batch
        ``start_batch`` of the epoch. Call before iterating."""
        self.batch_sampler.set_epoch(epoch, start_batch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    size_divisor: int = 32,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DetectionLoader:
    """A reproducible loader of :func:`collate` batches.

    Batches depend only on ``(seed, epoch)``: the order comes from :class:`EpochSampler` and the
    augmentation from the dataset's own per-sample seeding (``TransformedDataset``), so the number
    of workers does not change them. Call ``loader.set_epoch(epoch)`` before each epoch; without it
    every epoch repeats epoch 0.

    Workers are not persistent: they are started for each pass and receive a fresh copy of the
    dataset, which is how the epoch set in the main process reaches them.

    ``batch_size`` is the global batch; with ``world_size`` processes each loads its ``rank``-th
    share (see :class:`EpochBatchSampler`).
    """
    return DetectionLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisor=size_divisor),
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
