"""Models for tests: a tiny untrained UNet whose masks are not trivial."""

from __future__ import annotations

import torch

from raysegment.model.unet import UNet


def untrained_unet(base_channels: int = 8, depth: int = 3, seed: int = 0) -> UNet:
    """A tiny UNet in eval mode with randomized BatchNorm statistics (seeded), so its output depends on every
    pixel instead of being flat; callers usually shift `head.bias` to the fraction of "lung" they want."""
    torch.manual_seed(seed)
    model = UNet(base_channels=base_channels, depth=depth)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()
