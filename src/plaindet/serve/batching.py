"""Micro-batching: images of concurrent requests for one model run as one batch.

A request's images are submitted one by one; the batcher's loop takes the first pending image,
waits at most ``wait_s`` for more (or none, once ``max_batch`` are pending), and runs them as one
batch on the model's executor thread. While a batch runs, new images queue up and form the next
one, so throughput grows with concurrency, and a lone request waits at most ``wait_s`` extra.
Every image gets exactly the rows the model computed for it; the model input is fixed per model
(:mod:`plaindet.serve.backends`), so its results do not depend on its batch's other images.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchResult:
    """One image's rows of a batch: ``boxes (k, 4)``, ``scores (k,)``, ``labels (k,)``; the batch's
    model time and its size."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    model_ms: float
    batch_size: int


@dataclass
class BatchStats:
    """What a batcher has run: ``batches`` model calls on ``images`` images, the largest ``largest``."""

    batches: int = 0
    images: int = 0
    largest: int = 0


class MicroBatcher:
    """Runs ``run(uint8 (B, ...)) -> (boxes, scores, labels)`` on batches of submitted images.

    ``run`` is called on ``executor`` (one thread, shared by the server's models, so model calls never
    compete for the cores). :meth:`start` and :meth:`submit` are called from the event loop.
    """

    def __init__(self, run: Callable, *, max_batch: int, wait_s: float, executor: Executor) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.executor = executor
        self.stats = BatchStats()
        self._pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="plaindet-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def submit(self, image: np.ndarray) -> BatchResult:
        """Queue one model input and wait for its rows of the batch it runs in."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((image, future))
        self._arrived.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.wait_s
            while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
            taken = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            taken = [(image, future) for image, future in taken if not future.done()]  # a client that left
            if taken:
                await self._run_batch(loop, taken)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, taken: list) -> None:
        batch = np.stack([image for image, _ in taken])
        start = time.perf_counter()
        try:
            boxes, scores, labels = await loop.run_in_executor(self.executor, self.run, batch)
        except Exception as e:  # a model failure is each request's error, not the loop's end
            for _, future in taken:
                if not future.done():
                    future.set_exception(e)
            return
        model_ms = (time.perf_counter() - start) * 1000
        self.stats.batches += 1
        self.stats.images += len(taken)
        self.stats.largest = max(self.stats.largest, len(taken))
        for i, (_, future) in enumerate(taken):
            if not future.done():
                future.set_result(BatchResult(boxes[i], scores[i], labels[i], model_ms, len(taken)))
