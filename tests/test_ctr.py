"""The cardiothoracic ratio (postprocess/ctr.py) on masks of known geometry, every number hand-computed.

The rule: widths are column-index differences (rightmost minus leftmost); the heart width spans the whole
heart mask; the thoracic width is the widest row showing both lungs, from the outer border of the patient's
right lung (image left) to that of the left lung (image right); ties go to the first row.
"""

import numpy as np
import pytest

from raysegment.data.synth import make_phantom
from raysegment.postprocess.ctr import heart_extent, measure_ctr, thoracic_extent

H, W = 100, 120


def _rect(mask: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Set rows r0..r1 and columns c0..c1 (inclusive) of mask; returns it."""
    mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return mask


def _ellipse(cx: int, cy: int, a: int, b: int) -> np.ndarray:
    """bool (H, W) filled axis-aligned ellipse: columns exactly cx - a .. cx + a (in row cy)."""
    y, x = np.mgrid[:H, :W]
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1


def _lungs() -> np.ndarray:
    """Two rectangular lungs, rows 20..79: the right (image left) in columns 10..44, the left in 70..104."""
    m = np.zeros((H, W), bool)
    return _rect(_rect(m, (20, 79), (10, 44)), (20, 79), (70, 104))


def test_rectangles_exact():
    heart = _rect(np.zeros((H, W), bool), (55, 75), (40, 79))
    c = measure_ctr(_lungs(), heart)
    assert c.heart_cols == (40, 79) and c.heart_width_px == 39
    assert c.thorax_cols == (10, 104) and c.thoracic_width_px == 94
    assert c.thoracic_row == 20  # every row 20..79 is as wide: the first one
    assert c.ctr == 39 / 94 and c.reason is None


def test_ellipses_exact():
    # Lungs of different heights (rows 15..85 and 12..88), both widest in their centre row 50 only: there the
    # right lung spans columns 10..50 and the left one 72..108; one row up or down each is a column narrower.
    lungs = _ellipse(30, 50, 20, 35) | _ellipse(90, 50, 18, 38)
    heart = _ellipse(62, 70, 25, 12)  # columns 37..87
    c = measure_ctr(lungs, heart)
    assert c.heart_cols == (37, 87) and c.heart_width_px == 50
    assert (c.thoracic_row, c.thorax_cols, c.thoracic_width_px) == (50, (10, 108), 98)
    assert c.ctr == 50 / 98


def test_heart_extremes_on_different_rows():
    # The right heart border (image left) is widest high up, the left border (apex) low down: the heart
    # width spans both (MRD + MLD), wider than any single row of the heart.
    heart = _rect(np.zeros((H, W), bool), (45, 55), (38, 60))
    heart = _rect(heart, (56, 72), (50, 84))
    c = measure_ctr(_lungs(), heart)
    assert c.heart_cols == (38, 84) and c.heart_width_px == 46
    assert max(np.flatnonzero(r)[-1] - np.flatnonzero(r)[0] for r in heart if r.any()) < 46
    assert c.ctr == 46 / 94


def test_lungs_of_different_heights_widest_row():
    lungs = _rect(np.zeros((H, W), bool), (20, 69), (20, 44))  # right lung: rows 20..69 (shorter)
    lungs = _rect(lungs, (30, 89), (70, 95))  # left lung: rows 30..89
    lungs = _rect(lungs, (50, 52), (14, 19))  # the right lung bulges out in rows 50..52: width 95 - 14 = 81
    lungs = _rect(lungs, (60, 61), (96, 99))  # the left lung bulges out in rows 60..61: width 99 - 20 = 79
    lungs = _rect(lungs, (80, 84), (96, 118))  # widest of all, but the right lung has ended: does not count
    lungs = _rect(lungs, (22, 25), (2, 19))  # as wide, above the left lung: does not count either
    heart = _rect(np.zeros((H, W), bool), (60, 80), (45, 75))
    assert thoracic_extent(lungs) == (50, 14, 95)
    c = measure_ctr(lungs, heart)
    assert (c.thoracic_row, c.thorax_cols, c.thoracic_width_px) == (50, (14, 95), 81)
    assert c.ctr == 30 / 81


def test_tie_goes_to_the_first_row():
    lungs = _rect(_rect(np.zeros((H, W), bool), (20, 79), (20, 44)), (20, 79), (70, 95))
    lungs = _rect(lungs, (65, 66), (12, 19))  # two bulges as wide: rows 65..66 and 35, 95 - 12 = 83
    lungs = _rect(lungs, (35, 35), (12, 19))
    assert thoracic_extent(lungs) == (35, 12, 95)


def test_mask_dtypes_do_not_matter():
    heart = _rect(np.zeros((H, W), bool), (55, 75), (40, 79))
    as_bool = measure_ctr(_lungs(), heart)
    assert measure_ctr(_lungs().astype(np.uint8) * 255, heart.astype(np.uint8) * 255) == as_bool


def test_no_heart():
    c = measure_ctr(_lungs(), np.zeros((H, W), bool))
    assert c.ctr is None and c.reason == "no_heart"
    assert c.heart_width_px is None and c.heart_cols is None
    assert c.thoracic_width_px == 94  # what can be measured still is
    assert heart_extent(np.zeros((H, W), bool)) is None


@pytest.mark.parametrize("side", ["right", "left"])
def test_one_lung_only(side):
    lungs = _rect(np.zeros((H, W), bool), (20, 79), (10, 44) if side == "right" else (70, 104))
    heart = _rect(np.zeros((H, W), bool), (55, 75), (40, 79))
    c = measure_ctr(lungs, heart)
    assert c.ctr is None and c.reason == "lungs_not_on_both_sides"
    assert c.thoracic_width_px is None and c.thoracic_row is None and c.thorax_cols is None
    assert c.heart_width_px == 39


def test_no_lungs_and_no_heart():
    c = measure_ctr(np.zeros((H, W), bool), np.zeros((H, W), bool))
    assert c.ctr is None and c.reason == "no_heart" and c.thoracic_width_px is None


def test_lungs_side_by_side_in_no_common_row():
    lungs = _rect(_rect(np.zeros((H, W), bool), (10, 40), (10, 44)), (50, 90), (70, 104))
    c = measure_ctr(lungs, _rect(np.zeros((H, W), bool), (55, 75), (40, 79)))
    assert c.ctr is None and c.reason == "lungs_not_on_both_sides"


def test_crossed_lungs_are_not_measured_from_an_empty_row():
    # The left lung (centroid on the image right) has a piece LEFT of the right lung in the only rows both
    # show (10..12). Rows without both lungs once won the widest-row search with the full image width
    # (argmax of an empty row is column 0): a confident, meaningless CTR of 9 / 119.
    lungs = _rect(np.zeros((H, W), bool), (10, 12), (20, 30))  # right lung
    lungs = _rect(lungs, (10, 14), (5, 8))  # left lung: the stray piece ...
    lungs = _rect(lungs, (14, 14), (5, 60))  # ... joined (below row 13, so not touching the right lung) ...
    lungs = _rect(lungs, (15, 60), (40, 100))  # ... to its bulk on the image right
    heart = _rect(np.zeros((H, W), bool), (40, 50), (45, 54))
    assert thoracic_extent(lungs) is None
    c = measure_ctr(lungs, heart)
    assert c.ctr is None and c.reason == "lungs_not_on_both_sides" and c.thoracic_width_px is None


def test_plausible_on_synthetic_phantoms():
    # The phantoms' expert-style masks (heart not in the lungs, as in SCR) give a normal-range CTR.
    for i in range(12):
        p = make_phantom(seed=4, index=i, size=256)
        c = measure_ctr(p.mask, p.heart_mask)
        assert c.reason is None and 0.3 < c.ctr < 0.6, (i, c)
        assert p.mask[c.thoracic_row].any()
        row, (outer_right, outer_left) = c.thoracic_row, c.thorax_cols
        assert p.right_mask[row, outer_right] and p.left_mask[row, outer_left]
        assert p.heart_mask[:, c.heart_cols[0]].any() and p.heart_mask[:, c.heart_cols[1]].any()
        assert not p.heart_mask[:, :c.heart_cols[0]].any() and not p.heart_mask[:, c.heart_cols[1] + 1:].any()
