"""Acquisition shifts of a labelled X-ray: what another site, scanner or a damaged export does to a film.

Each shift maps (float32 HxW image in [0, 1], bool HxW expert mask) -> (image', mask'); geometric shifts
move the mask with the image, the others keep it (the lungs are where they were, whatever the film shows).

- `ISSUE_SHIFTS`: the fixed list QC is measured on (issue #12): bench/qc_quality.py scores test images
  and other sites' films under each of them.
- `random_shift`: the same families with random strengths, for fitting the QC calibration on shifted
  copies of the validation split (`raysegment calibrate`): the fit never sees the exact measured shifts.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Shift = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def rotate(image: np.ndarray, mask: np.ndarray, quarter_turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by 90 degrees x quarter_turns (counter-clockwise)."""
    return (np.ascontiguousarray(np.rot90(image, quarter_turns)),
            np.ascontiguousarray(np.rot90(mask, quarter_turns)))


def rotate_deg(image: np.ndarray, mask: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by any angle about the centre, black outside the film."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return (cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR),
            cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST).astype(bool))


def crop_center(image: np.ndarray, mask: np.ndarray, area: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the central `area` fraction of the film (same aspect ratio)."""
    h, w = image.shape
    side = np.sqrt(area)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw].copy(), mask[top : top + ch, left : left + cw].copy()


def zoom(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """factor < 1: shrink the film into a black border (wider field of view); > 1: magnify the centre."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0, factor)
    return (cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT),
            cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST).astype(bool))


def gamma(image: np.ndarray, mask: np.ndarray, g: float) -> tuple[np.ndarray, np.ndarray]:
    return np.power(np.clip(image, 0, 1), g).astype(np.float32), mask


def contrast(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale deviations from the mean intensity by `factor`."""
    mean = float(image.mean())
    return np.clip(mean + factor * (image - mean), 0, 1).astype(np.float32), mask


def noise(image: np.ndarray, mask: np.ndarray, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Additive Gaussian noise of `sigma` on the [0, 1] scale (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 1).astype(np.float32), mask


def blur(image: np.ndarray, mask: np.ndarray, sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma_px), mask


def white_block(image: np.ndarray, mask: np.ndarray, area: float = 0.25, row: float = 0.25,
                col: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A white rectangle (half the height x half the width for area 0.25) with its top-left corner at
    (row, col) x (H, W): a marker, a cast, an implant. The expert mask is unchanged."""
    h, w = image.shape
    side = np.sqrt(area)
    bh, bw = round(h * side), round(w * side)
    top, left = round(h * row), round(w * col)
    out = image.copy()
    out[top : top + bh, left : left + bw] = 1.0
    return out, mask


def half_cut(image: np.ndarray, mask: np.ndarray, keep: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """Cut one half of the film away (the kept half is the whole new image)."""
    w = image.shape[1]
    cols = slice(0, w // 2) if keep == "left" else slice(w - w // 2, w)
    return image[:, cols].copy(), mask[:, cols].copy()


def invert(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An inverted export (white air), with no inversion correction."""
    return (1.0 - image).astype(np.float32), mask


ISSUE_SHIFTS: dict[str, Shift] = {
    "rotate 90": lambda i, m: rotate(i, m, 1),
    "rotate 180": lambda i, m: rotate(i, m, 2),
    "crop centre 50%": lambda i, m: crop_center(i, m, 0.5),
    "zoom out 0.6": lambda i, m: zoom(i, m, 0.6),
    "gamma 0.4": lambda i, m: gamma(i, m, 0.4),
    "gamma 2.5": lambda i, m: gamma(i, m, 2.5),
    "contrast x0.25": lambda i, m: contrast(i, m, 0.25),
    "noise 0.1": lambda i, m: noise(i, m, 0.1),
    "blur 4px": lambda i, m: blur(i, m, 4.0),
    "white block 25%": lambda i, m: white_block(i, m, 0.25),
    "half cut": lambda i, m: half_cut(i, m, "left"),
    "inverted": invert,
}


def random_shift(rng: np.random.Generator) -> tuple[str, Shift]:
    """One shift of a random family with a random strength (for fitting): (description, function)."""
    family = rng.integers(12)
    if family == 0:
        deg = float(rng.uniform(20, 340))
        return f"rotate {deg:.0f}", lambda i, m: rotate_deg(i, m, deg)
    if family == 1:
        area = float(rng.uniform(0.3, 0.9))
        return f"crop {area:.2f}", lambda i, m: crop_center(i, m, area)
    if family == 2:
        f = float(rng.uniform(0.4, 1.4))
        return f"zoom {f:.2f}", lambda i, m: zoom(i, m, f)
    if family == 3:
        g = float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
        return f"gamma {g:.2f}", lambda i, m: gamma(i, m, g)
    if family == 4:
        c = float(rng.uniform(0.1, 0.6))
        return f"contrast {c:.2f}", lambda i, m: contrast(i, m, c)
    if family == 5:
        s, seed = float(rng.uniform(0.03, 0.25)), int(rng.integers(1 << 30))
        return f"noise {s:.2f}", lambda i, m: noise(i, m, s, seed)
    if family == 6:
        s = float(rng.uniform(1.5, 10.0))
        return f"blur {s:.1f}", lambda i, m: blur(i, m, s)
    if family == 7:
        a, r, c = float(rng.uniform(0.05, 0.35)), float(rng.uniform(0, 0.6)), float(rng.uniform(0, 0.6))
        return f"block {a:.2f}", lambda i, m: white_block(i, m, a, r, c)
    if family == 8:
        keep = "left" if rng.random() < 0.5 else "right"
        return f"half cut {keep}", lambda i, m: half_cut(i, m, keep)
    if family == 9:
        return "inverted", invert
    if family == 10:
        deg = float(rng.uniform(-15, 15))
        return f"tilt {deg:.0f}", lambda i, m: rotate_deg(i, m, deg)
    return "none", lambda i, m: (i, m)
