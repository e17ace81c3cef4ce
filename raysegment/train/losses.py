"""Training losses on logits: dice (the seed's), BCE, and BCE + dice, per structure, with partial labels.

Every loss is a mean over (image, structure) entries of a per-entry loss. `labelled` (N, C) bool says which
entries have a label: a source that does not label a structure (Montgomery: no heart) contributes nothing
for it. Unlabelled entries are left out of the mean by selection, not multiplied by zero, so their logits
get exactly zero gradient (and a NaN there could not leak in). Without `labelled` every entry counts; for
one channel that is the seed's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("dice", "bce", "bce_dice")


def _masked_mean(values: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """Mean of (N, C) per-entry values over the labelled entries (all when labelled is None)."""
    if labelled is None:
        return values.mean()
    chosen = values[labelled.to(values.device, torch.bool)]
    # A batch without any label cannot happen (every pair labels something); keep the graph regardless.
    return chosen.mean() if chosen.numel() else values.sum() * 0.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - soft dice per (image, structure), averaged over the labelled ones. logits/target (N, C, H, W);
    target in {0, 1}; labelled (N, C) bool or None.

    `smooth` keeps the loss defined (and 0) for an empty mask predicted empty.
    """
    prob = torch.sigmoid(logits.float()).flatten(2)
    target = target.float().flatten(2)
    intersection = (prob * target).sum(2)
    dice = (2 * intersection + smooth) / (prob.sum(2) + target.sum(2) + smooth)  # (N, C)
    return 1 - _masked_mean(dice, labelled)


def bce_loss(logits: torch.Tensor, target: torch.Tensor,
             labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy: mean over pixels per (image, structure), then over the labelled ones."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return _masked_mean(per_pixel.flatten(2).mean(2), labelled)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None
                  ) -> torch.Tensor:
    return bce_loss(logits, target, labelled) + soft_dice_loss(logits, target, labelled)


def loss_function(name: str):
    """The loss callable (logits, target, labelled=None) -> scalar for a configured name."""
    if name == "dice":
        return soft_dice_loss
    if name == "bce":
        return bce_loss
    if name == "bce_dice":
        return bce_dice_loss
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
