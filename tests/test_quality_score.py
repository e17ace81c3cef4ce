"""quality_score units without Ray or training (raysegment/postprocess/quality.py): shape descriptors, the
shape-match feature, the logistic curve, the calibration's identity and its file. Expected values are
worked out by hand (box averages, dice of known overlaps, the logistic at a chosen point)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raysegment.postprocess import quality
from raysegment.postprocess.masks import Segmentation
from raysegment.postprocess.quality import (
    CALIBRATION_FILE,
    METHOD,
    Calibration,
    References,
    features,
    load_calibration,
    save_calibration,
    shape_descriptor,
)


def _box(h: int, w: int, at=(0, 0), size=(20, 20)) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[at[0]: at[0] + h, at[1]: at[1] + w] = True
    return mask


def test_shape_descriptor_is_the_bounding_box_resized():
    assert np.array_equal(shape_descriptor(np.zeros((8, 8), bool)), np.zeros((32, 32), np.float32))
    full = shape_descriptor(_box(5, 9, at=(3, 4)))
    assert full.shape == (32, 32) and full.dtype == np.float32 and np.all(full == 1.0)
    # An L inside its 4x4 box, averaged over 2x2 blocks (INTER_AREA): position does not matter.
    ell = np.zeros((10, 10), bool)
    ell[2:6, 3] = True
    ell[5, 3:7] = True
    expected = np.array([[0.5, 0.0], [0.75, 0.5]], np.float32)
    assert np.array_equal(shape_descriptor(ell, n=2), expected)
    assert np.array_equal(shape_descriptor(np.roll(ell, (3, 2), axis=(0, 1)), n=2), expected)
    assert np.array_equal(shape_descriptor(ell.astype(np.uint8), n=2), expected)  # a 0/1 uint8 mask too
    assert np.array_equal(shape_descriptor(ell, n=4), ell[2:6, 3:7].astype(np.float32))


def test_references_round_trip_through_their_dict():
    refs = References.from_masks([_box(4, 8), _box(8, 4), np.zeros((6, 6), bool)])
    assert refs.shape.shape == (3, 32, 32) and refs.shape.dtype == np.float32
    d = refs.to_dict()
    assert d["size"] == 32 and isinstance(d["shape"], str)
    back = References.from_dict(json.loads(json.dumps(d)))
    assert np.array_equal(back.shape, refs.shape)
    # Stored as bytes 0..255: values are clipped to [0, 1] and quantized to 1/255.
    odd = References(np.array([[[-0.5, 0.5], [1.5, 0.2]]], np.float32))
    assert np.allclose(References.from_dict(odd.to_dict()).shape, [[[0.0, 128 / 255], [1.0, 51 / 255]]])


def test_best_dice_against_references_leaving_one_out():
    a = np.array([[1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.0]])
    refs = np.stack([a, b])
    assert quality._best_dice(a, refs, None) == 1.0
    assert quality._best_dice(a, refs, 0) == pytest.approx(2 * 1 / 3)  # against b: 2*1/(1+2)
    assert quality._best_dice(a, refs[:1], 0) == 1.0  # a single reference is never left out
    assert quality._best_dice(a, refs[:0], None) == 0.0
    assert quality._best_dice(np.zeros((2, 2)), np.zeros((1, 2, 2)), None) == 0.0  # no 0/0


def test_features_are_confidence_and_shape_match():
    mask = _box(6, 4, at=(2, 2))
    ell = _box(8, 2)
    ell[6:8, :8] = True  # an L: not a filled box
    refs = References.from_masks([_box(6, 4, at=(9, 9)), ell])
    seg = Segmentation(mask, 24, 0, 1, 0.8)
    got = features(seg, refs)
    assert got.dtype == np.float64 and got.tolist() == [pytest.approx(0.8), 1.0]  # the same shape elsewhere
    left_out = features(seg, refs, exclude=0)[1]
    assert 0.0 < left_out < 1.0
    assert features(Segmentation(mask, 24, 0, 1, float("nan")), refs).tolist() == [0.0, 1.0]


def _calibration(**kw) -> Calibration:
    refs = References.from_masks([_box(6, 4)])
    values = {"model_id": "m1", "refs": refs, "mean": (0.5, 0.5), "scale": (0.5, 0.25), "coef": (2.0, -1.0),
              "intercept": 0.3, "threshold": 0.85, "fitted_on": {"n": 3}}
    return Calibration(**{**values, **kw})


def test_predict_is_the_logistic_of_the_standardized_features():
    cal = _calibration()
    # z = ((1.0 - 0.5) / 0.5, (0.75 - 0.5) / 0.25) = (1, 1); 2*1 - 1*1 + 0.3 = 1.3
    assert cal.predict(np.array([1.0, 0.75])).tolist() == [pytest.approx(1 / (1 + math.exp(-1.3)))]
    two = cal.predict(np.array([[1.0, 0.75], [0.5, 0.5]]))
    assert two.shape == (2,) and two[1] == pytest.approx(1 / (1 + math.exp(-0.3)))


def test_score_of_a_segmentation():
    cal = _calibration()
    mask = _box(6, 4, at=(5, 5))  # the reference's own shape: shape_match 1
    seg = Segmentation(mask, 24, 0, 1, 1.0)
    # z = (1, 2): 2 - 2 + 0.3 = 0.3, rounded to 6 digits
    assert cal.score(seg) == round(1 / (1 + math.exp(-0.3)), 6)
    assert cal.score(Segmentation(np.zeros((20, 20), bool), 0, 0, 0, float("nan"))) == 0.0  # empty mask


def test_calibration_dict_round_trip_and_identity():
    cal = _calibration()
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["mean"] == [0.5, 0.5] and d["feature_names"] == ["mean_confidence", "shape_match"]
    assert d["method"] == METHOD and d["refs"]["size"] == 32
    back = Calibration.from_dict(d)
    assert (back.model_id, back.mean, back.scale, back.coef, back.intercept, back.threshold, back.method,
            back.feature_names, back.fitted_on) == (
        "m1", (0.5, 0.5), (0.5, 0.25), (2.0, -1.0), 0.3, 0.85, METHOD, quality.FEATURES, {"n": 3})
    assert back.calibration_id == cal.calibration_id
    assert len(cal.calibration_id) == 16 and int(cal.calibration_id, 16) >= 0
    # What changes a score or a flag changes the id; the fit statistics do not.
    assert _calibration(threshold=0.8).calibration_id != cal.calibration_id
    assert _calibration(coef=(2.0, -1.5)).calibration_id != cal.calibration_id
    assert _calibration(fitted_on={"n": 4}).calibration_id == cal.calibration_id
    without = {k: v for k, v in d.items() if k != "fitted_on"}
    assert Calibration.from_dict(without).fitted_on == {}
    with pytest.raises(ValueError, match=r"^calibration method 'old' is not 'logistic-confidence-shape-v1': "
                                         r"run `raysegment calibrate` again with this version$"):
        Calibration.from_dict({**d, "method": "old"})
    with pytest.raises(ValueError, match="calibration method None"):
        Calibration.from_dict(without | {"method": None})


def test_calibration_file_round_trip_and_checks(tmp_path):
    cal = _calibration()
    assert load_calibration(str(tmp_path), "m1") is None  # no calibration: no score
    uri = save_calibration(str(tmp_path), cal)
    assert uri == str(tmp_path / CALIBRATION_FILE)
    body = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert body["calibration_id"] == cal.calibration_id
    assert (tmp_path / CALIBRATION_FILE).read_text().endswith("}\n")
    loaded = load_calibration(str(tmp_path), "m1")
    assert loaded.calibration_id == cal.calibration_id and np.array_equal(loaded.refs.shape, cal.refs.shape)
    with pytest.raises(ValueError, match=r"was fitted for model m1, but the weights are m2: run `raysegment "
                                         r"calibrate` for this checkpoint$"):
        load_calibration(str(tmp_path), "m2")
    body["threshold"] = 0.5  # edited by hand
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"was changed after it was written \(its calibration_id does not "
                                         r"match its content\): run `raysegment calibrate` again$"):
        load_calibration(str(tmp_path), "m1")
