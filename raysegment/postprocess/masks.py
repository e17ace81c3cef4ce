"""From the model's probability map to a clean lung mask at the original resolution, plus its measurements.

    uint8 SxS probability (x255)  --restore_probability-->  float32 HxW in [0, 1]
        --> threshold --> keep the largest components --> fill holes --> bool HxW mask
        --> right/left lung areas, component count, mean confidence, QC reasons

Orientation: a chest X-ray is viewed as if facing the patient, so the patient's RIGHT lung is on the
IMAGE LEFT. A component is assigned to a side by its centroid relative to a midline: midway between the
centroids of the two largest components when there are two or more, else the image's vertical centre.

Connectivity: lung components are 8-connected; holes are background regions that are not 4-connected to
the image border (the dual of 8-connected foreground, so a diagonal gap does not make a hole escape).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from raysegment.data.preprocess import Geometry, restore_probability

# Every QC reason and its severity. "flag": the mask is doubtful, the reason sets qc_flag (column
# qc_reasons). "note": recorded only (column qc_notes), e.g. an input that was corrected on the way in.
# A reason missing here counts as a note (`severity`), so a reason added later cannot silently raise the
# flag rate: making it a flag is a decision taken here.
QC_SEVERITY = {
    "no_lung": "flag",  # the mask is empty
    "right_lung_missing": "flag",  # nothing on the image-left side (the patient's right)
    "left_lung_missing": "flag",  # nothing on the image-right side (the patient's left)
    "lung_fraction_low": "flag",  # lung area / image area below min_lung_fraction
    "lung_fraction_high": "flag",  # ... above max_lung_fraction
    "low_confidence": "flag",  # mean probability inside the mask below min_confidence
    "low_quality_score": "flag",  # quality_score (predicted dice) below the calibration's threshold
    "inverted_input_corrected": "note",  # an inverted PNG/JPEG/TIFF export was inverted back (decode stage)
    "exif_mirrored": "note",  # an EXIF orientation with a mirror was applied
    "multiframe_first_frame": "note",  # a multi-frame DICOM: frame 1 was segmented
    "ctr_not_measurable": "note",  # a heart model: no heart, or no row showing both lungs (ctr is null)
}
QC_REASONS = tuple(QC_SEVERITY)


def severity(reason: str) -> str:
    """"flag" or "note" (the default for a reason not in QC_SEVERITY)."""
    return QC_SEVERITY.get(reason, "note")


def split_reasons(reasons: list[str]) -> tuple[list[str], list[str]]:
    """(flags, notes): reasons that set qc_flag, and reasons that are only recorded."""
    return [r for r in reasons if severity(r) == "flag"], [r for r in reasons if severity(r) != "flag"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Mask cleanup and QC thresholds (the probability threshold itself comes from the checkpoint)."""

    keep_largest: int = 2  # keep this many largest components (two lungs); 0 keeps everything
    fill_holes: bool = True
    min_lung_fraction: float = 0.05  # QC: plausible lung area / image area
    max_lung_fraction: float = 0.60
    min_confidence: float = 0.75  # QC: mean probability inside the mask
    min_quality_score: float | None = None  # QC: flag quality_score below this (None: the calibration's)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Segmentation:
    """A cleaned mask at the original resolution and its measurements."""

    mask: np.ndarray  # bool HxW, original resolution
    right_area_px: int  # patient's right lung = image left
    left_area_px: int  # patient's left lung = image right
    n_components: int  # 8-connected components of the thresholded mask, before cleanup
    mean_confidence: float  # mean probability over the mask's pixels; NaN when the mask is empty

    @property
    def area_px(self) -> int:
        return self.right_area_px + self.left_area_px

    @property
    def fraction(self) -> float:
        """Lung area / image area."""
        return self.area_px / self.mask.size if self.mask.size else 0.0


