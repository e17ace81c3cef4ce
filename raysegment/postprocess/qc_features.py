"""Quality features that SEE THE IMAGE, per structure, at the model's resolution (QC method v2).

    model input (uint8 SxS) + a structure's probability (uint8 SxS) -> FEATURES (one float each)

Today's score (postprocess/quality.py, method v1) looks at the mask only: its mean confidence and its
shape. Both say "fine" for the failures that matter at another site: a dense consolidation segmented as
"not lung" with high confidence leaves a lung outline that is still a plausible shape. What gives it away
is the IMAGE: the part of the lung's envelope (its convex hull) the mask leaves out is as bright as soft
tissue, and the outline is concave where a lung is convex. So besides the model's own uncertainty these
features compare the film inside the mask with the film in what the mask's hull adds.

Everything is computed on the model-resolution arrays (256 px for the reference model: ~1 ms per
structure on one core, no second forward pass) and depends only on (image, probability): any model's
output can be scored with the same features, so one estimator, fitted once on the reference recipe's
leave-one-source-out outputs, serves every checkpoint (postprocess/estimator.py).
"""

from __future__ import annotations

import cv2
import numpy as np

FEATURES = (
    "confidence",  # mean probability inside the mask
    "uncertain",  # pixels with probability in (0.1, 0.9), per mask pixel: a thick, hesitant border
    "solidity",  # smallest area / convex-hull area over the kept parts: a lung outline is convex-ish
    "hull_gap",  # (film brightness in hull - mask) - (inside the mask), in film standard deviations
    "hull_gap_area",  # the hull minus mask area, per mask pixel
    "balance",  # smaller / larger part (two-part structures: the lungs, the clavicles); 1 otherwise
    "area",  # mask area per film area (the film: the letterboxed inner region)
    "edge",  # mask pixels on the film's border, per sqrt(mask area): a part cut by (or made of) the edge
    "parts",  # log(1 + raw components before keeping the largest)
    "shape",  # best soft dice of the mask's bounding box against the references (postprocess/quality.py)
)
PROB_THRESHOLD = 128  # uint8 probability 0.5


def _parts(mask: np.ndarray, keep: int) -> tuple[list[np.ndarray], int]:
    """The `keep` largest 8-connected parts of a bool mask (as bool arrays) and the raw count."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:keep] + 1
    return [labels == k for k in order], n - 1


def structure_features(image: np.ndarray, prob: np.ndarray, keep: int, inner: tuple[int, int, int, int],
                       refs: np.ndarray | None = None) -> np.ndarray:
    """(len(FEATURES),) float64 of one structure.

    image: uint8 SxS model input; prob: uint8 SxS probability x255; keep: parts the structure has (lungs 2,
    heart 1, clavicles 2); inner: (top, left, height, width) of the film inside the SxS canvas; refs:
    (N, n, n) reference shape descriptors (quality.shape_descriptor) or None (shape feature 0).
    """
    from raysegment.postprocess.quality import _best_dice, shape_descriptor

    top, left, h, w = inner
    image, prob = image[top : top + h, left : left + w], prob[top : top + h, left : left + w]
    parts, raw = _parts(prob >= PROB_THRESHOLD, keep)
    area = sum(int(p.sum()) for p in parts)
    if area == 0:
        return np.array([0, 0, 0, 0, 0, 0, 0, 0, np.log1p(raw), 0], dtype=np.float64)
    mask = np.logical_or.reduce(parts)
    p = prob.astype(np.float32) / 255.0
    confidence = float(p[mask].mean())
    uncertain = float(((prob > 25) & (prob < 230)).sum() / area)
    hulls, solidity = np.zeros_like(mask, np.uint8), 1.0
    for part in parts:
        contours, _ = cv2.findContours(part.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(contours))
        one = np.zeros_like(hulls)
        cv2.fillPoly(one, [hull], 1)
        solidity = min(solidity, float(part.sum() / max(int(one.sum()), 1)))
        hulls |= one
    gap_region = hulls.astype(bool) & ~mask
    x = image.astype(np.float32)
    spread = float(x.std()) or 1.0
    hull_gap = float((x[gap_region].mean() - x[mask].mean()) / spread) if gap_region.any() else 0.0
    sizes = sorted((int(q.sum()) for q in parts), reverse=True)
    balance = sizes[1] / sizes[0] if keep >= 2 and len(sizes) >= 2 else (1.0 if keep < 2 else 0.0)
    border = np.zeros_like(mask)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    edge = float((mask & border).sum() / np.sqrt(area))
    shape = _best_dice(shape_descriptor(mask), refs, None) if refs is not None and len(refs) else 0.0
    return np.array([confidence, uncertain, solidity, hull_gap, gap_region.sum() / area, balance,
                     area / mask.size, edge, np.log1p(raw), shape], dtype=np.float64)
