import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from raysegment.postprocess.metrics import (
    MetricSums,
    confusion,
    hd95,
    image_metrics,
    json_safe,
    scores_from_counts,
    summarize,
)
from raysegment.train.losses import loss_function, soft_dice_loss


def _square(size, y0, y1, x0, x1):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_known_values():
    truth = _square(10, 0, 4, 0, 5)  # 20 px
    pred = _square(10, 0, 4, 0, 4) | _square(10, 6, 7, 0, 2)  # 16 px overlap + 2 fp, 4 fn
    assert confusion(pred, truth) == (16, 2, 4)
    m = image_metrics(pred, truth)
    assert m["dice"] == pytest.approx(32 / 38)
    assert m["iou"] == pytest.approx(16 / 22)
    assert m["precision"] == pytest.approx(16 / 18)
    assert m["recall"] == pytest.approx(16 / 20)


def test_empty_mask_conventions():
    empty, full = np.zeros((8, 8), bool), _square(8, 2, 5, 2, 5)
    both = image_metrics(empty, empty)
    assert (both["dice"], both["iou"], both["precision"], both["recall"], both["hd95"]) == (1, 1, 1, 1, 0)
    missed = image_metrics(empty, full)  # nothing predicted, lung present
    assert (missed["dice"], missed["precision"], missed["recall"]) == (0, 0, 0) and math.isnan(missed["hd95"])
    spurious = image_metrics(full, empty)  # something predicted, nothing there
    assert (spurious["dice"], spurious["precision"], spurious["recall"]) == (0, 0, 0)


def test_hd95_in_pixels_and_mm():
    a = _square(64, 10, 30, 10, 30)
    b = _square(64, 10, 30, 13, 33)  # shifted 3 px in x
    assert hd95(a, a) == 0
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(6.0)  # columns are 2 mm apart
    # A shift along y (rows) too: swapping the (row, col) spacing order gives 1.5 instead of 6.
    c = _square(64, 13, 33, 10, 30)
    assert hd95(a, c, spacing=(2.0, 0.5)) == pytest.approx(6.0)
    assert hd95(a, c, spacing=(0.5, 2.0)) == pytest.approx(1.5)
    m = image_metrics(a, c, spacing=(2.0, 0.5))
    assert m["hd95"] == pytest.approx(3.0) and m["hd95_mm"] == pytest.approx(6.0)
    assert math.isnan(image_metrics(a, c)["hd95_mm"])  # no spacing, no millimetres


def test_sharded_aggregation_equals_single_pass():
    rng = np.random.default_rng(0)
    items = [(rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.4) for _ in range(9)]
    whole, shards = MetricSums(), [MetricSums(), MetricSums(), MetricSums()]
    for i, (p, t) in enumerate(items):
        m = image_metrics(p, t)
        whole.add(m)
        shards[i % 3].add(m)
    merged = shards[0].merge(shards[1]).merge(shards[2])
    for k, v in whole.means().items():
        assert merged.means()[k] == pytest.approx(v, abs=1e-12)
    assert merged.means()["dice"] == pytest.approx(np.mean([image_metrics(p, t)["dice"] for p, t in items]))


def test_vectorized_scores():
    s = scores_from_counts(np.array([5, 0]), np.array([1, 0]), np.array([2, 0]))
    assert s["dice"].tolist() == pytest.approx([10 / 13, 1.0])
    assert s["iou"].tolist() == pytest.approx([5 / 8, 1.0])
    assert s["precision"].tolist() == pytest.approx([5 / 6, 1.0])
    assert s["recall"].tolist() == pytest.approx([5 / 7, 1.0])


def test_losses():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 20 - 10)  # confident and right
    assert soft_dice_loss(good, target) < 0.01
    assert soft_dice_loss(-good, target) > 0.9
    for name in ("dice", "bce", "bce_dice"):
        assert loss_function(name)(good, target) < loss_function(name)(-good, target)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_function("focal")


# --- exact conventions, one by one ------------------------------------------------------------------

def test_confusion_counts_each_kind_separately_and_rejects_shape_mismatch():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.uint8) * 255  # any non-zero is lung
    truth = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], bool)
    assert confusion(pred, truth) == (1, 2, 3)
    assert confusion(truth, pred) == (1, 3, 2)
    assert all(type(v) is int for v in confusion(pred, truth))  # JSON / Parquet friendly
    with pytest.raises(ValueError, match=r"prediction \(2, 4\) and truth \(4, 2\) differ in shape"):
        confusion(pred, truth.T)


