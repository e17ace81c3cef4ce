"""Preprocessing shared by training and inference: intensity normalization, resize to the model size,
and the inverse mapping of a model-size mask back to the original image.

The model input contract is a uint8 SxS image (normalized, resized): compact to move between Ray stages
and to cache, and exactly the same bytes in training, bulk inference and single-image predict.
`to_tensor` turns a batch of them into the float model input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

RESIZE_MODES = ("stretch", "letterbox")
NORMALIZATIONS = ("unit", "percentile", "equalize")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an X-ray becomes model input; saved with the model so inference does exactly the same."""

    size: int = 256  # model input side in pixels (square)
    resize: str = "stretch"  # "stretch" (the seed) or "letterbox" (keep aspect ratio, pad with 0)
    # "unit": decoded [0, 1] as is (the seed's /255); "percentile": robust stretch; "equalize": histogram
    # equalization (a washed-out or dark film from another site looks like every other film)
    normalize: str = "percentile"
    low_percentile: float = 1.0  # percentile normalization maps [p_low, p_high] to [0, 1]
    high_percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if not isinstance(self.size, int) or self.size < 16:
            raise ValueError(f"size must be an integer >= 16, got {self.size!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("need 0 <= low_percentile < high_percentile <= 100")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the SxS model input (for mapping masks back)."""

    height: int  # original size
    width: int
    top: int  # offset and size of the resized image inside the SxS canvas
    left: int
    inner_height: int
    inner_width: int


def geometry(height: int, width: int, config: PreprocessConfig) -> Geometry:
    size = config.size
    if config.resize == "stretch":
        return Geometry(height, width, 0, 0, size, size)
    scale = size / max(height, width)
    ih, iw = max(1, round(height * scale)), max(1, round(width * scale))
    return Geometry(height, width, (size - ih) // 2, (size - iw) // 2, ih, iw)


def normalize(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """float32 HxW in [0, 1] -> float32 HxW in [0, 1] (percentile stretch, histogram equalization or
    identity)."""
    if config.normalize == "unit":
        return image.astype(np.float32, copy=False)
    if config.normalize == "equalize":
        return equalize(image)
    lo, hi = np.percentile(image, (config.low_percentile, config.high_percentile))
    if hi - lo < 1e-6:  # a flat image: nothing to stretch
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def equalize(image: np.ndarray, levels: int = 1024) -> np.ndarray:
    """float32 HxW in [0, 1] -> float32 HxW in [0, 1]: histogram equalization over `levels` bins (finer
    than 8 bits, so a 12-bit film keeps its grey levels apart), each pixel mapped to the share of pixels
    at or below its bin, the lowest bin to 0. A flat image becomes zeros."""
    bins = np.clip((image * (levels - 1)).round().astype(np.int32), 0, levels - 1)
    counts = np.bincount(bins.ravel(), minlength=levels).astype(np.float64)
    cdf = np.cumsum(counts)
    low = cdf[bins.min()]
    if cdf[-1] - low <= 0:
        return np.zeros_like(image, dtype=np.float32)
    lut = np.clip((cdf - low) / (cdf[-1] - low), 0.0, 1.0).astype(np.float32)
    return lut[bins]


def _place(resized: np.ndarray, geo: Geometry, size: int) -> np.ndarray:
    if geo.inner_height == size and geo.inner_width == size:
        return resized
    canvas = np.zeros((size, size), dtype=resized.dtype)
    canvas[geo.top : geo.top + geo.inner_height, geo.left : geo.left + geo.inner_width] = resized
    return canvas


def preprocess_image(image: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """float32 HxW in [0, 1] -> (uint8 SxS model input, Geometry).

    Area interpolation when shrinking (X-rays are usually far larger than the model input): it averages
    instead of aliasing fine rib edges.
    """
    geo = geometry(image.shape[0], image.shape[1], config)
    # Resize first, then normalize: percentiles of the small image are as good and 50x cheaper.
    shrinking = geo.inner_height < image.shape[0] or geo.inner_width < image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image.astype(np.float32, copy=False), (geo.inner_width, geo.inner_height),
                         interpolation=interp)
    normalized = normalize(resized, config)
    as_uint8 = np.round(normalized * 255.0).astype(np.uint8)
    return _place(as_uint8, geo, config.size), geo


def preprocess_mask(mask: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """bool HxW -> uint8 SxS in {0, 1}, aligned with `preprocess_image` of the same image."""
    geo = geometry(mask.shape[0], mask.shape[1], config)
    resized = cv2.resize(mask.astype(np.float32), (geo.inner_width, geo.inner_height),
                         interpolation=cv2.INTER_AREA)
    return _place((resized > 0.5).astype(np.uint8), geo, config.size)


def restore_probability(prob: np.ndarray, geo: Geometry) -> np.ndarray:
    """float32 SxS probability map -> float32 HxW at the original resolution (inverse of preprocess)."""
    inner = prob[geo.top : geo.top + geo.inner_height, geo.left : geo.left + geo.inner_width]
    return cv2.resize(inner.astype(np.float32, copy=False), (geo.width, geo.height),
                      interpolation=cv2.INTER_LINEAR)


def to_tensor(batch: np.ndarray):
    """uint8 (N, S, S) -> float32 torch tensor (N, 1, S, S) in [0, 1]: the model input."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).unsqueeze(1).float().div_(255.0)
