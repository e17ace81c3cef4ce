import math

import numpy as np
import pytest
import torch

from raysegment.evaluation.metrics import MetricSums, confusion, hd95, image_metrics, scores_from_counts
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
