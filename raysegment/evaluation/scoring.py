"""Scoring one prediction: THE path from a model probability map to the mask a user gets and its metrics.

    probability (uint8 SxS, model resolution) + Geometry (+ truth mask files)
      -> infer.postprocess.postprocess: resize back to HxW, threshold, keep the K largest parts, fill holes
      -> infer.quality: quality_score (predicted dice) when the checkpoint has a QC calibration
      -> infer.postprocess.qc_reasons, split by severity into flags (qc_reasons) and notes (qc_notes)
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
from raysegment.infer.postprocess import (
    PostprocessConfig,
    Segmentation,
    postprocess,
    qc_reasons,
    split_reasons,
)
from raysegment.io import storage


@dataclass
class Scored:
    segmentation: Segmentation  # the post-processed HxW mask and its measurements
    qc_reasons: list[str]  # severity "flag": they set qc_flag
    qc_notes: list[str]  # severity "note": recorded only
    quality_score: float | None  # predicted dice; None without a calibration
    metrics: dict | None  # image_metrics (NaN as None) when a truth was given and loaded
    truth_error: str | None  # why metrics are missing although a truth was given


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def score(prob_u8: np.ndarray, geo: Geometry, threshold: float, post: PostprocessConfig,
          truth_uris: tuple[str, ...] | None = None, image_uri: str = "",
          spacing_mm: tuple[float, float] | None = None, calibration=None) -> Scored:
    """Post-process a uint8 SxS probability (x255) at the original resolution; score it when truth is given.

    A truth file that does not load is the ground truth's problem, not the prediction's: it becomes
    `truth_error` and no metrics, never an exception. `calibration` (infer.quality.Calibration) adds the
    quality_score and its `low_quality_score` flag (threshold: post.min_quality_score, else the
    calibration's).
    """
    seg = postprocess(prob_u8, geo, threshold, post)
    quality = calibration.score(seg) if calibration is not None else None
    flags, notes = split_reasons(qc_reasons(seg, post, quality,
                                            calibration.threshold if calibration is not None else None))
    metrics, truth_error = None, None
    if truth_uris:
        try:
            truth = load_mask(tuple(truth_uris), seg.mask.shape, image_uri)
            metrics = {k: _finite(v) for k, v in image_metrics(seg.mask, truth, spacing_mm).items()}
        except Exception as e:  # noqa: BLE001 - recorded as truth_error
            truth_error = storage.redact(" ".join(str(e).split()))[:1000] or type(e).__name__
    return Scored(seg, flags, notes, quality, metrics, truth_error)
