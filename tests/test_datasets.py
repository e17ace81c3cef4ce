import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from raysegment.data import datasets
from raysegment.data.datasets import assign_splits, discover, load_pair, load_split_dataset


def _synth(out, n, layout, seed=3, size=64):
    from raysegment.data.synth import write_dataset

    write_dataset(str(out), n=n, size=size, seed=seed, layout=layout)
    return str(out)


def test_cli_synth_montgomery_then_discover_and_report_missing_mask(tmp_path):
    out = tmp_path / "mc"
    cmd = [sys.executable, "-m", "raysegment", "synth", "--layout", "montgomery", "--n", "20", "--size", "64",
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    found = discover(str(out))
    assert found.layout == "montgomery" and len(found.pairs) == 20
    assert all(len(p.mask_uris) == 2 for p in found.pairs)  # left + right, unioned on load

    victim = sorted(os.listdir(out / "ManualMask" / "leftMask"))[7]
    os.remove(out / "ManualMask" / "leftMask" / victim)
    found = discover(str(out))
    assert len(found.pairs) == 19
    assert [os.path.basename(u) for u in found.unmatched_images] == [victim]
    assert "1 images without a mask" in found.report() and victim in found.report()


def test_montgomery_masks_are_unioned(tmp_path):
    from raysegment.io.decode import decode_mask

    root = _synth(tmp_path / "mc", 3, "montgomery")
    pair = discover(root).pairs[0]
    image, mask = load_pair(pair)
    from raysegment.io import storage

    left, right = (decode_mask(storage.read_bytes(u)) for u in pair.mask_uris)
    assert image.dtype == np.float32 and mask.shape == image.shape
    assert np.array_equal(mask, left | right) and left.any() and right.any()


def test_generic_layout_pairs_by_name_not_position(tmp_path):
    root = _synth(tmp_path / "g", 6, "generic")
    masks = sorted(os.listdir(os.path.join(root, "masks")))
    os.remove(os.path.join(root, "masks", masks[0]))  # the seed's list zip would shift every later pair
    found = discover(root)
    assert found.layout == "generic" and len(found.pairs) == 5
    for p in found.pairs:
        assert os.path.basename(p.mask_uris[0]) == os.path.basename(p.image_uri)
    assert len(found.unmatched_images) == 1


def test_shenzhen_layout_with_mask_suffix(tmp_path):
    root = _synth(tmp_path / "sz", 4, "generic")
    os.rename(os.path.join(root, "cxr"), os.path.join(root, "CXR_png"))
    os.rename(os.path.join(root, "masks"), os.path.join(root, "mask"))
    for name in os.listdir(os.path.join(root, "mask")):
        stem, ext = os.path.splitext(name)
        os.rename(os.path.join(root, "mask", name), os.path.join(root, "mask", f"{stem}_mask{ext}"))
    with open(os.path.join(root, "mask", "orphan_mask.png"), "wb") as f:
        f.write(b"x")
    found = discover(root)
    assert found.layout == "shenzhen" and len(found.pairs) == 4
    assert [os.path.basename(u) for u in found.unmatched_masks] == ["orphan_mask.png"]


def test_manifest_csv_and_parquet(tmp_path):
    import pandas as pd

    root = _synth(tmp_path / "g", 5, "generic")
    rows = [{"image": f"cxr/{n}",
             "mask": f"masks/{n}"} for n in sorted(os.listdir(os.path.join(root, "cxr")))]
    rows[0]["split"] = "test"
    pd.DataFrame(rows).to_csv(os.path.join(root, "manifest.csv"), index=False)
    pd.DataFrame(rows).to_parquet(os.path.join(root, "manifest.parquet"))
    for name in ("manifest.csv", "manifest.parquet"):
        ds = load_split_dataset(os.path.join(root, name))
        assert ds.discovery.layout == "manifest" and len(ds.discovery.pairs) == 5
        assert os.path.exists(ds.discovery.pairs[0].image_uri)  # relative paths resolved
        assert ds.splits[ds.discovery.pairs[0].image_id] == "test"  # the manifest's split wins


def test_unknown_layout_error_says_what_is_expected(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="cannot tell the layout"):
        discover(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^dataset not found: .*missing \(expected a folder, s3:// "):
        discover(str(tmp_path / "missing"))


def test_split_is_deterministic_and_stable_when_files_are_added():
    ids = [f"img_{i:04d}" for i in range(1000)]
    a = assign_splits(ids)
    assert a == assign_splits(list(reversed(ids)))
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert 740 <= counts["train"] <= 860 and 60 <= counts["val"] <= 140 and 60 <= counts["test"] <= 140
    b = assign_splits(ids + [f"new_{i}" for i in range(200)])
    assert all(b[i] == a[i] for i in ids)  # adding files never moves existing ones
    assert assign_splits(ids, seed=7) != a


def test_small_sets_get_non_empty_splits():
    for n in (3, 5, 10, 20):
        values = set(assign_splits([f"x{i}" for i in range(n)]).values())
        assert values == {"train", "val", "test"}, n


def test_manifest_round_trip_reproduces_split(tmp_path):
    root = _synth(tmp_path / "g", 12, "generic")
    ds = load_split_dataset(root)
    manifest = str(tmp_path / "split.csv")
    digest = datasets.write_manifest(ds, manifest)
    again = load_split_dataset(manifest)
    assert again.splits == ds.splits and set(again.splits.values()) == {"train", "val", "test"}
    # The digest is the sha256 of the bytes written, and reading the manifest back reproduces it: this is
    # how evaluate tells that a checkpoint was trained on this split.
    with open(manifest, "rb") as f:
        assert digest == hashlib.sha256(f.read()).hexdigest()
    assert again.digest() == digest
    # Any change of split (another seed moves some images) changes the digest.
    other = load_split_dataset(root, seed=7)
    assert other.splits != ds.splits and other.digest() != digest


def test_mask_size_mismatch_is_a_clear_error(tmp_path):
    import cv2

    from raysegment.errors import DecodeError

    root = _synth(tmp_path / "g", 2, "generic")
    pair = discover(root).pairs[0]
    cv2.imwrite(pair.mask_uris[0], np.zeros((10, 10), np.uint8))
    with pytest.raises(DecodeError, match="mask .* is 10x10 but image"):
        load_pair(pair)


def test_real_montgomery_set(montgomery_512):
    found = discover(montgomery_512)
    assert found.layout == "generic" and len(found.pairs) == 138
    assert not found.unmatched_images and not found.unmatched_masks
    for pair in found.pairs:
        _, mask = load_pair(pair)
        assert 0.05 <= mask.mean() <= 0.5, pair.image_id


def test_real_montgomery_copy_in_nlm_layout(montgomery_512, tmp_path):
    # The NLM release layout: CXR_png + ManualMask/{left,right}Mask; here both halves come from one mask.
    import cv2

    root = tmp_path / "nlm"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (root / sub).mkdir(parents=True)
    for name in sorted(os.listdir(os.path.join(montgomery_512, "cxr")))[:3]:
        shutil.copy(os.path.join(montgomery_512, "cxr", name), root / "CXR_png" / name)
        mask = cv2.imread(os.path.join(montgomery_512, "masks", name), cv2.IMREAD_GRAYSCALE)
        half = mask.shape[1] // 2
        left, right = mask.copy(), mask.copy()
        left[:, :half], right[:, half:] = 0, 0
        cv2.imwrite(str(root / "ManualMask/leftMask" / name), left)
        cv2.imwrite(str(root / "ManualMask/rightMask" / name), right)
    found = discover(str(root))
    assert found.layout == "montgomery" and len(found.pairs) == 3
    _, mask = load_pair(found.pairs[0])
    original = cv2.imread(os.path.join(montgomery_512, "masks", found.pairs[0].image_id + ".png"), 0) > 127
    assert np.array_equal(mask, original)