def test_ratio_conventions_when_only_one_side_is_empty():
    # Nothing predicted, lung present: precision's denominator is 0 but this is not "both empty".
    missed = scores_from_counts(0, 0, 5)
    assert {k: float(v) for k, v in missed.items()} == {"dice": 0.0, "iou": 0.0, "precision": 0.0,
                                                        "recall": 0.0}
    spurious = scores_from_counts(0, 3, 0)
    assert {k: float(v) for k, v in spurious.items()} == {"dice": 0.0, "iou": 0.0, "precision": 0.0,
                                                          "recall": 0.0}
    perfect = scores_from_counts(4, 0, 0)
    assert {k: float(v) for k, v in perfect.items()} == {"dice": 1.0, "iou": 1.0, "precision": 1.0,
                                                         "recall": 1.0}
    both_empty = scores_from_counts(np.array([0]), np.array([0]), np.array([0]))
    assert both_empty["dice"].tolist() == [1.0] and both_empty["precision"].tolist() == [1.0]


def test_image_metrics_keys_types_and_without_hd95():
    truth = _square(12, 2, 8, 2, 8)
    pred = _square(12, 3, 9, 2, 8)
    m = image_metrics(pred, truth, with_hd95=False)
    assert set(m) == {"dice", "iou", "precision", "recall", "tp", "fp", "fn"}
    assert (m["tp"], m["fp"], m["fn"]) == (30, 6, 6) and m["dice"] == pytest.approx(60 / 72)
    assert all(type(m[k]) is float for k in ("dice", "iou", "precision", "recall"))
    full = image_metrics(pred, truth)
    assert full["hd95"] == pytest.approx(1.0) and math.isnan(full["hd95_mm"])


def test_hd95_is_a_95th_percentile_of_outline_distances_not_the_maximum():
    truth = _square(80, 10, 60, 10, 60)  # 50 x 50: 196 outline pixels
    pred = truth.copy()
    pred[70, 70] = True  # one far speck: max distance ~14 px, but it is 1 outline pixel of 197
    assert hd95(pred, truth) == pytest.approx(0.0)
    assert _brute_hd95(pred, truth) == pytest.approx(0.0)
    # A square 4 px inside another: every inner outline pixel is 4 px from the outer outline, but the
    # outer corners are farther (up to 4 * sqrt(2)) from the inner one: the larger direction wins.
    inner = _square(40, 10, 30, 10, 30)
    outer = _square(40, 6, 34, 6, 34)
    assert hd95(inner, outer) == hd95(outer, inner) == pytest.approx(_brute_hd95(inner, outer)) == 5.0
    assert hd95(inner, np.zeros_like(inner)) != hd95(inner, np.zeros_like(inner))  # NaN: no distance exists
    assert math.isnan(hd95(np.zeros_like(inner), inner))


def test_metric_sums_skip_nan_and_none_but_count_images_and_pixels():
    sums = MetricSums()
    sums.add({"dice": 0.5, "hd95": float("nan"), "tp": 3, "fp": 1, "fn": 2})
    sums.add({"dice": 1.0, "hd95": 4.0, "tp": 5, "fp": 0, "fn": 0})
    sums.add({"dice": 0.0, "hd95": None, "tp": 0, "fp": 2, "fn": 4})
    assert (sums.n, sums.tp, sums.fp, sums.fn) == (3, 8, 3, 6)
    assert sums.sums == {"dice": 1.5, "hd95": 4.0} and sums.counts == {"dice": 3, "hd95": 1}
    means = sums.means()
    assert means == {"dice": pytest.approx(0.5), "hd95": 4.0, "micro_dice": pytest.approx(16 / 25), "n": 3}
    assert sums.to_dict() == {"n": 3, "sums": {"dice": 1.5, "hd95": 4.0}, "counts": {"dice": 3, "hd95": 1},
                              "tp": 8, "fp": 3, "fn": 6}
    assert MetricSums().means() == {"micro_dice": 1.0, "n": 0}  # nothing seen: nothing missed


def test_metric_sums_merge_adds_everything_and_leaves_both_sides_untouched():
    a, b = MetricSums(), MetricSums()
    a.add({"dice": 0.25, "tp": 1, "fp": 2, "fn": 3})
    b.add({"dice": 0.75, "hd95": 2.0, "tp": 10, "fp": 20, "fn": 30})
    b.add({"dice": 0.5, "hd95": 6.0, "tp": 0, "fp": 0, "fn": 0})
    before_a, before_b = a.to_dict(), b.to_dict()
    merged = a.merge(b)
    assert merged.to_dict() == {"n": 3, "sums": {"dice": 1.5, "hd95": 8.0}, "counts": {"dice": 3, "hd95": 2},
                                "tp": 11, "fp": 22, "fn": 33}
    assert a.to_dict() == before_a and b.to_dict() == before_b
    assert b.merge(a).means() == merged.means()


