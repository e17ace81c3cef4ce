"""Scoring one prediction: THE path from a model probability map to the mask a user gets and its metrics.

    probability (uint8 SxS, model resolution) + Geometry (+ truth mask files)
      -> infer.postprocess.postprocess: resize back to HxW, threshold, keep the K largest parts, fill holes
      -> infer.postprocess.qc_reasons
      -> evaluation.metrics.image_metrics against the truth at the ORIGINAL resolution

Used by `raysegment infer --ground-truth` (infer/pipeline.py), `raysegment evaluate` and training's final
test evaluation (evaluation/evaluate.py, which train/driver.py calls), so the three report the same
numbers for the same image, checkpoint, threshold and post-processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raysegment.data.datasets import load_mask
from raysegment.data.preprocess import Geometry
from raysegment.evaluation.metrics import image_metrics
from raysegment.infer.postprocess import PostprocessConfig, Segmentation, postprocess, qc_reasons
from raysegment.io import storage


@dataclass
class Scored:
    segmentation: Segmentation  # the post-processed HxW mask and its measurements
    qc_reasons: list[str]
    metrics: dict | None  # image_metrics (NaN as None) when a truth was given and loaded
    truth_error: str | None  # why metrics are missing although a truth was given


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def score(prob_u8: np.ndarray, geo: Geometry, threshold: float, post: PostprocessConfig,
          truth_uris: tuple[str, ...] | None = None, image_uri: str = "",
          spacing_mm: tuple[float, float] | None = None) -> Scored:
    """Post-process a uint8 SxS probability (x255) at the original resolution; score it when truth is given.

    A truth file that does not load is the ground truth's problem, not the prediction's: it becomes
    `truth_error` and no metrics, never an exception.
    """
    seg = postprocess(prob_u8, geo, threshold, post)
    reasons = qc_reasons(seg, post)
    metrics, truth_error = None, None
    if truth_uris:
        try:
            truth = load_mask(tuple(truth_uris), seg.mask.shape, image_uri)
            metrics = {k: _finite(v) for k, v in image_metrics(seg.mask, truth, spacing_mm).items()}
        except Exception as e:  # noqa: BLE001 - recorded as truth_error
            truth_error = storage.redact(" ".join(str(e).split()))[:1000] or type(e).__name__
    return Scored(seg, reasons, metrics, truth_error)
