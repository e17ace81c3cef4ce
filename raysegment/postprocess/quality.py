"""quality_score: the predicted dice of a lung mask against an expert's, computed without ground truth.

    Segmentation --features()--> (mean_confidence, shape_match) --Calibration.predict()--> predicted dice

Two features, chosen by measurement among twelve candidates (docs/results.md, QC section; bench/qc_quality.py
--candidates reproduces the comparison):
- mean_confidence: the model's mean probability inside the mask (its own uncertainty; postprocess
  measures it anyway);
- shape_match: the best dice of the mask against the calibration's expert reference masks (the
  validation split's), both cropped to their bounding box and resized to 32x32: a registration-free
  reference score in the spirit of Reverse Classification Accuracy. Position and size do not matter
  (a wider field of view is not a worse mask); the shape, orientation and left/right balance do.
A logistic curve over the two standardized features, fitted by least squares on the real dice of the
validation split and shifted copies of it (`raysegment calibrate`, raysegment.evaluation.calibrate),
maps them to the predicted dice. Cost: ~0.3 ms per image, no second forward pass (measured against a
~40 ms forward + postprocess per image at 128 px on one core).

The fit, the reference masks and the flag threshold form a Calibration, stored as calibration.json in
the checkpoint folder. Its digest (calibration_id) is written in every results row and is part of the
resume identity: rows scored with another calibration are redone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from raysegment.postprocess.masks import Segmentation

CALIBRATION_FILE = "calibration.json"
METHOD = "logistic-confidence-shape-v1"
DESCRIPTOR_SIZE = 32  # reference masks are compared at 32x32
FEATURES = ("mean_confidence", "shape_match")


# --- reference masks -----------------------------------------------------------------------------

def shape_descriptor(mask: np.ndarray, n: int = DESCRIPTOR_SIZE) -> np.ndarray:
    """bool HxW -> float32 nxn: the mask's bounding box resized to nxn (zeros for an empty mask)."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    if w == 0 or h == 0:
        return np.zeros((n, n), np.float32)
    box = mask[y : y + h, x : x + w].astype(np.float32)
    return cv2.resize(box, (n, n), interpolation=cv2.INTER_AREA)


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8).tobytes()).decode("ascii")


def _decode(s: str, n: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.uint8).reshape(-1, n, n).astype(np.float32) / 255.0


@dataclass(frozen=True)
class References:
    """Expert masks the shape feature compares against: (N, n, n) float32 shape descriptors."""

    shape: np.ndarray

    @classmethod
    def from_masks(cls, masks: list[np.ndarray]) -> References:
        return cls(np.stack([shape_descriptor(m) for m in masks]))

    def to_dict(self) -> dict:
        return {"size": int(self.shape.shape[-1]), "shape": _encode(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> References:
        return cls(_decode(d["shape"], d["size"]))


def _best_dice(d: np.ndarray, refs: np.ndarray, exclude: int | None) -> float:
    """Largest soft dice of descriptor d (nxn) against refs (N, n, n), leaving out ref `exclude`."""
    inter = (refs * d).sum(axis=(1, 2))
    dice = 2 * inter / np.maximum(refs.sum(axis=(1, 2)) + d.sum(), 1e-6)
    if exclude is not None and len(dice) > 1:
        dice = np.delete(dice, exclude)
    return float(dice.max()) if len(dice) else 0.0


# --- features ------------------------------------------------------------------------------------

def features(seg: Segmentation, refs: References, exclude: int | None = None) -> np.ndarray:
    """(len(FEATURES),) float64 quality features of one postprocessed prediction.

    refs: reference masks; exclude: index of a reference to leave out (the image's own expert mask, when
    fitting on the images the references came from).
    """
    confidence = seg.mean_confidence if np.isfinite(seg.mean_confidence) else 0.0
    return np.array([confidence, _best_dice(shape_descriptor(seg.mask), refs.shape, exclude)],
                    dtype=np.float64)


# --- the calibration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Features -> predicted dice curve, reference masks and the QC flag threshold, for one model."""

    model_id: str  # the weights it was fitted for
    refs: References
    mean: tuple[float, ...]  # feature standardization
    scale: tuple[float, ...]
    coef: tuple[float, ...]  # logistic coefficients on the standardized features
    intercept: float
    threshold: float  # quality_score below this: qc reason "low_quality_score"
    method: str = METHOD
    feature_names: tuple[str, ...] = FEATURES
    fitted_on: dict = field(default_factory=dict)  # data, split, sample counts, fit statistics

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) predicted dice in [0, 1]."""
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def score(self, seg: Segmentation) -> float:
        """quality_score of one postprocessed prediction (see `features`); an empty mask scores 0."""
        if seg.area_px == 0:
            return 0.0
        return round(float(self.predict(features(seg, self.refs))[0]), 6)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(refs=self.refs.to_dict(), mean=list(self.mean), scale=list(self.scale), coef=list(self.coef),
                 feature_names=list(self.feature_names))
        return d

    @property
    def calibration_id(self) -> str:
        """sha256 (16 hex digits) of everything that changes a score or a flag (not the fit statistics)."""
        d = self.to_dict()
        d.pop("fitted_on")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        if d.get("method") != METHOD:
            raise ValueError(f"calibration method {d.get('method')!r} is not {METHOD!r}: "
                             "run `raysegment calibrate` again with this version")
        return cls(d["model_id"], References.from_dict(d["refs"]), tuple(d["mean"]), tuple(d["scale"]),
                   tuple(d["coef"]), float(d["intercept"]), float(d["threshold"]), d["method"],
                   tuple(d["feature_names"]), d.get("fitted_on", {}))


def save_calibration(checkpoint: str, calibration: Calibration) -> str:
    """Write CHECKPOINT/calibration.json (with its calibration_id); returns its URI."""
    from raysegment.io import storage

    uri = storage.join(checkpoint, CALIBRATION_FILE)
    body = {"calibration_id": calibration.calibration_id, **calibration.to_dict()}
    storage.write_text(uri, json.dumps(body, indent=1) + "\n")
    return uri


def load_calibration(checkpoint: str, model_id: str) -> Calibration | None:
    """The checkpoint's calibration (the name "reference": the shipped model's), or None when it has none.
    ValueError when it was fitted for other weights or was edited (its calibration_id no longer matches
    its content)."""
    from raysegment.io import storage
    from raysegment.model import reference

    uri = storage.join(reference.resolve(checkpoint)[0], CALIBRATION_FILE)
    if not storage.exists(uri):
        return None
    d = json.loads(storage.read_text(uri))
    calibration = Calibration.from_dict(d)
    if calibration.model_id != model_id:
        raise ValueError(f"{uri} was fitted for model {calibration.model_id}, "
                         f"but the weights are {model_id}: run `raysegment calibrate` for this checkpoint")
    if d.get("calibration_id") != calibration.calibration_id:
        raise ValueError(f"{uri} was changed after it was written (its calibration_id does not match its "
                         "content): run `raysegment calibrate` again")
    return calibration
