"""Postprocessing units (no Ray, no model): threshold, component cleanup, hole filling, left/right split by
position, measurements and the exact QC reasons at their threshold edges."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from raysegment.data.preprocess import Geometry, PreprocessConfig, geometry
from raysegment.postprocess.masks import (
    QC_REASONS,
    PostprocessConfig,
    Segmentation,
    components,
    fill_holes,
    keep_largest_components,
    postprocess,
    qc_reasons,
    split_lungs,
    uint8_to_probability,
)

IDENTITY = Geometry(20, 30, 0, 0, 20, 30)  # model resolution == original: no resampling in the way


def _seg(right: int, left: int, confidence: float = 0.9, size: int = 100) -> Segmentation:
    return Segmentation(np.zeros((1, size), bool), right, left, 2, confidence)


def test_uint8_to_probability():
    p = uint8_to_probability(np.array([0, 51, 255], np.uint8))
    assert p.dtype == np.float32 and p.tolist() == pytest.approx([0.0, 0.2, 1.0], abs=1e-7)


def test_components_counts_areas_and_centroids():
    m = np.zeros((6, 10), bool)
    m[0:2, 0:2] = True  # 4 px, centroid x 0.5
    m[3:6, 6:10] = True  # 12 px, centroid x 7.5
    m[2, 2] = True  # touches the first block diagonally: 8-connected, so one component of 5 px
    n, labels, areas, cx = components(m)
    assert n == 2 and labels.shape == m.shape and labels.max() == 2
    assert sorted(areas.tolist()) == [5, 12] and areas.dtype.kind == "i"
    by_area = dict(zip(areas.tolist(), cx.tolist(), strict=True))
    assert by_area[12] == pytest.approx(7.5) and by_area[5] == pytest.approx((0.5 * 4 + 2) / 5)
    assert (labels > 0).sum() == 17 and np.array_equal(labels > 0, m)
    assert components(np.zeros((3, 3), bool))[0] == 0


def test_keep_largest_components_k_and_ties():
    m = np.zeros((5, 20), bool)
    m[0, 0:5] = True  # 5 px, found first
    m[2, 0:7] = True  # 7 px
    m[4, 0:5] = True  # 5 px, found last (tie with the first)
    m[0:5, 15] = True  # 5 px, a tie again
    one = keep_largest_components(m, 1)
    assert one.sum() == 7 and one[2, 0:7].all()
    two = keep_largest_components(m)  # default: two lungs
    assert two.sum() == 12 and two[0, 0:5].all() and not two[4].any()  # ties: the first found wins
    assert (np.array_equal(keep_largest_components(m, 4), m)
            and np.array_equal(keep_largest_components(m, 9), m))
    assert one.dtype == bool and two.dtype == bool
    # Many equal components (more than a sort's small-array insertion threshold): still the first found.
    many = np.zeros((3, 200), bool)
    many[1, ::4] = True  # 50 single pixels, all area 1
    first_two = keep_largest_components(many, 2)
    assert first_two.sum() == 2 and first_two[1, 0] and first_two[1, 4]
    kept_all = keep_largest_components(m, 0)
    assert np.array_equal(kept_all, m) and kept_all is not m  # a copy: the caller's mask stays theirs
    assert np.array_equal(keep_largest_components(m, -1), m)
    assert keep_largest_components(m, 3).sum() == 17


def test_fill_holes_fills_enclosed_background_only():
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False  # a 3x3 hole
    filled = fill_holes(ring)
    assert filled[3:6, 3:6].all() and filled.sum() == 49 and not filled[0].any()
    # A diagonal gap in an 8-connected outline does not let the inside escape (4-connected background).
    diamond = np.zeros((7, 7), bool)
    for y, x in [(1, 3), (2, 2), (2, 4), (3, 1), (3, 5), (4, 2), (4, 4), (5, 3)]:
        diamond[y, x] = True
    assert fill_holes(diamond)[3, 3] and fill_holes(diamond).sum() == 13
    # Background touching the border (even at the mask's edge) is not a hole.
    cup = np.ones((6, 6), bool)
    cup[0:4, 2:4] = False
    assert np.array_equal(fill_holes(cup), cup)
    corner = np.ones((5, 5), bool)
    corner[4, 4] = False
    assert np.array_equal(fill_holes(corner), corner)


def test_split_lungs_midline_follows_the_two_largest_components():
    # A patient off centre: both lungs in the right half of the image. The midline is midway between
    # the two big components, not the image centre, so one lung per side.
    m = np.zeros((20, 60), bool)
    m[2:18, 32:40] = True  # larger, image left of the two: patient's right lung
    m[2:16, 48:56] = True
    m[18:20, 46:48] = True  # a speck right of the midline (43.5), left of the image centre (30)
    right, left = split_lungs(m)
    assert right.sum() == 16 * 8 and right[10, 35]
    assert left.sum() == 14 * 8 + 4 and left[10, 50] and left[19, 46]
    assert not (right & left).any() and np.array_equal(right | left, m)
    # The midline uses the TWO largest components only: a speck at x = 44 (just right of 43.5) stays left
    # even though the mean of all three centroids (44.5) would put it right; a speck found first (top-left
    # corner) does not shift the midline either.
    m[18:20, 46:48] = False
    m[18:20, 44] = True
    right, left = split_lungs(m)
    assert right.sum() == 128 and left[19, 44]
    corner = np.zeros((20, 60), bool)
    corner[0, 0:2] = True
    corner[2:18, 32:40] = True
    corner[2:16, 48:56] = True
    right, left = split_lungs(corner)
    assert right.sum() == 130 and right[0, 0] and right[10, 35] and left.sum() == 112
    # Exactly two components, both right of the image centre: still one per side.
    right, left = split_lungs(corner & ~np.pad(np.ones((1, 2), bool), ((0, 19), (0, 58))))
    assert right.sum() == 128 and left.sum() == 112
    # One component: the image centre decides (x < width / 2 is the patient's right).
    for cols, is_right in (((5, 12), True), ((14, 18), True), ((18, 23), False), ((21, 30), False)):
        only = np.zeros((10, 40), bool)
        only[2:8, cols[0] : cols[1]] = True
        r, lft = split_lungs(only)
        assert (r.any(), lft.any()) == (is_right, not is_right), cols
    r, lft = split_lungs(np.zeros((4, 4), bool))
    assert not r.any() and not lft.any()


def _two_lungs(value: int = 230) -> np.ndarray:
    prob = np.zeros((20, 30), np.uint8)
    prob[2:18, 2:10] = value  # image left: patient's right, 128 px
    prob[3:17, 18:28] = value  # image right: patient's left, 140 px
    return prob


def test_postprocess_measures_each_side_and_confidence():
    prob = _two_lungs()
    prob[2:18, 2:4] = 204  # part of the right lung at 0.8
    seg = postprocess(prob, IDENTITY, 0.5)
    assert seg.mask.dtype == bool and seg.mask.shape == (20, 30)
    assert (seg.right_area_px, seg.left_area_px, seg.area_px, seg.n_components) == (128, 140, 268, 2)
    assert seg.fraction == pytest.approx(268 / 600)
    expected = (32 * 0.8 + 96 * 230 / 255 + 140 * 230 / 255) / 268
    assert seg.mean_confidence == pytest.approx(expected, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty mask must not warn ("mean of empty slice") in the logs
        empty = postprocess(np.zeros((20, 30), np.uint8), IDENTITY, 0.5)
    assert empty.area_px == 0 and empty.n_components == 0 and math.isnan(empty.mean_confidence)


def test_postprocess_threshold_is_strict_and_configurable():
    prob = _two_lungs(150)  # p = 0.588
    prob[2:18, 2:4] = 160  # p = 0.627
    assert postprocess(prob, IDENTITY, 0.5).area_px == 268
    assert postprocess(prob, IDENTITY, 0.6).area_px == 32
    assert postprocess(prob, IDENTITY, 150 / 255 + 1e-6).area_px == 32
    exact = float(uint8_to_probability(np.array([160], np.uint8))[0])  # the float32 value of level 160
    assert postprocess(prob, IDENTITY, exact).area_px == 0  # "> threshold", not ">="
    assert postprocess(prob, IDENTITY, 0.7).area_px == 0


def test_postprocess_keep_largest_and_fill_holes_options():
    prob = _two_lungs()
    prob[8:10, 5:7] = 0  # a hole in the right lung
    prob[0, 29] = 230  # a speck, image right
    prob[19, 15] = 230  # another
    default = postprocess(prob, IDENTITY, 0.5)
    assert default.n_components == 4  # counted before cleanup
    # specks gone, hole filled
    assert default.area_px == 268 and not default.mask[0, 29] and default.mask[8, 5]
    keep_all = postprocess(prob, IDENTITY, 0.5, PostprocessConfig(keep_largest=0))
    assert keep_all.area_px == 270 and keep_all.mask[0, 29] and keep_all.mask[19, 15]
    assert keep_all.right_area_px + keep_all.left_area_px == 270
    one = postprocess(prob, IDENTITY, 0.5, PostprocessConfig(keep_largest=1))
    assert (one.right_area_px, one.left_area_px) == (0, 140)
    holes = postprocess(prob, IDENTITY, 0.5, PostprocessConfig(fill_holes=False))
    assert holes.area_px == 264 and not holes.mask[8, 5] and holes.right_area_px == 124
    raw = postprocess(prob, IDENTITY, 0.5, PostprocessConfig(keep_largest=0, fill_holes=False))
    assert raw.area_px == 266 and raw.n_components == 4
    # Only the cleanup changed the components: the areas are measured on the kept ones.
    one_raw = postprocess(prob, IDENTITY, 0.5, PostprocessConfig(keep_largest=1, fill_holes=False))
    assert (one_raw.right_area_px, one_raw.left_area_px) == (0, 140) and one_raw.mask.sum() == 140


def test_postprocess_maps_back_to_the_original_resolution():
    geo = geometry(50, 70, PreprocessConfig(size=32))
    prob = np.zeros((32, 32), np.uint8)
    prob[4:28, 3:13] = 230
    prob[4:28, 19:29] = 230
    seg = postprocess(prob, geo, 0.5)
    assert seg.mask.shape == (50, 70) and seg.mask[25, 10] and seg.mask[25, 60] and not seg.mask[25, 35]
    right, left = split_lungs(seg.mask)
    assert (seg.right_area_px, seg.left_area_px) == (right.sum(), left.sum())
    assert seg.right_area_px == pytest.approx(seg.left_area_px, rel=0.1)


@pytest.mark.parametrize("right, left, confidence, expected", [
    (0, 0, float("nan"), ["no_lung"]),
    (20, 20, 0.9, []),
    (0, 20, 0.9, ["right_lung_missing"]),
    (20, 0, 0.9, ["left_lung_missing"]),
    (2, 2, 0.9, ["lung_fraction_low"]),
    (0, 4, 0.5, ["right_lung_missing", "lung_fraction_low", "low_confidence"]),
    (40, 30, 0.9, ["lung_fraction_high"]),
    (20, 20, 0.7, ["low_confidence"]),
    (20, 20, float("nan"), ["low_confidence"]),  # an unknown confidence is not a good one
])
def test_qc_reasons_exact_lists(right, left, confidence, expected):
    assert qc_reasons(_seg(right, left, confidence)) == expected
    assert set(expected) <= set(QC_REASONS)


def test_qc_reasons_threshold_edges_are_inclusive():
    config = PostprocessConfig()
    assert (config.min_lung_fraction, config.max_lung_fraction, config.min_confidence) == (0.05, 0.60, 0.75)
    assert qc_reasons(_seg(3, 2, 0.75)) == []  # fraction exactly 0.05, confidence exactly 0.75
    assert qc_reasons(_seg(2, 2, 0.7499)) == ["lung_fraction_low", "low_confidence"]
    assert qc_reasons(_seg(30, 30, 0.9)) == []  # exactly 0.60
    assert qc_reasons(_seg(30, 31, 0.9)) == ["lung_fraction_high"]
    strict = PostprocessConfig(min_lung_fraction=0.3, max_lung_fraction=0.35, min_confidence=0.95)
    assert qc_reasons(_seg(20, 20, 0.9), strict) == ["lung_fraction_high", "low_confidence"]
    assert qc_reasons(_seg(10, 10, 0.95), strict) == ["lung_fraction_low"]


def test_segmentation_fraction_and_config_dict():
    assert Segmentation(np.zeros((0, 0), bool), 0, 0, 0, float("nan")).fraction == 0.0
    assert _seg(10, 15).area_px == 25 and _seg(10, 15).fraction == 0.25
    assert PostprocessConfig().to_dict() == {"keep_largest": 2, "fill_holes": True, "min_lung_fraction": 0.05,
                                             "max_lung_fraction": 0.60, "min_confidence": 0.75,
                                             "min_quality_score": None}


def test_severity_and_split_reasons():
    from raysegment.postprocess.masks import QC_SEVERITY, severity, split_reasons

    flags = ["no_lung", "right_lung_missing", "left_lung_missing", "lung_fraction_low", "lung_fraction_high",
             "low_confidence", "low_quality_score"]
    notes = ["inverted_input_corrected", "exif_mirrored", "multiframe_first_frame", "ctr_not_measurable"]
    assert QC_REASONS == (*flags, *notes) and sorted(QC_SEVERITY.values()) == ["flag"] * 7 + ["note"] * 4
    assert [severity(r) for r in flags] == ["flag"] * 7
    assert [severity(r) for r in notes] == ["note"] * 4
    assert severity("something_new") == "note" and severity("") == "note"
    assert split_reasons(["exif_mirrored", "no_lung", "new_thing", "low_confidence"]) == (
        ["no_lung", "low_confidence"], ["exif_mirrored", "new_thing"])
    assert split_reasons([]) == ([], [])
    assert split_reasons(["low_quality_score"]) == (["low_quality_score"], [])


@pytest.mark.parametrize("score, threshold, config_min, expected", [
    (None, 0.5, None, []),  # no score: nothing to compare
    (0.4, None, None, []),  # no threshold anywhere
    (0.4, 0.5, None, ["low_quality_score"]),
    (0.5, 0.5, None, []),  # the threshold itself passes
    (0.6, 0.5, None, []),
    (0.4, 0.5, 0.3, []),  # the config's threshold wins over the calibration's
    (0.4, None, 0.45, ["low_quality_score"]),
    (0.45, 0.1, 0.45, []),
    (0.0, 0.0, None, []),
    (-0.1, 0.0, None, ["low_quality_score"]),
])
def test_qc_reasons_quality_score(score, threshold, config_min, expected):
    config = PostprocessConfig(min_quality_score=config_min)
    assert qc_reasons(_seg(20, 20, 0.9), config, quality_score=score, quality_threshold=threshold) == expected
    assert qc_reasons(_seg(0, 20, 0.9), config, score, threshold) == ["right_lung_missing", *expected]
    assert qc_reasons(_seg(0, 0, 0.9), config, score, threshold) == ["no_lung"]
