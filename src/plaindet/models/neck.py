"""The neck: ViTDet's simple feature pyramid built of SegFormer Mix-FFN blocks.

A plain ViT gives one stride-16 feature map. ViTDet (Li et al. 2022) showed that a pyramid made
from that last map alone, upsampled with transposed convs and downsampled with pooling, is as good
as a hierarchical backbone's. Each level is then refined by Mix-FFN blocks (SegFormer, Xie et al.
2021): an MLP with a 3x3 depthwise conv between its two linear layers. The zero-padded depthwise conv
leaks where the border is, which gives the neck the position information it needs without any
positional embedding, so it runs at any input size unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from plaindet.models.layers import LayerNorm2d


class MixFFN(nn.Module):
    """Pre-norm residual Mix-FFN block: ``x + fc2(GELU(dwconv3x3(fc1(LN(x)))))`` on ``(B, C, H, W)``."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm = LayerNorm2d(channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)  # zero padding on purpose
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.dwconv(self.fc1(self.norm(x)))))


def _resample(in_channels: int, scale: float) -> tuple[nn.Module, int]:
    """The ViTDet resampling for one level: returns the module and its output channels."""
    if scale == 4.0:
        mid = in_channels // 2
        return (
            nn.Sequential(
                nn.ConvTranspose2d(in_channels, mid, 2, stride=2),
                LayerNorm2d(mid),
                nn.GELU(),
                nn.ConvTranspose2d(mid, mid // 2, 2, stride=2),
            ),
            mid // 2,
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2), in_channels // 2
    if scale == 1.0:
        return nn.Identity(), in_channels
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2), in_channels
    if scale == 0.25:
        return nn.Sequential(nn.MaxPool2d(2, stride=2), nn.MaxPool2d(2, stride=2)), in_channels
    raise ValueError(f"unsupported pyramid scale {scale}: use 4, 2, 1, 0.5 or 0.25")


class SimpleFeaturePyramid(nn.Module):
    """Feature maps at several strides from one ViT map.

    Args:
        in_channels: channels of the backbone map.
        in_stride: stride of the backbone map (the ViT patch size).
        strides: output strides, each ``in_stride`` times 1/4, 1/2, 1, 2 or 4.
        channels: channels of every output level.
        num_blocks: Mix-FFN blocks per level.

    Input ``(B, in_channels, H / in_stride, W / in_stride)``; output a list, one
    ``(B, channels, H / s, W / s)`` map per stride ``s`` in ``strides`` order.
    """

    def __init__(self, in_channels: int, in_stride: int, strides: tuple[int, ...], channels: int, num_blocks: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.levels = nn.ModuleList()
        for stride in self.strides:
            resample, mid = _resample(in_channels, in_stride / stride)
            self.levels.append(
                nn.Sequential(
                    resample,
                    nn.Conv2d(mid, channels, 1, bias=False),
                    LayerNorm2d(channels),
                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                    LayerNorm2d(channels),
                    *[MixFFN(channels, mlp_ratio) for _ in range(num_blocks)],
                )
            )
        self.out_channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return [level(x) for level in self.levels]