def test_json_safe_replaces_non_finite_floats_recursively():
    data = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x", "e": 2, "f": (1.5,)}
    assert json_safe(data) == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 2, "f": (1.5,)}
    assert json_safe(float("nan")) is None and json_safe(0.5) == 0.5 and json_safe(None) is None


def test_summarize_known_values_and_empty():
    s = summarize(np.array([1.0, 2.0, float("nan"), 6.0]))
    assert s == {"mean": 3.0, "sd": pytest.approx(np.sqrt(7.0)), "median": 2.0, "min": 1.0, "max": 6.0,
                 "n": 3}
    assert summarize([5.0])["sd"] == 0.0 and summarize([5.0])["n"] == 1
    assert summarize([1.0, 3.0])["sd"] == pytest.approx(np.sqrt(2.0))  # two values: a sample sd already
    assert summarize([0.5, None, 1.5]) == {"mean": 1.0, "sd": pytest.approx(np.sqrt(0.5)), "median": 1.0,
                                           "min": 0.5, "max": 1.5, "n": 2}  # None (a Parquet null) is skipped
    empty = summarize([float("nan")])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "sd", "median", "min", "max"))
    assert set(empty) == set(s)


# --- properties (hypothesis) -------------------------------------------------------------------------

def _outline_ref(mask: np.ndarray) -> np.ndarray:
    """Independent outline: a mask pixel with a 4-neighbour outside the mask or outside the image."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _brute_hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """hd95 by explicit pairwise distances between outline pixels (slow, obviously right)."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    a = np.argwhere(_outline_ref(pred)) * np.asarray(spacing)
    b = np.argwhere(_outline_ref(truth)) * np.asarray(spacing)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


@st.composite
def mask_pairs(draw):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    cells = st.lists(st.booleans(), min_size=h * w, max_size=h * w)
    pred = np.array(draw(cells), bool).reshape(h, w)
    truth = np.array(draw(cells), bool).reshape(h, w)
    return pred, truth


@given(mask_pairs())
def test_property_metrics_bounds_symmetry_and_identities(pair):
    pred, truth = pair
    m, swapped = image_metrics(pred, truth), image_metrics(truth, pred)
    for name in ("dice", "iou", "precision", "recall"):
        assert 0.0 <= m[name] <= 1.0
    assert m["dice"] == pytest.approx(swapped["dice"]) and m["iou"] == pytest.approx(swapped["iou"])
    assert (m["precision"] == pytest.approx(swapped["recall"])
            and m["recall"] == pytest.approx(swapped["precision"]))
    assert m["dice"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]))
    assert m["tp"] + m["fn"] == truth.sum() and m["tp"] + m["fp"] == pred.sum()
    if not pred.any() and not truth.any():
        assert (m["dice"], m["hd95"]) == (1.0, 0.0)
    elif not pred.any() or not truth.any():
        assert m["dice"] == 0.0 and math.isnan(m["hd95"])
    else:
        assert m["hd95"] == pytest.approx(swapped["hd95"]) and m["hd95"] >= 0
    assert image_metrics(truth, truth)["dice"] == 1.0


@given(mask_pairs(), st.sampled_from([(1.0, 1.0), (2.0, 0.5), (0.7, 3.0)]))
def test_property_hd95_equals_brute_force(pair, spacing):
    pred, truth = pair
    expected = _brute_hd95(pred, truth, spacing)
    got = hd95(pred, truth, spacing)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-9)


@given(st.lists(st.tuples(mask_pairs(), st.integers(0, 3)), min_size=1, max_size=8))
def test_property_shard_merge_equals_single_pass(items):
    whole, shards = MetricSums(), [MetricSums() for _ in range(4)]
    for (pred, truth), shard in items:
        m = image_metrics(pred, truth)
        whole.add(m)
        shards[shard].add(m)
    merged = shards[0].merge(shards[1]).merge(shards[2]).merge(shards[3])
    assert (merged.n, merged.tp, merged.fp, merged.fn, merged.counts) == (
        whole.n, whole.tp, whole.fp, whole.fn, whole.counts)
    got, expected = merged.means(), whole.means()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12)
    dices = [image_metrics(p, t)["dice"] for (p, t), _ in items]
    assert got["dice"] == pytest.approx(np.mean(dices))
