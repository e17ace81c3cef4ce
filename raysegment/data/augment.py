"""Training augmentation on preprocessed uint8 batches (NumPy/OpenCV, usable inside Ray Data map_batches).

Geometry (rotation, scale, shift) is applied identically to image and mask; intensity changes
(brightness, contrast, gamma, noise) and synthetic opacities (data/opacity.py: painted inside the lung
mask, the mask kept) to the image only. Small ranges: X-rays are acquired in a standard
position, so large rotations would teach the model poses it never meets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from raysegment.data.opacity import TRAIN as TRAIN_OPACITIES
from raysegment.data.opacity import paint


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 10.0  # uniform in [-r, r]
    scale: float = 0.10  # zoom factor uniform in [1 - s, 1 + s]
    shift: float = 0.06  # translation, fraction of the side, uniform in [-s, s]
    brightness: float = 0.10  # added, uniform in [-b, b] (image in [0, 1])
    contrast: float = 0.20  # multiplied around the mean, uniform in [1 - c, 1 + c]
    gamma: float = 0.25  # exponent exp(uniform(-g, g))
    noise_std: float = 0.02  # Gaussian noise sigma, uniform in [0, noise_std]
    opacity_p: float = 0.0  # share of images that get a synthetic opacity inside one lung (0: never)
    edge_air_p: float = 0.0  # share of images squeezed sideways with dark air outside the body (0: never)

    def to_dict(self) -> dict:
        return asdict(self)


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: AugmentConfig):
    """uint8 SxS image + uint8 SxS (or CxSxS: one channel per structure) {0,1} mask -> augmented (same
    shapes and dtypes). The random draws do not depend on the channel count."""
    if not config.enabled:
        return image, mask
    size_h, size_w = image.shape
    angle = rng.uniform(-config.rotation_deg, config.rotation_deg)
    zoom = rng.uniform(1 - config.scale, 1 + config.scale)
    matrix = cv2.getRotationMatrix2D((size_w / 2, size_h / 2), angle, zoom)
    matrix[:, 2] += rng.uniform(-config.shift, config.shift, size=2) * (size_w, size_h)
    image = cv2.warpAffine(image, matrix, (size_w, size_h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    if mask.ndim == 3:
        mask = np.stack([_warp_mask(m, matrix) for m in mask])
    else:
        mask = _warp_mask(mask, matrix)

    x = image.astype(np.float32) / 255.0
    # Drawn only when enabled, so a config without them keeps every earlier random draw.
    if config.edge_air_p > 0 and rng.random() < config.edge_air_p:
        x, mask = edge_air(x, mask, rng)
    if config.opacity_p > 0 and rng.random() < config.opacity_p:
        x = paint(x, (mask[0] if mask.ndim == 3 else mask) > 0, rng, TRAIN_OPACITIES)[0]
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
    x = x + rng.uniform(-config.brightness, config.brightness)
    x = np.clip(x, 0.0, 1.0) ** np.exp(rng.uniform(-config.gamma, config.gamma))
    if config.noise_std > 0:
        x = x + rng.normal(0.0, rng.uniform(0, config.noise_std), size=x.shape).astype(np.float32)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), mask


def edge_air(x: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 SxS image in [0, 1] + uint8 mask (SxS or CxSxS) -> the film squeezed sideways towards one
    side, the freed band filled with AIR OUTSIDE THE BODY: about as dark as the lungs, smooth texture, a
    soft skin edge; label 0 there.

    Why: one source's bodies fill the film (JSRT), another's leave dark air beside the arms (Montgomery),
    and a model that never saw that air takes it for a lung (docs/results.md, the reference model). Black
    borders (zoom out) do not teach it: real outside air is dark grey and textured like a lung field.
    """
    size_h, size_w = x.shape
    band = round(rng.uniform(0.06, 0.22) * size_w)
    left = rng.random() < 0.5
    keep = size_w - band
    x0 = band if left else 0
    squeezed = np.zeros_like(x)
    squeezed[:, x0 : x0 + keep] = cv2.resize(x, (keep, size_h), interpolation=cv2.INTER_AREA)

    def squeeze(m):
        out = np.zeros_like(m)
        out[:, x0 : x0 + keep] = cv2.resize(m, (keep, size_h), interpolation=cv2.INTER_NEAREST)
        return out

    mask = np.stack([squeeze(m) for m in mask]) if mask.ndim == 3 else squeeze(mask)
    lungs = (mask[0] if mask.ndim == 3 else mask) > 0
    lung_level = float(x[lungs].mean()) if lungs.any() else float(np.quantile(x, 0.1))
    level = lung_level * rng.uniform(0.4, 1.1)
    cells = int(rng.integers(2, 6))
    texture = cv2.resize(rng.normal(0, 1, (cells, cells)).astype(np.float32), (size_w, size_h),
                         interpolation=cv2.INTER_CUBIC)
    air = np.clip(level + rng.uniform(0.01, 0.06) * texture, 0.0, 1.0)
    # The skin edge: a ramp of a few pixels from the body (the squeezed film) into the air.
    cols = np.arange(size_w, dtype=np.float32)
    edge = float(x0 if left else x0 + keep)
    ramp = max(rng.uniform(1.0, 0.02 * size_w), 1.0)
    inside = (cols - edge) / ramp if left else (edge - cols) / ramp
    w = np.clip(inside, 0.0, 1.0)[None, :]
    return (w * squeezed + (1 - w) * air).astype(np.float32), mask


def _warp_mask(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """One SxS mask channel, nearest neighbour: labels stay {0, 1}."""
    size_h, size_w = mask.shape
    return cv2.warpAffine(mask, matrix, (size_w, size_h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT)


def augment_batch(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, config: AugmentConfig):
    """uint8 (N, S, S) images and masks -> augmented copies; one random draw per image."""
    out_images, out_masks = np.empty_like(images), np.empty_like(masks)
    for i in range(len(images)):
        out_images[i], out_masks[i] = augment_pair(images[i], masks[i], rng, config)
    return out_images, out_masks
