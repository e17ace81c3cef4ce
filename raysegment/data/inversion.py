"""Detect inverted exports: a PNG/JPEG/TIFF written from a MONOCHROME1 DICOM without inverting it shows
white air and lungs and black bones. The model has only seen normal films (dice 0.07 on inverted ones,
docs/results.md), so bulk inference inverts such images back and records it (results column
`inversion_corrected`, QC note "inverted_input_corrected").

The rule (frontal chest film, any size, `inversion_score`): the mediastinum (columns 45-55 % of the
width) is denser, so brighter, than the lung fields (columns 18-33 % and 67-82 %), over rows 30-55 % of
the height. The score is the difference of their medians divided by the image's 2-98 % intensity range:

    normal films:   minimum +0.148 (247 JSRT), +0.176 (138 Montgomery), +0.354 (40 synthetic);
                    medians +0.36 / +0.57 / +0.63
    inverted films: exactly the negative of the original's score

An image is called inverted when its score is below INVERTED_BELOW = -0.05: no normal film of either set
comes near (the closest is 0.198 above it), and every inverted one is caught. Images the rule cannot judge
(a flat image, a score between -0.05 and 0) are left as they are. DICOM inputs are never checked: their
PhotometricInterpretation says what is white.
"""

from __future__ import annotations

import numpy as np

INVERTED_BELOW = -0.05
QC_NOTE = "inverted_input_corrected"
_ROWS = (0.30, 0.55)
_MEDIASTINUM = (0.45, 0.55)
_LUNGS = ((0.18, 0.33), (0.67, 0.82))


def inversion_score(image: np.ndarray) -> float:
    """Mediastinum minus lung fields (medians) over the 2-98 % intensity range of a HxW image.

    Positive on normal films, negative on inverted ones, 0.0 for a flat image."""
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    def band(lo: float, hi: float, n: int) -> slice:  # fractions -> a slice of at least one pixel
        return slice(int(lo * n), max(int(hi * n), int(lo * n) + 1))

    rows = image[band(*_ROWS, h)]
    mediastinum = rows[:, band(*_MEDIASTINUM, w)]
    lungs = np.concatenate([rows[:, band(a, b, w)].ravel() for a, b in _LUNGS])
    lo, hi = np.percentile(image, (2, 98))
    if hi - lo <= 1e-6:
        return 0.0
    return float((np.median(mediastinum) - np.median(lungs)) / (hi - lo))


def looks_inverted(image: np.ndarray) -> bool:
    """True when the HxW float image in [0, 1] is an inverted chest film by the rule above."""
    return inversion_score(image) < INVERTED_BELOW


def correct_inversion(image: np.ndarray, image_format: str) -> tuple[np.ndarray, bool]:
    """(image, False), or (1 - image, True) for a PNG/JPEG/TIFF that looks_inverted. DICOM is never
    touched. The one place bulk inference and single-image predict decide this."""
    if image_format == "dicom" or not looks_inverted(image):
        return image, False
    return 1.0 - image, True
