"""Plots of training runs (matplotlib, Agg backend: works headless on Ray workers)."""

from __future__ import annotations

import os


def plot_training_curves(rows: list[dict], out_png_path: str) -> str:
    """Loss (train, val) and dice (train, val) per epoch, side by side, saved as a PNG.

    rows: one dict per epoch with epoch, train_loss, val_loss, val_dice and optionally train_dice
    (the rows of metrics.csv). Returns out_png_path (a local path).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    if all("train_dice" in r for r in rows):
        ax_dice.plot(epochs, [r["train_dice"] for r in rows], "o-", label="train")
    ax_dice.plot(epochs, [r["val_dice"] for r in rows], "o-", label="val")
    ax_dice.set(xlabel="epoch", ylabel="dice", title="Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png_path)), exist_ok=True)
    fig.savefig(out_png_path, dpi=100)
    plt.close(fig)
    return out_png_path
