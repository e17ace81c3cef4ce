"""The EVALUATION opacity generator: synthetic opacities to measure robustness with, deliberately unlike
the training augmentation's (data/opacity.py), so a robustness figure never scores what the model saw.

Other textures, other shapes, other ranges and its own seeds:
- patchy (multifocal) consolidation: thresholded fractal noise inside one lung, grainy, not blobs;
- a fluid level: a straight (slightly tilted) upper edge, no meniscus, a short ramp;
- strength 0.55-0.95 of the soft-tissue level, with speckle instead of smooth mottling.

`opacify(image, lungs, seed, min_cover)` draws until the opacity covers at least `min_cover` of one lung
(the acceptance figure asks for >= 30 %), and says how much it covered.
"""

from __future__ import annotations

import cv2
import numpy as np

from raysegment.data.opacity import lung_components, soft_tissue_level

SEED_OFFSET = 1_000_003  # evaluation seeds never coincide with the training augmentation's per-image seeds


def _fractal(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Sum of upsampled random grids of doubling resolution, normalized to [0, 1]."""
    h, w = shape
    field = np.zeros(shape, np.float32)
    for k in range(octaves):
        cells = 3 * 2**k
        grid = rng.random((cells, cells)).astype(np.float32)
        field += cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR) / 2**k
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo) if hi > lo else field


def patchy_field(lung: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = _fractal(lung.shape, rng)
    cut = float(np.quantile(noise[lung], rng.uniform(0.2, 0.65)))  # keep the top 35-80 % of the lung
    return np.clip((noise - cut) / 0.08, 0.0, 1.0).astype(np.float32)


def fluid_level_field(lung: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(lung)
    top, base = ys.min(), ys.max()
    h, w = lung.shape
    level = base - rng.uniform(0.3, 0.7) * (base - top + 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = np.tan(np.radians(rng.uniform(-4, 4))) * (xx - xs.mean())
    return np.clip((yy - level - tilt) / 1.5, 0.0, 1.0).astype(np.float32)


def paint_eval(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """float32 HxW in [0, 1] + bool lung mask -> (opacified image, share of the chosen lung covered)."""
    if not lungs.any():
        return image, 0.0
    parts = lung_components(lungs)
    lung = parts[int(rng.integers(len(parts)))]
    field = patchy_field(lung, rng) if rng.random() < 0.5 else fluid_level_field(lung, rng)
    speckle = rng.normal(1.0, 0.12, size=lung.shape).astype(np.float32)
    field = np.clip(field * speckle, 0.0, 1.0) * lung
    alpha = float(rng.uniform(0.55, 0.95)) * field
    target = soft_tissue_level(image, lungs)
    out = np.clip(image + alpha * np.maximum(target - image, 0.0), 0.0, 1.0).astype(np.float32)
    return out, float((field >= 0.5).sum() / max(lung.sum(), 1))


def opacify(image: np.ndarray, lungs: np.ndarray, seed: int, min_cover: float = 0.3, tries: int = 20
            ) -> tuple[np.ndarray, float]:
    """The first draw (of `tries`, seeded by `seed`) covering at least `min_cover` of one lung; the best
    draw when none does (its cover says so)."""
    rng = np.random.default_rng(SEED_OFFSET + seed)
    best = (image, 0.0)
    for _ in range(tries):
        out, cover = paint_eval(image, lungs, rng)
        if cover >= min_cover:
            return out, cover
        best = max(best, (out, cover), key=lambda t: t[1])
    return best
