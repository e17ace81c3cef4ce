"""The UNet: encoder/decoder with skip connections (Ronneberger et al. 2015), as in the seed Keras model.

Blocks are tiny modules in the style of milesial/Pytorch-UNet:
    DoubleConv = (3x3 conv, same padding, BatchNorm, ReLU) x 2
    Down       = 2x2 max-pool, then DoubleConv
    Up         = 2x2 transposed conv (stride 2), concat with the skip, DoubleConv
and a 1x1 conv head. `forward` returns logits; apply a sigmoid for probabilities.

Input sides that are not multiples of 2**depth are padded internally (reflect) and the output is
cropped back, so any HxW works and the output always has the input's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a UNet; saved in every checkpoint's config.json."""

    in_channels: int = 1  # X-rays are grayscale; 3 reproduces the seed
    out_channels: int = 1
    base_channels: int = 64  # channels of the first block; doubled at each level (64 -> 1024)
    depth: int = 4  # number of down-sampling steps

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "base_channels", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) x 2. (N, C_in, H, W) -> (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool then DoubleConv. (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """2x2 transposed conv (stride 2), concat with the skip, DoubleConv.

    (N, C_in, H, W) + skip (N, C_in/2, 2H, 2W) -> (N, C_out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet for binary (or multi-label) segmentation.

    Args:
        in_channels: image channels (1 for X-rays).
        out_channels: output channels (1: lung vs background).
        base_channels: width of the first level; level i has base_channels * 2**i channels.
        depth: number of down-sampling steps (the bridge runs at 1/2**depth resolution).

    Input (N, in_channels, H, W) float; output (N, out_channels, H, W) logits.
    `UNet(in_channels=3, out_channels=1, base_channels=64, depth=4)` has 31,043,521 parameters,
    the count of the seed's Keras model.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 64, depth: int = 4):
        super().__init__()
        self.config = UNetConfig(in_channels, out_channels, base_channels, depth)
        widths = [base_channels * 2**i for i in range(depth + 1)]  # e.g. 64, 128, 256, 512, 1024
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    @classmethod
    def from_config(cls, config: UNetConfig | dict) -> UNet:
        if isinstance(config, dict):
            config = UNetConfig(**config)
        return cls(config.in_channels, config.out_channels, config.base_channels, config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects (N, {self.config.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        multiple = 2**self.config.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            # Reflect padding keeps image statistics at the border (zeros would look like a black frame).
            mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        logits = self.head(y)
        return logits[..., :height, :width]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
