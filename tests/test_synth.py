"""Synthetic phantoms: determinism, anatomy sanity, difficulty, and the files write_dataset lays out."""

import argparse
import os

import cv2
import numpy as np
import pytest

from raysegment.cli.synth import add_parser
from raysegment.data.synth import Phantom, make_phantom, make_phantom_16bit, write_dataset


@pytest.fixture(scope="module")
def batch() -> list[Phantom]:
    return [make_phantom(seed=3, index=i) for i in range(20)]


def test_deterministic_per_image():
    a, b = make_phantom(5, 2, 128), make_phantom(5, 2, 128)
    for x, y in ((a.image, b.image), (a.left_mask, b.left_mask), (a.right_mask, b.right_mask)):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.image, make_phantom(5, 3, 128).image)
    assert not np.array_equal(a.image, make_phantom(6, 2, 128).image)


@pytest.mark.parametrize("size", [96, 512])
def test_shapes_and_dtypes(size):
    p = make_phantom(0, 0, size)
    assert p.image.shape == p.left_mask.shape == p.right_mask.shape == p.mask.shape == (size, size)
    assert p.image.dtype == np.uint8
    assert p.left_mask.dtype == p.right_mask.dtype == p.mask.dtype == bool
    assert np.array_equal(p.mask, p.left_mask | p.right_mask)


def test_lung_fraction_realistic(batch):
    frac = np.array([p.mask.mean() for p in batch])
    assert frac.min() > 0.10 and frac.max() < 0.40, frac


def test_masks_disjoint_and_on_the_right_side(batch):
    w = batch[0].image.shape[1]
    for p in batch:
        assert not (p.left_mask & p.right_mask).any()
        # Radiographs are viewed as if facing the patient: their right lung is on the image left.
        assert p.right_mask.nonzero()[1].mean() < w / 2 < p.left_mask.nonzero()[1].mean()


def test_lungs_darker_than_surroundings(batch):
    ring = np.ones((41, 41), np.uint8)
    for p in batch:
        around = cv2.dilate(p.mask.astype(np.uint8), ring).astype(bool) & ~p.mask
        assert p.image[p.mask].mean() + 10 < p.image[around].mean()


def _dice_per_threshold(p: Phantom, thresholds: np.ndarray) -> np.ndarray:
    """Dice of (image < t) against the lung mask for every t, via cumulative histograms."""
    inside = np.concatenate([[0], np.cumsum(np.bincount(p.image[p.mask], minlength=256))])
    outside = np.concatenate([[0], np.cumsum(np.bincount(p.image[~p.mask], minlength=256))])
    tp, fp = inside[thresholds], outside[thresholds]
    return 2 * tp / (tp + fp + p.mask.sum())


def test_global_threshold_is_not_enough(batch):
    # The task must need a model: no single intensity cut, even one tuned per image, segments well.
    thresholds = np.linspace(0, 256, 64).astype(int)
    dice = np.stack([_dice_per_threshold(p, thresholds) for p in batch[:16]])  # (images, thresholds)
    best_global = dice.mean(0).max()
    oracle = dice.max(1).mean()
    assert best_global < 0.9, best_global
    assert oracle < 0.9, oracle


def test_write_dataset_generic(tmp_path):
    ids = write_dataset(str(tmp_path), n=3, size=64, seed=1)
    assert ids == ["SYN_0000_0", "SYN_0001_1", "SYN_0002_0"]
    for sub in ("cxr", "masks"):
        assert sorted(os.listdir(tmp_path / sub)) == [f"{i}.png" for i in ids]
    for i, name in enumerate(ids):
        p = make_phantom(1, i, 64)
        img = cv2.imread(str(tmp_path / "cxr" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == mask.dtype == np.uint8 and np.array_equal(img, p.image)
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask == 255, p.mask)


def test_write_dataset_montgomery(tmp_path):
    ids = write_dataset(str(tmp_path), n=3, size=64, seed=1, layout="montgomery")
    assert ids == ["MCUCXR_0000_0", "MCUCXR_0001_1", "MCUCXR_0002_0"]
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        assert sorted(os.listdir(tmp_path / sub)) == [f"{i}.png" for i in ids]
    for i, name in enumerate(ids):
        left = cv2.imread(str(tmp_path / "ManualMask/leftMask" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        right = cv2.imread(str(tmp_path / "ManualMask/rightMask" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(left)) <= {0, 255} and set(np.unique(right)) <= {0, 255}
        assert np.array_equal((left == 255) | (right == 255), make_phantom(1, i, 64).mask)
    # Image i does not depend on how many were written.
    other = write_dataset(str(tmp_path / "more"), n=4, size=64, seed=1, layout="montgomery")
    a = cv2.imread(str(tmp_path / "CXR_png" / f"{ids[2]}.png"))
    b = cv2.imread(str(tmp_path / "more" / "CXR_png" / f"{other[2]}.png"))
    assert np.array_equal(a, b)


def test_write_dataset_rejects_unknown_layout(tmp_path):
    expected = r"^unknown layout 'nih': expected 'montgomery', 'generic' or 'structures'$"
    with pytest.raises(ValueError, match=expected):
        write_dataset(str(tmp_path), n=1, size=32, layout="nih")


def test_16bit_variant():
    img, mask = make_phantom_16bit(2, 0, 128)
    p = make_phantom(2, 0, 128)
    assert img.dtype == np.uint16 and img.shape == (128, 128)
    assert mask.dtype == bool and np.array_equal(mask, p.mask)
    assert int(img.max()) - int(img.min()) > 255 * 16 and len(np.unique(img)) > 256  # more than 8 bits used
    # Same picture as the 8-bit phantom, at finer quantization.
    assert np.abs(img / 65535 - p.image / 255).max() < 2 / 255


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--n", "2", "--size", "32", "--layout", "montgomery", "--out",
                              str(tmp_path)])
    assert args.func(args) == 0
    assert "wrote 2 phantoms (montgomery)" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "CXR_png")) == 2
