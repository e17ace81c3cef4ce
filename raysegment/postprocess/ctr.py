"""The cardiothoracic ratio (CTR) from a lung mask and a heart mask: one rule for predicted and expert masks.

    heart width     = rightmost minus leftmost heart column, over the whole heart mask (MRD + MLD: the
                      right and left extremes may lie on different rows)
    thoracic width  = the largest, over image rows, distance between the outer borders of the two lungs in
                      that row: the leftmost column of the patient's right lung (image left) to the
                      rightmost column of the patient's left lung (image right); only rows that show both
    CTR             = heart width / thoracic width   (> 0.5 on a PA film suggests cardiomegaly)

Widths are column-index differences (border pixel centre to border pixel centre), in pixels of the mask's
resolution; the lungs are split into right and left by position exactly as the lung areas are
(postprocess.split_lungs). When a width cannot be measured the CTR is None and `reason` says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysegment.postprocess.masks import split_lungs


@dataclass(frozen=True)
class CTR:
    ctr: float | None  # None when not measurable
    heart_width_px: int | None
    thoracic_width_px: int | None
    thoracic_row: int | None  # the image row of the thoracic width (the first such row on ties)
    heart_cols: tuple[int, int] | None  # (leftmost, rightmost) heart column
    thorax_cols: tuple[int, int] | None  # (outer border of the right lung, of the left lung) in thoracic_row
    reason: str | None = None  # why ctr is None: "no_heart", "lungs_not_on_both_sides"


def heart_extent(heart: np.ndarray) -> tuple[int, int] | None:
    """bool HxW -> (leftmost, rightmost) column of the mask, None when it is empty."""
    cols = np.flatnonzero(heart.any(axis=0))
    return (int(cols[0]), int(cols[-1])) if cols.size else None


def thoracic_extent(lungs: np.ndarray) -> tuple[int, int, int] | None:
    """bool HxW lungs -> (row, right lung's outer column, left lung's outer column) of the widest row that
    shows both lungs; None when no row does (or the lungs cross: the left lung's outer column is left of
    the right lung's in every such row)."""
    right, left = split_lungs(lungs)  # patient's right = image left
    w = lungs.shape[1]
    both = right.any(axis=1) & left.any(axis=1)
    if not both.any():
        return None
    # Per row: first True column of the right lung, last True column of the left lung.
    outer_right = np.argmax(right, axis=1)
    outer_left = w - 1 - np.argmax(left[:, ::-1], axis=1)
    # Rows without both lungs must never win (their argmax columns mean nothing): rank them below every
    # row with both, whose widths are > -w. A width <= 0 means the lungs cross (a piece of the left lung
    # left of the right lung in every shared row): not measurable either.
    width = np.where(both, outer_left - outer_right, -w)
    row = int(np.argmax(width))
    if width[row] <= 0:
        return None
    return row, int(outer_right[row]), int(outer_left[row])


def measure_ctr(lungs: np.ndarray, heart: np.ndarray) -> CTR:
    """bool HxW lung mask (both lungs, one mask) + bool HxW heart mask -> CTR and its parts."""
    hx = heart_extent(np.asarray(heart, dtype=bool))
    tx = thoracic_extent(np.asarray(lungs, dtype=bool))
    heart_width = None if hx is None else hx[1] - hx[0]
    thoracic_width = None if tx is None else tx[2] - tx[1]
    reason = "no_heart" if hx is None else "lungs_not_on_both_sides" if tx is None else None
    ratio = heart_width / thoracic_width if reason is None else None  # thoracic_extent's width is > 0
    return CTR(ratio, heart_width, thoracic_width, None if tx is None else tx[0], hx,
               None if tx is None else (tx[1], tx[2]), reason)
