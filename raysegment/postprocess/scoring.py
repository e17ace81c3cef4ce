"""Scoring one prediction: THE path from a model probability map to the mask a user gets and its metrics.

    probability (uint8 SxS, model resolution) + Geometry (+ truth mask files)
      -> infer.postprocess.postprocess: resize back to HxW, threshold, keep the K largest parts, fill holes
      -> infer.quality: quality_score (predicted dice) when the checkpoint has a QC calibration
      -> infer.postprocess.qc_reasons, split by severity into flags (qc_reasons) and notes (qc_notes)
      -> evaluation.metrics.image_metrics against the truth at the ORIGINAL resolution
    further structures of a multi-structure model (heart, clavicles): the same steps per channel
    (postprocess_structure: its own number of parts), their areas and metrics, and the cardiothoracic
    ratio from the lung and heart masks (postprocess/ctr.py), also from the expert masks when both are given

Used by `raysegment infer --ground-truth` (infer/stages.py), single-image predict (infer/predict.py),
`raysegment evaluate` and training's final test evaluation (evaluation/evaluate.py, which train/driver.py
calls) and `raysegment calibrate` (evaluation/calibrate.py: its quality features are computed from the
scored segmentation), so all report the same numbers for the same image, checkpoint, threshold and
post-processing. These are the only calls of the postprocess / QC / CTR primitives (tests/test_layering.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from raysegment.data.datasets import load_mask
from raysegment.data.preprocess import Geometry
from raysegment.data.structures import STRUCTURES
from raysegment.io import storage
from raysegment.postprocess.ctr import CTR, measure_ctr
from raysegment.postprocess.masks import (
    PostprocessConfig,
    Segmentation,
    postprocess,
    postprocess_structure,
    qc_reasons,
    split_reasons,
)
from raysegment.postprocess.metrics import image_metrics


@dataclass
class StructureScore:
    """One further structure (heart, clavicles) of one image."""

    name: str
    mask: np.ndarray  # bool HxW, original resolution
    metrics: dict | None = None  # image_metrics against its expert mask, when given
    truth_error: str | None = None
    truth: np.ndarray | None = None  # the expert mask, when loaded

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


@dataclass
class Scored:
    segmentation: Segmentation  # the post-processed HxW mask and its measurements
    qc_reasons: list[str]  # severity "flag": they set qc_flag
    qc_notes: list[str]  # severity "note": recorded only
    quality_score: float | None  # predicted dice; None without a calibration
    metrics: dict | None  # image_metrics (NaN as None) when a truth was given and loaded
    truth_error: str | None  # why metrics are missing although a truth was given
    structures: list[StructureScore] = field(default_factory=list)  # heart, clavicles: multi-structure models
    ctr: CTR | None = None  # from the predicted lungs and heart (a model with a heart channel)
    truth_ctr: CTR | None = None  # the same rule on the expert lung and heart masks, when both loaded


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm, with_hd95: bool = True) -> dict:
    """image_metrics with NaN as None."""
    return {k: _finite(v) for k, v in image_metrics(pred, truth, spacing_mm, with_hd95).items()}


def _truth(uris, shape, image_uri: str, pred: np.ndarray, spacing_mm, with_hd95: bool = True):
    """(truth mask, metrics, truth_error) of one structure; a truth that does not load is recorded."""
    try:
        truth = load_mask(tuple(uris), shape, image_uri)
    except Exception as e:  # noqa: BLE001 - recorded as truth_error
        return None, None, storage.redact(" ".join(str(e).split()))[:1000] or type(e).__name__
    return truth, _metrics(pred, truth, spacing_mm, with_hd95), None


def score(prob_u8: np.ndarray, geo: Geometry, threshold: float, post: PostprocessConfig,
          truth_uris: tuple[str, ...] | None = None, image_uri: str = "",
          spacing_mm: tuple[float, float] | None = None, calibration=None,
          others: dict[str, np.ndarray] | None = None,
          other_truths: dict[str, tuple[str, ...]] | None = None, truth: np.ndarray | None = None,
          with_hd95: bool = True, frontal: bool = True) -> Scored:
    """Post-process a uint8 SxS lung probability (x255) at the original resolution; score it when truth is
    given. `others`: the further structures' uint8 SxS probabilities by name (a multi-structure model's
    channels 1..), `other_truths` their expert mask files.

    A truth file that does not load is the ground truth's problem, not the prediction's: it becomes
    `truth_error` and no metrics, never an exception. `calibration` (infer.quality.Calibration) adds the
    quality_score and its `low_quality_score` flag (threshold: post.min_quality_score, else the
    calibration's). A model with a heart channel gets a CTR, or the note ctr_not_measurable;
    `frontal` False (a lateral film: the CTR is a frontal measure) leaves it out, without a note.

    `truth`: the lung truth as a bool HxW array already in memory (calibration's shifted copies, whose
    masks exist in no file) instead of `truth_uris`. `with_hd95` False skips the (slow) distances.
    """
    seg = postprocess(prob_u8, geo, threshold, post)
    quality = calibration.score(seg) if calibration is not None else None
    reasons = qc_reasons(seg, post, quality, calibration.threshold if calibration is not None else None)
    metrics, truth_error = None, None
    if truth is not None:
        metrics = _metrics(seg.mask, truth, spacing_mm, with_hd95)
    elif truth_uris:
        truth, metrics, truth_error = _truth(truth_uris, seg.mask.shape, image_uri, seg.mask, spacing_mm,
                                             with_hd95)
    structures = []
    for name, prob in (others or {}).items():
        mask = postprocess_structure(prob, geo, threshold, STRUCTURES[name].keep_largest, post.fill_holes)
        part = StructureScore(name, mask)
        if (other_truths or {}).get(name):
            part.truth, part.metrics, part.truth_error = _truth(other_truths[name], mask.shape, image_uri,
                                                                mask, spacing_mm, with_hd95)
        structures.append(part)
    heart = next((p for p in structures if p.name == "heart"), None)
    ctr = truth_ctr = None
    if heart is not None and frontal:
        ctr = measure_ctr(seg.mask, heart.mask)
        if ctr.ctr is None:
            reasons.append("ctr_not_measurable")
        if truth is not None and heart.truth is not None:
            truth_ctr = measure_ctr(truth, heart.truth)
    flags, notes = split_reasons(reasons)
    return Scored(seg, flags, notes, quality, metrics, truth_error, structures, ctr, truth_ctr)
