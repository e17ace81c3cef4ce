"""Synthetic opacities (data/opacity.py for training, evaluation/opacities.py for measuring): painted inside
one lung only, the lung label kept, brighter than before; augmentation without them is unchanged."""

import numpy as np
import pytest

from raysegment.data.augment import AugmentConfig, augment_pair
from raysegment.data.opacity import paint
from raysegment.evaluation.opacities import opacify


def _film():
    """A dark-lunged phantom: two lung rectangles (0.2) in a bright body (0.8), 128 x 160."""
    image = np.full((128, 160), 0.8, np.float32)
    lungs = np.zeros((128, 160), bool)
    lungs[20:110, 15:70] = True
    lungs[20:110, 90:150] = True
    image[lungs] = 0.2
    return image, lungs


@pytest.mark.parametrize("seed", range(6))
def test_training_opacity_stays_inside_one_lung_and_brightens_it(seed):
    image, lungs = _film()
    out, cover = paint(image, lungs, np.random.default_rng(seed))
    changed = np.abs(out - image) > 1e-6
    assert not changed[~lungs].any()  # nothing outside the lungs moves
    left, right = changed[:, :80].any(), changed[:, 80:].any()
    assert left != right  # exactly one lung
    assert (out >= image - 1e-6).all() and (out - image).max() > 0.3  # brighter, towards soft tissue
    assert 0 < cover <= 1


@pytest.mark.parametrize("seed", range(4))
def test_evaluation_opacity_covers_at_least_the_asked_share(seed):
    image, lungs = _film()
    out, cover = opacify(image, lungs, seed, min_cover=0.3)
    assert cover >= 0.3
    lung = lungs[:, :80] if np.abs(out - image)[:, :80].max() > 0 else lungs[:, 80:]
    side = (out - image)[:, :80] if np.abs(out - image)[:, :80].max() > 0 else (out - image)[:, 80:]
    assert (side[lung] > 0.1).mean() >= 0.25  # a real share of that lung is visibly opaque
    assert not (np.abs(out - image)[~lungs] > 1e-6).any()


def test_the_two_generators_differ_for_the_same_seed():
    image, lungs = _film()
    a, _ = paint(image, lungs, np.random.default_rng(0))
    b, _ = opacify(image, lungs, 0)
    assert not np.allclose(a, b)


def test_augmentation_paints_opacities_only_when_asked_and_keeps_the_mask():
    image, lungs = _film()
    u8, mask = (image * 255).astype(np.uint8), lungs.astype(np.uint8)
    still = AugmentConfig(rotation_deg=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0, noise_std=0)
    off, off_mask = augment_pair(u8, mask, np.random.default_rng(3), still)
    assert np.array_equal(off, u8) and np.array_equal(off_mask, mask)
    on = AugmentConfig(**{**still.to_dict(), "opacity_p": 1.0})
    painted, painted_mask = augment_pair(u8, mask, np.random.default_rng(3), on)
    assert np.array_equal(painted_mask, mask)  # sick lung is still lung
    assert painted[lungs].mean() > u8[lungs].mean() + 10 and np.array_equal(painted[~lungs], u8[~lungs])


@pytest.mark.parametrize("seed", range(4))
def test_edge_air_squeezes_the_film_and_adds_dark_unlabelled_air_at_one_side(seed):
    """Air outside the body (augment.edge_air_p): a dark band at one side, as dark as the lungs give or
    take, no structure labelled there; the lungs are squeezed with the film, not cut."""
    from raysegment.data.augment import edge_air

    image, lungs = _film()
    mask = np.stack([lungs, lungs]).astype(np.uint8)  # two channels: every one is squeezed alike
    out, squeezed = edge_air(image, mask, np.random.default_rng(seed))
    assert out.shape == image.shape and squeezed.shape == mask.shape
    body = out > 0.5
    cols = np.nonzero(body.any(axis=0))[0]
    band = np.r_[0 : cols.min()] if cols.min() > 0 else np.r_[cols.max() + 1 : image.shape[1]]
    assert len(band) >= 0.05 * image.shape[1]  # a band of air at one side...
    assert not squeezed[:, :, band].any()  # ...labelled as nothing
    assert 0.0 < out[:, band].mean() < 0.35  # dark like the lungs (0.2), not black, not the body (0.8)
    assert squeezed.sum() > 0.7 * mask.sum()  # the lungs are squeezed, not cut away
    assert (squeezed[0] == squeezed[1]).all()
