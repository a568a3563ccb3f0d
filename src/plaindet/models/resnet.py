"""ResNet backbones (He et al. 2016) with frozen BatchNorm, in torchvision's parameter layout.

The module names are torchvision's (``conv1, bn1, layer1..layer4``; inside a block ``conv1/bn1,
conv2/bn2[, conv3/bn3]`` and ``downsample.0`` (1x1 conv), ``downsample.1`` (its norm)), so the
published ImageNet weights, and the ResNet part of the published DETR weights, load by name. The
stride sits in the 3x3 convolution ("ResNet v1.5"), as in torchvision and DETR.

BatchNorm is frozen (DETR's recipe, ``norm="frozen_bn"``): the running statistics and the affine
parameters are buffers that never change. Detection batches are small (2 to 4 images per GPU), too
small for batch statistics, and the ImageNet statistics are what the pretrained convolutions expect.

A frozen BatchNorm of a *random* network normalizes nothing (mean 0, variance 1, scale 1): such a
ResNet trained from scratch is an unnormalized deep network whose activations grow block by block.
``norm="group"`` builds it with GroupNorm (32 groups, trainable affine terms), the normalization He, Girshick
and Dollar ("Rethinking ImageNet Pre-training", 2019) showed detectors need to train from scratch
with small batches. Its parameter names are the same, but torchvision's weights do not load into it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.errors import WeightsError
from plaindet.weights import read_state_dict

log = logging.getLogger("plaindet")

# depth -> (block type, blocks per stage)
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    All four are buffers (saved, never trained). ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision checkpoints carry BatchNorm's step counter; a frozen norm has no use for it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


NORMS = ("frozen_bn", "group")


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalization layer :class:`ResNet` uses: ``"frozen_bn"`` or ``"group"`` (32 groups)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34). ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``.
    ``first_dilation`` (default ``dilation``) is the first convolution's, ``dilation`` the second's."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, norm: str = "frozen_bn", dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        d1 = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=d1, dilation=d1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (ResNet-50 and deeper). Shapes as :class:`BasicBlock`; the
    3x3 convolution's dilation is ``first_dilation`` (default ``dilation``)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, norm: str = "frozen_bn", dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        d = first_dilation or dilation  # the one 3x3 convolution is the (formerly) strided one
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=d, dilation=d, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels))


class ResNet(nn.Module):
    """A ResNet trunk without its classifier, returning the feature maps of the stages asked for.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_stages: build only ``layer1..layer{num_stages}`` (a model that reads stride 8 needs no
            ``layer3``/``layer4``; their pretrained weights are then skipped on load).
        norm: ``"frozen_bn"`` (for pretrained weights) or ``"group"`` (to train from scratch), see
            the module docstring.
        dilate_last: the last stage keeps the resolution of the one before (stride 16 instead of
            32) and dilates by 2 every 3x3 convolution after the one that was strided (as torchvision's
            ``replace_stride_with_dilation``, and for ResNet-18/34 too): DETR's "DC5" variant. The
            same weights load, and with frozen BatchNorm the map at even positions is the plain one.

    ``forward(x)``: ``x`` ``(B, 3, H, W)`` normalized float images; returns a list with the output of
    each built stage, ``layer{i}`` ``(B, channels[i-1], H / 2^(i+1), W / 2^(i+1))`` (strides 4, 8,
    16, 32; ``strides`` lists them, with 16 for a dilated last stage).
    """

    def __init__(self, depth: int = 50, num_stages: int = 4, norm: str = "frozen_bn", dilate_last: bool = False) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be 1 to 4, got {num_stages}")
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.norm = norm
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        self.channels: list[int] = []
        self.strides: list[int] = []
        for i in range(num_stages):
            width = 64 * 2**i
            dilated = dilate_last and i == 3
            stage = []
            for j in range(blocks[i]):
                stride = 2 if (j == 0 and i > 0 and not dilated) else 1
                # Dilated: the convolution that was strided keeps dilation 1, every later 3x3 one reads
                # the twice-as-fine map with dilation 2, so the same weights see the same neighbours.
                first = 1 if dilated and j == 0 else None
                stage.append(block(in_channels, width, stride, norm, dilation=2 if dilated else 1, first_dilation=first))
                in_channels = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.channels.append(in_channels)
            self.strides.append(16 if dilated else 4 * 2**i)
        self.num_stages = num_stages
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialization: He-normal (fan-out) convolutions.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Module]:
        """The stem (``conv1`` and ``bn1``) and then ``layer1..``: the units DETR freezes from the start."""
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem] + [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def freeze_stages(self, num_frozen: int) -> None:
        """Make the first ``num_frozen`` of :meth:`stages` untrainable (0: all train) and the rest trainable."""
        for i, stage in enumerate(self.stages()):
            for p in stage.parameters():
                p.requires_grad_(i >= num_frozen)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            features.append(x)
        return features


def load_resnet_weights(resnet: ResNet, weights: Any) -> None:
    """Load torchvision-layout ResNet weights (anything :func:`plaindet.weights.read_state_dict` reads).

    The classifier (``fc.*``), BatchNorm step counters, and the stages this trunk does not build are
    skipped; every tensor the trunk has must be present with the right shape, otherwise a
    :class:`~plaindet.errors.WeightsError` names what is wrong (a common cause: weights of a different depth).
    """
    if resnet.norm != "frozen_bn":
        raise WeightsError(
            f"pretrained ResNet weights load into a ResNet with frozen BatchNorm, and this one has norm={resnet.norm!r} "
            "(for training from scratch); build it with backbone_norm='frozen_bn', or pass the weights when building"
        )
    state = read_state_dict(weights)
    built = set(resnet.state_dict())
    unused_stages = tuple(f"layer{i}." for i in range(resnet.num_stages + 1, 5))
    kept = {}
    for k, v in state.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked") or k.startswith(unused_stages):
            continue
        kept[k] = v
    missing = sorted(built - set(kept))
    unexpected = sorted(set(kept) - built)
    if missing or unexpected:
        raise WeightsError(
            f"these weights are not a torchvision-layout ResNet-{resnet.depth}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    own = resnet.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in kept.items() if v.shape != own[k].shape]
    if wrong:
        raise WeightsError(f"these weights do not fit a ResNet-{resnet.depth}: {wrong[:5]}")
    resnet.load_state_dict(kept, strict=True)
