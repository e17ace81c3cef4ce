"""Phantoms' heart and clavicle masks, the `structures` layout, and that adding them changed no image."""

import hashlib

import cv2
import numpy as np
import pytest

from raysegment.data.datasets import discover
from raysegment.data.structures import STRUCTURES
from raysegment.data.synth import STRUCTURE_FOLDERS, Phantom, make_phantom, write_dataset

SIZE = 256


@pytest.fixture(scope="module")
def batch() -> list[Phantom]:
    return [make_phantom(seed=3, index=i, size=SIZE) for i in range(24)]


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# sha256 prefixes of (image, left lung, right lung) recorded BEFORE the heart and clavicle masks were added:
# the new masks must not change a single random draw (training data, QC calibration and figures rest on them).
@pytest.mark.parametrize("seed, index, size, image, left, right", [
    (0, 0, 128, "c97ffc0ed82322cc", "89d995b344edf304", "5165c1a1c7a31f25"),
    (3, 5, 96, "4011e53825b8316d", "dfe0b65efd8cc75b", "ffa4b263675ab92c"),
    (7, 1, 256, "054e48818137fbb4", "bc5c47188b37f4b7", "84391b6b43765e27"),
])
def test_images_and_lung_masks_unchanged(seed, index, size, image, left, right):
    p = make_phantom(seed, index, size)
    assert (_sha(p.image), _sha(p.left_mask), _sha(p.right_mask)) == (image, left, right)


def test_structure_masks_deterministic_and_shaped():
    a, b = make_phantom(5, 2, 128), make_phantom(5, 2, 128)
    for name, m in a.structure_masks().items():
        assert m.dtype == bool and m.shape == (128, 128), name
        assert np.array_equal(m, b.structure_masks()[name]), name
    assert np.array_equal(a.clavicles, a.left_clavicle_mask | a.right_clavicle_mask)
    other = make_phantom(5, 3, 128)
    assert not np.array_equal(a.heart_mask, other.heart_mask)
    assert not np.array_equal(a.clavicles, other.clavicles)


def test_folders_are_the_registry_parts():
    # Every part folder a structure is read from (data/structures.py) is written, and nothing else.
    assert set(STRUCTURE_FOLDERS) == {part for s in STRUCTURES.values() for part in s.parts}


def test_heart_between_and_below_the_lungs_never_in_them(batch):
    for p in batch:
        heart = p.heart_mask
        assert 0.03 < heart.mean() < 0.12
        assert not (heart & p.mask).any()  # lung masks exclude the heart, as expert masks do
        assert _components(heart) == 1
        ys, xs = heart.nonzero()
        # Between the lungs: the centroid lies between theirs, and more than half of it is left of the midline
        # (patient's left = image right), as a heart is.
        assert p.right_mask.nonzero()[1].mean() < xs.mean() < p.left_mask.nonzero()[1].mean()
        assert (xs > SIZE / 2).mean() > 0.5
        # Low: its centroid in the lower half of the lung fields' height.
        rows = p.mask.any(axis=1).nonzero()[0]
        mid = (rows[0] + rows[-1]) / 2
        assert ys.mean() > mid
        # Where the image shows it: the heart shadow is far brighter than the lungs.
        assert p.image[heart].mean() > p.image[p.mask].mean() + 30


def test_clavicles_one_each_side_in_the_upper_third(batch):
    for p in batch:
        for mask, on_image_left in ((p.right_clavicle_mask, True), (p.left_clavicle_mask, False)):
            assert _components(mask) == 1
            ys, xs = mask.nonzero()
            assert ys.max() < SIZE / 3
            assert (xs.mean() < SIZE / 2) == on_image_left
            # More than a sliver: at least 6 px thick at 256 px (the thickest point of a ~8 px band).
            assert 2 * cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).max() >= 6
        assert not (p.left_clavicle_mask & p.right_clavicle_mask).any()
        # Clavicles overlap the lungs' apices in most films, as in SCR: not tested either way here.


def test_clavicle_masks_are_where_the_image_shows_them(batch, monkeypatch):
    # Render each phantom again with the clavicles left out of the bones: the pixels that change are the
    # clavicles the image shows, and they must be (nearly) the mask.
    from raysegment.data import synth

    original = synth._ribs

    def without_clavicles(rng, res, width):
        bones, clavicles, thickness = original(rng, res, width)
        drawn = np.zeros_like(bones)
        for c in clavicles:
            cv2.polylines(drawn, [synth._px(c, res)], False, 1.0, round(thickness * res), cv2.LINE_AA,
                          synth._SHIFT)
        return np.where(drawn > 0, 0, bones).astype(np.float32), clavicles, thickness

    monkeypatch.setattr(synth, "_ribs", without_clavicles)
    for i, p in enumerate(batch[:8]):
        shown = np.abs(p.image.astype(int) - make_phantom(3, i, SIZE).image.astype(int)) > 2
        overlap = (shown & p.clavicles).sum() / (shown | p.clavicles).sum()
        assert overlap > 0.6, (i, overlap)


def test_structures_layout(tmp_path):
    ids = write_dataset(str(tmp_path), n=3, size=64, seed=1, layout="structures")
    assert ids == ["SYN_0000_0", "SYN_0001_1", "SYN_0002_0"]
    folders = ["cxr", "masks", *(f"structures/{s}" for s in STRUCTURE_FOLDERS)]
    for sub in folders:
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == [f"{i}.png" for i in ids], sub
    assert sorted(p.name for p in (tmp_path / "structures").iterdir()) == sorted(STRUCTURE_FOLDERS)
    for i, name in enumerate(ids):
        p = make_phantom(1, i, 64)
        expected = {"cxr": p.image, "masks": p.mask * 255,
                    **{f"structures/{s}": m * 255 for s, m in p.structure_masks().items()}}
        for sub in folders:
            got = cv2.imread(str(tmp_path / sub / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert got.dtype == np.uint8 and np.array_equal(got, expected[sub]), (name, sub)
            if sub != "cxr":
                assert set(np.unique(got)) <= {0, 255}
    # Read back as the structures layout: every image labels lungs, heart and clavicles.
    found = discover(str(tmp_path))
    assert found.layout == "structures" and len(found.pairs) == 3 and not found.unmatched_images
    assert all(sorted(pair.masks()) == ["clavicles", "heart", "lungs"] for pair in found.pairs)


def test_cli_structures_layout(tmp_path, capsys):
    import argparse

    from raysegment.cli.synth import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--n", "2", "--size", "32", "--layout", "structures",
                              "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert "wrote 2 phantoms (structures)" in capsys.readouterr().out
    assert len(list((tmp_path / "structures" / "heart").iterdir())) == 2
