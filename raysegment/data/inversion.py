"""Detect inverted exports: a PNG/JPEG/TIFF written from a MONOCHROME1 DICOM without inverting it shows
white air and lungs and black bones. The model has only seen normal films (dice 0.07 on inverted ones,
docs/results.md), so bulk inference inverts such images back and records it (results column
`inversion_corrected`, QC note "inverted_input_corrected").

The rule has two parts; both must hold (`looks_inverted`):

1. The band score (`inversion_score`) says "inverted": on the film (uniform padding rows and columns
   trimmed), the mediastinum (columns 45-55 % of the width) is denser, so brighter, than the lung fields
   (columns 18-33 % and 67-82 %), over rows 30-55 % of the height. The score is the difference of their
   medians over the film's 2-98 % intensity range; an image is inverted by this part when it is below
   INVERTED_BELOW = -0.05:

       normal films:   minimum +0.148 (247 JSRT), +0.176 (138 Montgomery); medians +0.36 / +0.57
       inverted films: exactly the negative of the original's score

2. The film is laid out as an upright frontal chest (`upright_layout`), judged on evidence that does not
   depend on which way the grey scale runs, so a film and its inverted copy always get the same answer.
   The band score alone cannot tell an inverted film from a normal one turned 90 or 270 degrees or cut in
   half (the bands then sample an apex, a lung and the abdomen, or a lung between the chest wall and the
   mediastinum): it called 260 of the 770 quarter-turned and 709 of the 1540 half real films inverted.
   The layout checks, each on the band medians in the sign of the score:
     - the image is shaped like a chest film: width / height in ASPECT (0.7-1.45; 35x43 cm is 0.81,
       43x35 cm 1.23; a film cut in half is 0.5 or 2);
     - both lung fields differ from the mediastinum in the same direction (the smaller of the two
       contrasts over the score's magnitude >= SIDE_MIN);
     - the two lung fields alike (their difference over the score's magnitude <= SIMILAR_MAX);
     - the contrast holds down the film: its median over 11 row windows from 15 % to 70 % of the height,
       over the score's magnitude, >= DOWN_MIN (a quarter-turned film has it in one window only);
     - the film is more mirror-symmetric left-right than top-bottom (a 32 x 32 thumbnail, linear trend
       removed: corr(left-right mirror) - corr(top-bottom mirror) >= MIRROR_MIN).
   The thresholds are the extremes of the 385 real films (Montgomery, JSRT) and 80 synthetic phantoms,
   rounded outwards: every one of them passes, so every inverted copy of them is still corrected.

Measured by bench/inversion_check.py on the 385 real films (docs/formats.md has the table): no normal film
is corrected, every inverted one is; none of the 1155 turned (90, 180, 270 degrees) and 1540 half (left,
right, top, bottom) normal films is. An inverted film that is ALSO turned 90/270 degrees or cut in half is
left as it is (its layout is that of a turned or half film, which the rule must not touch: it is segmented
inverted, and usually QC-flagged); an inverted film upside down is corrected when its band score still says
so (381 of 385). The synthetic phantoms are more symmetric than any real film: 24 of their 160
quarter-turned normal copies are still called inverted.
Images the rule cannot judge (flat, a score between -0.05 and 0, another layout) are left as they are. DICOM
inputs are never checked: their PhotometricInterpretation says what is white.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

INVERTED_BELOW = -0.05
QC_NOTE = "inverted_input_corrected"
ASPECT = (0.7, 1.45)  # width / height of the images the rule judges
SIDE_MIN = -0.02
SIMILAR_MAX = 2.0
DOWN_MIN = 0.53
MIRROR_MIN = -0.24
WORK_SIDE = 512  # larger images are judged on a copy shrunk to this many pixels a side (INTER_AREA)
_ROWS = (0.30, 0.55)
_MEDIASTINUM = (0.45, 0.55)
_LUNGS = ((0.18, 0.33), (0.67, 0.82))
_DOWN = (0.15, 0.70, 11)  # row windows of the "down the film" check: from, to, how many
_THUMB = 32
_FLAT = 1e-3  # a row or column with a standard deviation below this is padding


def _band(lo: float, hi: float, n: int) -> slice:
    """Fractions -> a slice of at least one pixel."""
    return slice(int(lo * n), max(int(hi * n), int(lo * n) + 1))


def _working_copy(image: np.ndarray) -> np.ndarray:
    """float32 HxW, at most WORK_SIDE a side, uniform padding rows and columns at the edges trimmed."""
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    if max(h, w) > WORK_SIDE:
        scale = WORK_SIDE / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    rows, cols = np.flatnonzero(image.std(axis=1) > _FLAT), np.flatnonzero(image.std(axis=0) > _FLAT)
    if rows.size == 0 or cols.size == 0:
        return image
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _bands(x: np.ndarray, rows: tuple[float, float]) -> tuple[float, float, float, float]:
    """Medians of (mediastinum, left lung field, right lung field, both lung fields) over `rows`."""
    h, w = x.shape
    r = x[_band(*rows, h)]
    left, right = r[:, _band(*_LUNGS[0], w)], r[:, _band(*_LUNGS[1], w)]
    lungs = np.concatenate([left.ravel(), right.ravel()])
    return (float(np.median(r[:, _band(*_MEDIASTINUM, w)])), float(np.median(left)), float(np.median(right)),
            float(np.median(lungs)))


def _range(x: np.ndarray) -> float:
    lo, hi = np.percentile(x, (2, 98))
    return float(hi - lo)


def inversion_score(image: np.ndarray) -> float:
    """Mediastinum minus lung fields (medians) over the 2-98 % intensity range of a HxW image (padding
    trimmed). Positive on normal films, negative on inverted ones, 0.0 for a flat image."""
    x = _working_copy(image)
    return _score(x, _range(x))


def _score(x: np.ndarray, span: float) -> float:
    if span <= 1e-6:
        return 0.0
    mediastinum, _, _, lungs = _bands(x, _ROWS)
    return (mediastinum - lungs) / span


@dataclass(frozen=True)
class Layout:
    """The polarity-free evidence that an image is an upright frontal chest film (module docstring)."""

    aspect: float  # width / height
    side: float  # the weaker lung field's contrast to the mediastinum, over |score|
    similar: float  # |left - right lung field|, over |score|
    down: float  # median contrast of 11 row windows down the film, over |score|
    mirror: float  # corr(left-right mirror) - corr(top-bottom mirror) of the detrended thumbnail

    @property
    def upright(self) -> bool:
        return (ASPECT[0] <= self.aspect <= ASPECT[1] and self.side >= SIDE_MIN
                and self.similar <= SIMILAR_MAX and self.down >= DOWN_MIN and self.mirror >= MIRROR_MIN)


def _mirror(x: np.ndarray) -> float:
    t = cv2.resize(x, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA).astype(np.float64)
    grid = np.mgrid[0:_THUMB, 0:_THUMB] / (_THUMB - 1) - 0.5
    design = np.stack([np.ones(_THUMB * _THUMB), grid[1].ravel(), grid[0].ravel()], 1)
    coef, *_ = np.linalg.lstsq(design, t.ravel(), rcond=None)
    t = t - (design @ coef).reshape(_THUMB, _THUMB)  # an exposure gradient is no asymmetry of the chest
    energy = float((t * t).sum()) + 1e-12
    return float((t * t[:, ::-1]).sum() - (t * t[::-1]).sum()) / energy


def layout(image: np.ndarray) -> Layout:
    """The layout evidence of a HxW image (the same for the image and its inverted copy)."""
    x = _working_copy(image)
    return _layout(x, max(_range(x), 1e-6), np.shape(image))


def _layout(x: np.ndarray, span: float, shape: tuple[int, int]) -> Layout:
    mediastinum, left, right, lungs = _bands(x, _ROWS)
    score = (mediastinum - lungs) / span
    sign, size = (1.0 if score >= 0 else -1.0), max(abs(score), 1e-6)
    side = min((mediastinum - left) * sign, (mediastinum - right) * sign) / span / size
    edges = np.linspace(*_DOWN[:2], _DOWN[2] + 1)
    down = []
    for lo, hi in itertools.pairwise(edges):
        m, _, _, lu = _bands(x, (lo, hi))
        down.append((m - lu) * sign / span)
    return Layout(aspect=shape[1] / shape[0], side=side, similar=abs(left - right) / span / size,
                  down=float(np.median(down)) / size, mirror=_mirror(x))


def looks_inverted(image: np.ndarray) -> bool:
    """True when the HxW float image in [0, 1] is an inverted upright chest film by the rule above."""
    x = _working_copy(image)
    span = _range(x)
    return _score(x, span) < INVERTED_BELOW and _layout(x, span, np.shape(image)).upright


def correct_inversion(image: np.ndarray, image_format: str) -> tuple[np.ndarray, bool]:
    """(image, False), or (1 - image, True) for a PNG/JPEG/TIFF that looks_inverted. DICOM is never
    touched. The one place bulk inference and single-image predict decide this."""
    if image_format == "dicom" or not looks_inverted(image):
        return image, False
    return 1.0 - image, True