def uint8_to_probability(prob_u8: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 in [0, 1]."""
    return prob_u8.astype(np.float32) * np.float32(1.0 / 255.0)


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a bool HxW mask.

    Returns (count, labels int32 HxW with 0 = background, areas (count,) px, centroid x (count,) px),
    where component i (0-based) has label i + 1.
    """
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return n - 1, labels, stats[1:, cv2.CC_STAT_AREA].astype(np.int64), centroids[1:, 0]


def _largest(areas: np.ndarray, k: int) -> np.ndarray:
    """Labels of the k largest components (ties: the first found)."""
    return np.argsort(-areas, kind="stable")[:k] + 1


def keep_largest_components(mask: np.ndarray, k: int = 2, labelled: tuple | None = None) -> np.ndarray:
    """bool HxW -> bool HxW with only the k largest 8-connected components (k <= 0 keeps all).

    `labelled`: components(mask) when the caller has it already (saves labelling the image twice)."""
    n, labels, areas, _ = labelled or components(mask)
    if k <= 0 or n <= k:
        return mask.copy()
    lut = np.zeros(n + 1, dtype=bool)
    lut[_largest(areas, k)] = True
    return lut[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool HxW -> bool HxW where background not 4-connected to the border becomes foreground."""
    h, w = mask.shape
    # Pad by one pixel so the whole outside is one region, flood it from the corner, and whatever
    # background the flood did not reach is a hole. cv2 needs a mask 2 px larger than the image.
    canvas = np.zeros((h + 2, w + 2), np.uint8)
    canvas[1:-1, 1:-1] = mask
    cv2.floodFill(canvas, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1, flags=4)
    return mask | (canvas[1:-1, 1:-1] == 0)


def _on_image_left(areas: np.ndarray, cx: np.ndarray, width: int) -> np.ndarray:
    """Per component (n,): is its centroid left of the midline? See split_lungs."""
    midline = float(cx[_largest(areas, 2) - 1].mean()) if len(areas) >= 2 else width / 2.0
    return cx < midline


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool HxW -> (right lung, left lung) bool HxW, by position: patient's right = image left.

    Each 8-connected component goes to the side of the midline its centroid is on; the midline is
    midway between the centroids of the two largest components (robust to a patient off centre), or the
    image's vertical centre when there is at most one component.
    """
    n, labels, areas, cx = components(mask)
    lut = np.zeros(n + 1, dtype=bool)
    lut[1:] = _on_image_left(areas, cx, mask.shape[1])
    right = lut[labels]
    return right, mask & ~right


def postprocess(prob_u8: np.ndarray, geo: Geometry, threshold: float,
                config: PostprocessConfig = PostprocessConfig()) -> Segmentation:
    """uint8 SxS model-resolution probability (x255) -> Segmentation at the original HxW resolution.

    The probability is resized back (bilinear) before thresholding, so mask edges follow the smooth
    probability instead of the staircase of an upscaled low-resolution mask.
    """
    prob = restore_probability(uint8_to_probability(prob_u8), geo)  # float32 HxW
    mask = prob > np.float32(threshold)
    n_raw, labels, areas, cx = components(mask)
    if 0 < config.keep_largest < n_raw:
        mask = keep_largest_components(mask, config.keep_largest, (n_raw, labels, areas, cx))
    if config.fill_holes:
        mask = fill_holes(mask)
    if config.fill_holes or 0 < config.keep_largest < n_raw:  # the components changed: measure again
        _, _, areas, cx = components(mask)
    image_left = _on_image_left(areas, cx, mask.shape[1])
    right_area, left_area = int(areas[image_left].sum()), int(areas[~image_left].sum())
    confidence = float(prob[mask].mean(dtype=np.float64)) if mask.any() else float("nan")
    return Segmentation(mask, right_area, left_area, n_raw, confidence)


def postprocess_structure(prob_u8: np.ndarray, geo: Geometry, threshold: float, keep_largest: int,
                          fill: bool = True) -> np.ndarray:
    """A further structure's (heart, clavicles) uint8 SxS probability -> bool HxW mask at the original
    resolution: the lungs' steps (resize back, threshold, keep its `keep_largest` parts, fill holes)."""
    config = PostprocessConfig(keep_largest=keep_largest, fill_holes=fill)
    return postprocess(prob_u8, geo, threshold, config).mask


def qc_reasons(seg: Segmentation, config: PostprocessConfig = PostprocessConfig(),
               quality_score: float | None = None, quality_threshold: float | None = None) -> list[str]:
    """Names (from QC_SEVERITY) of what looks wrong with a segmentation; empty when it looks plausible.

    quality_score (when computed) below quality_threshold (config.min_quality_score when set) adds
    "low_quality_score".
    """
    if seg.area_px == 0:
        return ["no_lung"]
    reasons = []
    if seg.right_area_px == 0:
        reasons.append("right_lung_missing")
    if seg.left_area_px == 0:
        reasons.append("left_lung_missing")
    if seg.fraction < config.min_lung_fraction:
        reasons.append("lung_fraction_low")
    if seg.fraction > config.max_lung_fraction:
        reasons.append("lung_fraction_high")
    if not seg.mean_confidence >= config.min_confidence:
        reasons.append("low_confidence")
    limit = config.min_quality_score if config.min_quality_score is not None else quality_threshold
    if quality_score is not None and limit is not None and quality_score < limit:
        reasons.append("low_quality_score")
    return reasons
