"""postprocess/scoring.score without Ray: ground-truth metrics (NaN stored as None), a truth that does not
load (an error text, never an exception), the quality_score and its flag, and each structure's truth.
Masks are rectangles, so every expected value is counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from raysegment.data.preprocess import PreprocessConfig, geometry
from raysegment.io.decode import encode_png
from raysegment.postprocess.masks import PostprocessConfig
from raysegment.postprocess.scoring import score

S = 64


def _lungs() -> np.ndarray:
    mask = np.zeros((S, S), bool)
    mask[10:50, 6:26] = True  # patient's right lung (image left): 40 x 20
    mask[10:50, 38:58] = True  # left lung: 40 x 20
    return mask


def _prob(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 250, 5).astype(np.uint8)


def _png(tmp_path, name: str, mask: np.ndarray) -> str:
    path = tmp_path / name
    path.write_bytes(encode_png(mask.astype(np.uint8) * 255))
    return str(path)


GEO = geometry(S, S, PreprocessConfig(size=S))


def test_metrics_against_a_truth_with_nan_stored_as_none(tmp_path):
    lungs = _lungs()
    truth = lungs.copy()
    truth[10:50, 6:16] = False  # half the right lung missing from the truth: fp = 400
    scored = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (_png(tmp_path, "t.png", truth),), "x.png")
    assert scored.truth_error is None and scored.segmentation.area_px == 1600
    m = scored.metrics
    assert (m["tp"], m["fp"], m["fn"]) == (1200, 400, 0)
    assert m["dice"] == pytest.approx(2 * 1200 / (2 * 1200 + 400))
    assert m["hd95_mm"] is None  # no pixel spacing: NaN, stored as None
    assert isinstance(m["hd95"], float) and m["hd95"] > 0
    with_spacing = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (_png(tmp_path, "t.png", truth),),
                         "x.png", (0.5, 0.5))
    assert with_spacing.metrics["hd95_mm"] == pytest.approx(0.5 * m["hd95"])
    assert score(_prob(lungs), GEO, 0.5, PostprocessConfig()).metrics is None  # no truth: no metrics


def test_a_truth_that_does_not_load_is_an_error_text_not_an_exception(tmp_path):
    lungs = _lungs()
    small = _png(tmp_path, "small.png", np.ones((10, 12), bool))
    scored = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (small,), "img.png")
    assert scored.metrics is None
    assert scored.truth_error == f"mask small.png is 12x10 but image img.png is {S}x{S}"
    long = "/nonexistent/" + "d" * 1500 + "/t.png"
    missing = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (long,), "img.png")
    assert missing.metrics is None and len(missing.truth_error) == 1000  # bounded: it lands in every row
    assert "\n" not in missing.truth_error and "  " not in missing.truth_error


class _Calibration:
    """Stands in for quality.Calibration: a fixed score and threshold."""

    def __init__(self, quality: float, threshold: float) -> None:
        self.quality, self.threshold = quality, threshold

    def score(self, seg) -> float:
        assert seg.area_px == 1600  # scored on the postprocessed lungs
        return self.quality


def test_quality_score_and_its_flag_come_from_the_calibration():
    lungs = _prob(_lungs())
    low = score(lungs, GEO, 0.5, PostprocessConfig(), calibration=_Calibration(0.6, 0.8))
    assert low.quality_score == 0.6 and low.qc_reasons == ["low_quality_score"]
    high = score(lungs, GEO, 0.5, PostprocessConfig(), calibration=_Calibration(0.9, 0.8))
    assert high.quality_score == 0.9 and high.qc_reasons == []
    # A threshold of the postprocess config overrides the calibration's.
    strict = score(lungs, GEO, 0.5, PostprocessConfig(min_quality_score=0.95),
                   calibration=_Calibration(0.9, 0.8))
    assert strict.qc_reasons == ["low_quality_score"]
    none = score(lungs, GEO, 0.5, PostprocessConfig())
    assert none.quality_score is None and none.qc_reasons == []


def test_structure_truths_and_the_expert_ctr(tmp_path):
    lungs = _lungs()
    heart = np.zeros((S, S), bool)
    heart[30:48, 22:42] = True  # columns 22..41: 19 px wide (CTR counts last - first)
    truth = _png(tmp_path, "lungs.png", lungs)
    heart_truth = heart.copy()
    heart_truth[30:48, 40:42] = False  # the expert's heart is 2 px narrower
    scored = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (truth,), "x.png", None, None,
                   {"heart": _prob(heart)}, {"heart": (_png(tmp_path, "heart.png", heart_truth),)})
    [part] = scored.structures
    assert part.name == "heart" and part.truth_error is None
    assert (part.metrics["tp"], part.metrics["fp"], part.metrics["fn"]) == (18 * 18, 18 * 2, 0)
    assert part.metrics["hd95_mm"] is None
    assert scored.ctr.heart_width_px == 19 and scored.truth_ctr.heart_width_px == 17
    assert scored.truth_ctr.thoracic_width_px == scored.ctr.thoracic_width_px
    # The heart's truth does not load: its error, no expert CTR; the lungs keep their metrics.
    bad = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), (truth,), "x.png", None, None,
                {"heart": _prob(heart)}, {"heart": (str(tmp_path / "missing.png"),)})
    assert bad.structures[0].metrics is None and "missing.png" in bad.structures[0].truth_error
    assert bad.truth_ctr is None and bad.ctr.heart_width_px == 19 and bad.metrics["dice"] == 1.0
    # No lung truth: the expert CTR needs both masks.
    no_lungs = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), None, "x.png", None, None,
                     {"heart": _prob(heart)}, {"heart": (_png(tmp_path, "heart.png", heart_truth),)})
    assert no_lungs.truth_ctr is None and no_lungs.structures[0].metrics["fp"] == 36
    # A structure without a truth file is measured, not scored.
    unscored = score(_prob(lungs), GEO, 0.5, PostprocessConfig(), None, "x.png", None, None,
                     {"heart": _prob(heart)}, {"heart": ()})
    assert unscored.structures[0].metrics is None and unscored.structures[0].truth_error is None
    assert unscored.structures[0].area_px == 18 * 20
