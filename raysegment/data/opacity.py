"""Synthetic lung opacities painted inside the lung fields, the lung label kept: sick lung is still lung.

A model trained on clean films learns "lung = dark" and segments dense consolidation as "not lung" with
high confidence. Painting opacities inside the expert lung mask, with the mask unchanged, teaches it that
a white lung is still lung. Two families, as films show them:

- consolidation-like: a few smooth blobs (anisotropic Gaussians at random points inside one lung, their
  union thresholded softly), mottled by a low-frequency texture, raising the film towards the brightness
  of soft tissue;
- effusion-like: a layer at the base of one lung, densest at the costophrenic angle, with a meniscus
  (curved, higher laterally) upper edge.

The brightness a region is pushed towards is the film's own soft tissue level (a high percentile of the
pixels outside the lungs), so the opacity looks like the film's mediastinum, whatever its exposure.

`TRAIN` is the training augmentation's generator (data/augment.py); evaluation uses other textures, seeds
and parameter ranges (evaluation/opacities.py), so a robustness figure never scores the opacities the
model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class OpacityParams:
    """Ranges of one generator; each draw is uniform in its range."""

    consolidation_share: float = 0.6  # share of draws that are consolidation (else effusion)
    blobs: tuple[int, int] = (1, 4)  # consolidation: Gaussian blobs per opacity
    blob_sigma: tuple[float, float] = (0.06, 0.18)  # blob size, fraction of the lung's bounding box side
    effusion_height: tuple[float, float] = (0.15, 0.55)  # fraction of the lung's height, from its base
    strength: tuple[float, float] = (0.5, 1.0)  # 1: the region reaches the soft-tissue level
    texture: float = 0.25  # mottling amplitude (0: flat)
    texture_scale: float = 0.05  # mottling grain, fraction of the image side


TRAIN = OpacityParams()


def soft_tissue_level(image: np.ndarray, lungs: np.ndarray) -> float:
    """The 90th percentile of the film outside the lungs (mediastinum, diaphragm): what dense tissue looks
    like on this film. Falls back to the whole film when the lungs cover everything."""
    outside = image[~lungs] if (~lungs).any() else image.ravel()
    return float(np.percentile(outside, 90))


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, upsampled bicubically."""
    h, w = shape
    cells = max(2, round(1.0 / max(scale, 1e-3)))
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo) if hi > lo else np.zeros(shape, np.float32)


def lung_components(lungs: np.ndarray) -> list[np.ndarray]:
    """The two largest 8-connected parts of the lung mask (one per lung), largest first."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(lungs.astype(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
    return [labels == k for k in order]


def consolidation_field(lung: np.ndarray, rng: np.random.Generator, p: OpacityParams) -> np.ndarray:
    """float32 HxW in [0, 1]: blobs centred on random pixels of `lung` (one lung's bool mask)."""
    ys, xs = np.nonzero(lung)
    h, w = lung.shape
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(p.blobs[0], p.blobs[1] + 1))):
        i = int(rng.integers(len(ys)))
        sy, sx = (rng.uniform(*p.blob_sigma, size=2) * side).astype(np.float32)
        blob = np.exp(-0.5 * (((yy - ys[i]) / sy) ** 2 + ((xx - xs[i]) / sx) ** 2))
        field = np.maximum(field, blob)
    return np.clip(field * 1.6, 0.0, 1.0)  # flat-topped: dense in the middle, fading at the edge


def effusion_field(lung: np.ndarray, rng: np.random.Generator, p: OpacityParams) -> np.ndarray:
    """float32 HxW in [0, 1]: a basal layer of `lung`, a meniscus rising towards the lateral side."""
    ys, xs = np.nonzero(lung)
    h, w = lung.shape
    top, base = ys.min(), ys.max()
    left, right = xs.min(), xs.max()
    level = base - rng.uniform(*p.effusion_height) * (base - top + 1)
    lateral_is_left = (left + right) / 2 < w / 2  # the lung on the image left has its lateral side left
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    across = (xx - left) / max(right - left, 1)
    rise = (1.0 - across if lateral_is_left else across) ** 2 * 0.25 * (base - top + 1)  # the meniscus
    edge = level - rise
    ramp = max(2.0, 0.03 * (base - top + 1))
    return np.clip((yy - edge) / ramp, 0.0, 1.0).astype(np.float32)


def paint(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, p: OpacityParams = TRAIN
          ) -> tuple[np.ndarray, float]:
    """float32 HxW image in [0, 1] + bool HxW lung mask -> (the image with one opacity inside one lung,
    the share of that lung the opacity covers at >= half strength). The mask itself is unchanged: the
    opacity is lung. An empty mask returns the image unchanged and 0."""
    parts = lung_components(lungs) if lungs.any() else []
    if not parts:
        return image, 0.0
    lung = parts[int(rng.integers(len(parts)))]
    field = (consolidation_field(lung, rng, p) if rng.random() < p.consolidation_share
             else effusion_field(lung, rng, p))
    if p.texture > 0:
        field = field * (1.0 - p.texture * _smooth_noise(lung.shape, p.texture_scale, rng))
    field = field * lung  # inside the lung only: the mediastinum and the other lung stay as they were
    target = soft_tissue_level(image, lungs)
    strength = float(rng.uniform(*p.strength))
    alpha = (strength * field).astype(np.float32)
    out = image + alpha * np.maximum(target - image, 0.0)
    covered = float((field >= 0.5).sum() / max(lung.sum(), 1))
    return np.clip(out, 0.0, 1.0).astype(np.float32), covered
