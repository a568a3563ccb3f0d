"""BiT ResNet-v2 backbones (Kolesnikov et al. 2020, "Big Transfer"), in timm's parameter layout.

A pre-activation ResNet (He et al. 2016, "Identity Mappings") in which every convolution is
weight-standardized and every norm is a GroupNorm of 32 groups, so nothing depends on batch
statistics: the norms fine-tune like any other parameter, at any batch size.

- :class:`StdConv2d`: before each use, every output channel's kernel is standardized over
  ``(in, kh, kw)``: ``w' = (w - mean) / sqrt(var + eps)`` with the biased variance and
  ``eps = 1e-8`` (timm's ``resnetv2_*_bit`` and transformers' ``BitModel`` both use 1e-8).
- Stem: 7x7 stride-2 :class:`StdConv2d` (padding 3), no norm (the first block's ``norm1`` is its
  pre-activation), then BiT's "fixed" padding: a constant zero pad of 1 and a 3x3 stride-2 max-pool
  without padding. Stride 4.
- :class:`PreActBottleneck`: ``norm1 -> ReLU`` (the pre-activated input), then ``conv1`` (1x1),
  ``norm2 -> ReLU -> conv2`` (3x3, the stage's stride is here), ``norm3 -> ReLU -> conv3`` (1x1,
  4x the width), plus the shortcut: the input itself, or on the first block of each stage a
  projection ``downsample.conv`` (1x1 :class:`StdConv2d`, strided) of the *pre-activated* input.
- After the last stage, ``norm`` (GroupNorm + ReLU): a pre-activation net's residual stream is never
  normalized inside the blocks, so the head (here the detector) needs this final activation.

This is the architecture of timm's ``resnetv2_50x1_bit`` (``stem_type="fixed"``, ``StdConv2d`` with
``eps=1e-8``, symmetric PyTorch padding) and of transformers'
``BitModel(BitConfig(layer_type="preactivation", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024,
2048], global_padding=None, embedding_dynamic_padding=False))`` (those two paddings are BitConfig's
defaults; ``global_padding="SAME"`` with dynamic padding is the ViT-hybrid variant, another model).
The module names are timm's (``stem.conv``, ``stages.S.blocks.B.{norm1,conv1,norm2,conv2,norm3,
conv3,downsample.conv}``, ``norm``), so timm state dicts load by name; Google's ``.npz`` files and
transformers' layout are converted in :mod:`~plaindet.models.bit_weights`.

The pretrained weights expect pixels scaled to [-1, 1] (mean 0.5, std 0.5 per channel:
:data:`~plaindet.models.layers.INCEPTION_MEAN`), not the ImageNet statistics of torchvision's ResNets.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

# depth -> blocks per stage (all bottleneck, width factor 1: the BiT "x1" models)
BIT_LAYOUTS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
GROUPS = 32
STEM_WIDTH = 64


class StdConv2d(nn.Conv2d):
    """A bias-free convolution with weight standardization (see the module doc), padding ``kernel // 2``.

    ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, eps: float = 1e-8) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        """``(out, in, kh, kw)``: each output channel's kernel at mean 0 and variance 1 (biased)."""
        # Batch-normalizing the kernels as one "batch" of ``out`` channels (statistics over
        # ``in * kh * kw``) is the standardization itself, and the kernel timm and transformers use:
        # the same rounding as theirs, where a var_mean formula differs by an ulp that 16 residual
        # blocks grow to ~1e-5 of the features.
        flat = self.weight.reshape(1, self.out_channels, -1)
        return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5, affine) followed by ReLU; its parameters are ``weight`` and
    ``bias`` as in timm's ``GroupNormAct``. ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class DownsampleConv(nn.Module):
    """The projection shortcut: a strided 1x1 :class:`StdConv2d` (no norm: its input is pre-activated)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (see the module doc). ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``;
    ``project``: the first block of a stage, whose shortcut is a projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, project: bool) -> None:
        super().__init__()
        width = out_channels // 4
        self.downsample = DownsampleConv(in_channels, out_channels, stride) if project else None
        self.norm1 = GroupNormAct(in_channels)
        self.conv1 = StdConv2d(in_channels, width, 1)
        self.norm2 = GroupNormAct(width)
        self.conv2 = StdConv2d(width, width, 3, stride=stride)
        self.norm3 = GroupNormAct(width)
        self.conv3 = StdConv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x + shortcut


class BitStage(nn.Module):
    """``blocks`` of :class:`PreActBottleneck`, the first strided and projecting."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(PreActBottleneck(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, project=i == 0) for i in range(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class BiT(nn.Module):
    """A BiT ResNet-v2 trunk without its classifier, returning the feature maps of the stages asked for.

    Args:
        depth: 50 or 101 (BiT-S/M-R50x1, R101x1).
        num_stages: build only ``stages.0..stages.{num_stages - 1}``; the final ``norm`` exists only
            when all 4 are built (it belongs to the last stage's output). Pretrained weights of the
            stages not built are skipped on load.

    ``forward(x)``: ``x`` ``(B, 3, H, W)`` normalized float images (see the module doc); returns a
    list with each built stage's output, stage ``i`` (0-based) ``(B, channels[i], H / 2^(i+2),
    W / 2^(i+2))`` (strides 4, 8, 16, 32). The first three are the raw residual stream (what timm's
    ``features_only`` and transformers' ``hidden_states`` give); the fourth is after ``norm``
    (transformers' ``last_hidden_state``), the activation the pretrained head was trained on.

    The interface the set detectors use of :class:`~plaindet.models.resnet.ResNet`: ``depth``,
    ``channels``, ``strides``, ``num_stages``, :meth:`freeze_stages` (the units it counts are
    :meth:`units`; ``stages`` is the module holding the stages, timm's name).
    """

    def __init__(self, depth: int = 50, num_stages: int = 4) -> None:
        super().__init__()
        if depth not in BIT_LAYOUTS:
            raise ValueError(f"BiT depth must be one of {sorted(BIT_LAYOUTS)}, got {depth}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be 1 to 4, got {num_stages}")
        self.depth = depth
        self.num_stages = num_stages
        self.stem = nn.Sequential(
            OrderedDict(conv=StdConv2d(3, STEM_WIDTH, 7, stride=2), pad=nn.ConstantPad2d(1, 0.0), pool=nn.MaxPool2d(3, stride=2))
        )
        self.channels: list[int] = []
        self.strides: list[int] = []
        stages = []
        in_channels = STEM_WIDTH
        for i in range(num_stages):
            out_channels = 256 * 2**i
            stages.append(BitStage(in_channels, out_channels, stride=1 if i == 0 else 2, depth=BIT_LAYOUTS[depth][i]))
            in_channels = out_channels
            self.channels.append(out_channels)
            self.strides.append(4 * 2**i)
        self.stages = nn.Sequential(*stages)
        self.norm = GroupNormAct(in_channels) if num_stages == 4 else None
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's initialization: He-normal (fan-out) convolutions; GroupNorm starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def units(self) -> list[nn.Module]:
        """The stem and then each built stage (the last with the final ``norm``): what ``frozen_stages``
        counts, as :meth:`ResNet.stages() <plaindet.models.resnet.ResNet.stages>` does. (Not named
        ``stages``: that is timm's name of the stage modules, which the weights are loaded by.)"""
        units: list[nn.Module] = [self.stem, *self.stages]
        if self.norm is not None:
            units[-1] = nn.ModuleList([units[-1], self.norm])
        return units

    def freeze_stages(self, num_frozen: int) -> None:
        """Make the first ``num_frozen`` of :meth:`units` untrainable (0: all train) and the rest trainable.

        GroupNorm's affine terms are parameters, so they freeze and train with their unit (unlike the
        ResNet's frozen BatchNorm, whose terms are fixed buffers everywhere)."""
        for i, unit in enumerate(self.units()):
            for p in unit.parameters():
                p.requires_grad_(i >= num_frozen)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        if self.norm is not None:
            features[-1] = self.norm(x)
        return features
