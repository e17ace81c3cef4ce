"""Training losses on logits: dice (the seed's), BCE, and BCE + dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("dice", "bce", "bce_dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft dice per image, averaged over the batch. logits/target (N, 1, H, W); target in {0, 1}.

    `smooth` keeps the loss defined (and 0) for an empty mask predicted empty.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (prob * target).sum(1)
    dice = (2 * intersection + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def loss_function(name: str):
    """The loss callable (logits, target) -> scalar for a configured name."""
    if name == "dice":
        return soft_dice_loss
    if name == "bce":
        return bce_loss
    if name == "bce_dice":
        return lambda logits, target: bce_loss(logits, target) + soft_dice_loss(logits, target)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
