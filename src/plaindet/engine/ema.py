"""Exponential moving average of a model's weights, evaluated and saved instead of the raw weights.

Averaging the last few hundred optimizer steps smooths out the noise of small-batch training; with
short schedules the averaged weights are usually better than the last ones.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    The decay ramps up as ``(1 + n) / (10 + n)`` over the first updates, so the average is not stuck
    near the random initial weights in a short run. Buffers and integer tensors are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_t, t in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.detach(), 1.0 - d)
            else:
                ema_t.copy_(t)
