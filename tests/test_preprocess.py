import numpy as np
import pytest

from raysegment.data.augment import AugmentConfig, augment_batch
from raysegment.data.preprocess import (
    PreprocessConfig,
    preprocess_image,
    preprocess_mask,
    restore_probability,
    to_tensor,
)


def test_stretch_and_restore_round_trip():
    cfg = PreprocessConfig(size=64, resize="stretch", normalize="unit")
    mask = np.zeros((120, 90), bool)
    mask[20:100, 10:40] = True
    small = preprocess_mask(mask, cfg)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    _, geo = preprocess_image(mask.astype(np.float32), cfg)
    back = restore_probability(small.astype(np.float32), geo) > 0.5
    assert back.shape == mask.shape
    assert (back == mask).mean() > 0.97


def test_letterbox_keeps_aspect_and_pads():
    cfg = PreprocessConfig(size=64, resize="letterbox", normalize="unit")
    image = np.ones((100, 50), np.float32)
    out, geo = preprocess_image(image, cfg)
    assert (geo.inner_height, geo.inner_width) == (64, 32)
    assert out[:, :16].max() == 0 and out[:, 16:48].min() == 255  # padded left/right, image centred
    restored = restore_probability(out.astype(np.float32) / 255, geo)
    assert restored.shape == (100, 50) and restored.min() > 0.99


def test_percentile_normalization_is_exposure_invariant():
    rng = np.random.default_rng(0)
    image = rng.random((80, 80)).astype(np.float32)
    cfg = PreprocessConfig(size=32, normalize="percentile")
    a, _ = preprocess_image(image * 0.3 + 0.1, cfg)  # under-exposed copy
    b, _ = preprocess_image(image, cfg)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_invalid_config():
    with pytest.raises(ValueError, match="resize"):
        PreprocessConfig(resize="crop")


def test_to_tensor():
    t = to_tensor(np.full((3, 8, 8), 255, np.uint8))
    assert tuple(t.shape) == (3, 1, 8, 8) and float(t.max()) == 1.0


def test_augmentation_moves_image_and_mask_together():
    size = 64
    image = np.zeros((1, size, size), np.uint8)
    image[0, 20:40, 24:44] = 255
    mask = (image > 0).astype(np.uint8)
    cfg = AugmentConfig(brightness=0, contrast=0, gamma=0, noise_std=0, rotation_deg=15, shift=0.1)
    out_i, out_m = augment_batch(image, mask, np.random.default_rng(3), cfg)
    assert out_i.dtype == np.uint8 and out_m.dtype == np.uint8
    assert not np.array_equal(out_m, mask)  # geometry changed
    agreement = ((out_i[0] > 127) == (out_m[0] > 0)).mean()
    assert agreement > 0.98  # ...identically for image and mask
    same = augment_batch(image, mask, np.random.default_rng(3), cfg)
    assert np.array_equal(same[0], out_i)  # seeded: reproducible
