"""Segmentation metrics: one implementation for training validation, evaluation and bulk inference.

Per image, from the confusion counts (tp, fp, fn) of a binary prediction against the truth:
    dice = 2tp / (2tp + fp + fn)      iou = tp / (tp + fp + fn)
    precision = tp / (tp + fp)         recall = tp / (tp + fn)
Empty-mask convention: a ratio whose denominator is 0 is 1.0 when prediction and truth are both empty
(nothing to find, nothing found: perfect) and 0.0 otherwise (e.g. precision when nothing is predicted
but there is a lung). HD95 (95th percentile symmetric Hausdorff distance between the mask outlines) is
0.0 when both are empty and NaN when exactly one is (no distance exists); aggregates skip NaN.

Aggregation is exact across shards: `MetricSums` holds sums and counts (never means of batch means),
so merging the sums of N workers gives the same numbers as one pass over all images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from scipy import ndimage

METRICS = ("dice", "iou", "precision", "recall")


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(tp, fp, fn) pixel counts of bool HxW prediction vs truth."""
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.count_nonzero(pred & truth))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp


def _ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    out = np.where(both_empty, 1.0, 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_counts(tp, fp, fn) -> dict[str, np.ndarray]:
    """dice, iou, precision, recall from counts; scalars or arrays (vectorized over images)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
    }


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """95th percentile symmetric Hausdorff distance between outlines, in pixels (or mm with
    spacing=(row, col))."""
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    sampling = spacing or (1.0, 1.0)
    pred_edge, truth_edge = _outline(pred), _outline(truth)
    # Distance from every pixel to the nearest outline pixel of the other mask.
    to_truth = ndimage.distance_transform_edt(~truth_edge, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)
    return float(max(np.percentile(to_truth[pred_edge], 95), np.percentile(to_pred[truth_edge], 95)))


def image_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] | None = None, with_hd95: bool = True
) -> dict[str, float]:
    """All per-image metrics of bool HxW prediction vs truth. hd95 in pixels; hd95_mm when spacing is
    given."""
    tp, fp, fn = confusion(pred, truth)
    out = {k: float(v) for k, v in scores_from_counts(tp, fp, fn).items()}
    out.update(tp=tp, fp=fp, fn=fn)
    if with_hd95:
        out["hd95"] = hd95(pred, truth)
        out["hd95_mm"] = hd95(pred, truth, spacing) if spacing else float("nan")
    return out


@dataclass
class MetricSums:
    """Mergeable sums for exact aggregation across shards and workers.

    `n` images; per-image metric sums and their counts (NaN skipped) for macro means; summed pixel counts
    (tp, fp, fn) for micro ("global") dice.
    """

    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, metrics: dict[str, float]) -> None:
        self.n += 1
        for name, value in metrics.items():
            if name in ("tp", "fp", "fn"):
                setattr(self, name, getattr(self, name) + int(value))
            elif value is not None and np.isfinite(value):
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1

    def merge(self, other: MetricSums) -> MetricSums:
        out = MetricSums(self.n + other.n, dict(self.sums), dict(self.counts),
                         self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)
        for name, value in other.sums.items():
            out.sums[name] = out.sums.get(name, 0.0) + value
            out.counts[name] = out.counts.get(name, 0) + other.counts[name]
        return out

    def means(self) -> dict[str, float]:
        """Macro means (mean over images) plus micro dice from the summed pixel counts."""
        out = {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts.get(name)}
        out["micro_dice"] = float(scores_from_counts(self.tp, self.fp, self.fn)["dice"])
        out["n"] = self.n
        return out

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def json_safe(obj):
    """NaN/inf (e.g. HD95 of an empty mask) -> None, recursively through dicts and lists: strict JSON
    readers and Parquet nulls want None, not NaN. Anything else is returned unchanged."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def summarize(values: np.ndarray) -> dict[str, float]:
    """mean, sd, median, min, max of finite values (for reports)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "median": float("nan"),
                "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "median": float(np.median(values)), "min": float(values.min()), "max": float(values.max()),
            "n": int(values.size)}
