"""Training ingest above the object-store budget (issue #10): a Parquet cache in the run dir, streamed each
epoch.

Tiny phantoms (40 x 32 px) keep the Ray Data passes to a second or two; one short TorchTrainer run proves
the streamed path trains end to end.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raysegment.data.augment import AugmentConfig, augment_pair
from raysegment.data.preprocess import PreprocessConfig
from raysegment.errors import ConfigError
from raysegment.train import cache
from raysegment.train.config import load_config
from raysegment.train.data import (
    CACHE_BUILD_BLOCKS,
    TrainCollate,
    build_dataset,
    decoded_dataset,
    key_checksum,
    streamed_dataset,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRE = PreprocessConfig(size=32)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from raysegment.data.datasets import load_split_dataset
    from raysegment.data.synth import write_dataset

    out = str(tmp_path_factory.mktemp("ingest_phantoms"))
    write_dataset(out, n=40, size=32, seed=5, layout="generic")
    return out, load_split_dataset(out)


def all_rows(ds) -> dict[str, np.ndarray]:
    """Every row of a dataset of training rows, sorted by key."""
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    rows = {name: np.concatenate([b[name] for b in batches]) for name in ("key", "image", "mask", "labelled")}
    order = np.argsort(rows["key"])
    return {name: value[order] for name, value in rows.items()}


def build_cache(root: str, split, preprocess: PreprocessConfig = PRE, calls: list | None = None):
    pairs = split.pairs("train")

    def decoded():
        if calls is not None:
            calls.append(1)
        return decoded_dataset(pairs, preprocess, max_blocks=CACHE_BUILD_BLOCKS)

    return cache.ensure_cache(root, "train", split.digest(), preprocess, MASK_NAMES, decoded, rows_per_file=8)


MASK_NAMES = ("lungs",)


def test_streamed_rows_and_augmented_batches_equal_the_materialized_ones(ray_local, small_set, tmp_path):
    _, split = small_set
    info = build_cache(str(tmp_path / "cache"), split)
    files = sorted(os.listdir(info.uri))
    assert files[-1] == cache.MARKER and info.files == len(files) - 1 >= 3  # sharded
    table = pq.read_table(info.uri)
    assert info.rows == table.num_rows == len(split.pairs("train"))
    # The row format holds C mask channels and says which: one ("lungs") today.
    assert (set(table["mask_channels"].to_pylist()) == {1}
            and set(table["mask_names"].to_pylist()) == {"lungs"})

    streamed, materialized = (all_rows(streamed_dataset(info)),
                              all_rows(build_dataset(split.pairs("train"), PRE)))
    for name in ("key", "image", "mask", "labelled"):
        assert np.array_equal(streamed[name], materialized[name]), name
    assert streamed["mask"].shape == (info.rows, 1, 32, 32)
    # The augmented batch of (seed, epoch, image) is the same on both paths.
    for epoch in (1, 2):
        x1, y1, _ = TrainCollate(AugmentConfig(), seed=7, epoch=epoch)(streamed)
        x2, y2, _ = TrainCollate(AugmentConfig(), seed=7, epoch=epoch)(materialized)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.shape == (info.rows, 1, 32, 32)
    assert not torch.equal(x1, TrainCollate(AugmentConfig(), seed=7, epoch=1)(streamed)[0])


def test_cache_is_reused_rebuilt_on_change_and_never_read_half_written(ray_local, small_set, tmp_path):
    _, split = small_set
    root, calls = str(tmp_path / "cache"), []
    first = build_cache(root, split, calls=calls)
    again = build_cache(root, split, calls=calls)
    assert (first.reused, again.reused, len(calls)) == (False, True, 1)  # no second decode pass
    assert (again.uri, again.rows, again.files) == (first.uri, first.rows, first.files)

    # Other preprocessing: another key, a fresh build, and the stale cache removed once it is complete.
    unit = PreprocessConfig(size=32, normalize="unit")
    changed = build_cache(root, split, preprocess=unit, calls=calls)
    assert not changed.reused and changed.key != first.key and len(calls) == 2
    assert os.listdir(root) == [os.path.basename(changed.uri)]

    # A crash after some files but before the marker: the folder is rebuilt, not appended to or read.
    os.remove(os.path.join(changed.uri, cache.MARKER))
    with open(os.path.join(changed.uri, "leftover.parquet"), "wb") as f:
        f.write(b"half-written")
    rebuilt = build_cache(root, split, preprocess=unit, calls=calls)
    assert not rebuilt.reused and len(calls) == 3 and rebuilt.rows == first.rows
    assert "leftover.parquet" not in os.listdir(rebuilt.uri)
    assert cache.read_marker(rebuilt.uri)["rows"] == rebuilt.rows


def test_multi_channel_rows_round_trip_and_augment_like_one_channel():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    masks = (rng.random((3, 4, 16, 16)) > 0.5).astype(np.uint8)  # e.g. lungs, heart, 2 clavicles
    names = ("lungs", "heart", "left_clavicle", "right_clavicle")
    rows = cache.to_parquet_rows({"key": np.array([5, 6, 7]),
                                  "image_id": np.array(["a", "b", "c"], dtype=object),
                                  "image": images, "mask": masks}, names)
    assert set(rows["mask_channels"]) == {4} and set(rows["mask_names"]) == {"|".join(names)}
    back = cache.from_parquet_rows(rows)
    assert np.array_equal(back["image"], images) and np.array_equal(back["mask"], masks)

    # Every channel moves with the image, exactly as a one-channel mask would with the same draws.
    config = AugmentConfig()
    image, mask = augment_pair(images[0], masks[0], np.random.default_rng([0, 1, 5]), config)
    for c in range(4):
        one_image, one = augment_pair(images[0], masks[0, c], np.random.default_rng([0, 1, 5]), config)
        assert np.array_equal(one, mask[c]) and np.array_equal(one_image, image)


def test_budget_is_a_validated_config_setting():
    assert load_config(None).data.object_store_budget_mb == 2048.0
    with pytest.raises(ConfigError, match="data.object_store_budget_mb: must be >= 0"):
        load_config(None, {"data.object_store_budget_mb": -1})


def test_a_split_several_times_the_budget_trains_streamed(ray_local, small_set, tmp_path, capsys):
    from raysegment.train.driver import train

    data, split = small_set
    budget_mb = 0.01  # ~10 KB; train + val at 32 px, one mask channel: ~2 KB per example
    estimate = cache.estimate_bytes(len(split.pairs("train")) + len(split.pairs("val")), 32, 1)
    assert estimate > 4 * budget_mb * 2**20
    overrides = {"data.path": data, "run.storage_path": str(tmp_path), "run.name": "streamed",
                 "scaling.num_workers": 2, "scaling.use_gpu": False, "optim.epochs": 2, "preprocess.size": 32,
                 "model.base_channels": 4, "model.depth": 2, "run.evaluate_test": False,
                 "data.object_store_budget_mb": budget_mb}
    result = train(load_config(os.path.join(ROOT, "configs", "train-small.yaml"), overrides))

    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(np.isfinite(row["val_dice"]) for row in result.history)
    assert "streamed from the Parquet cache" in capsys.readouterr().out
    caches = sorted(os.listdir(os.path.join(result.run_dir, "cache")))
    assert [name.split("-")[0] for name in caches] == ["train", "val"]
    markers = [cache.read_marker(os.path.join(result.run_dir, "cache", name)) for name in caches]
    for marker, split_name in zip(markers, ("train", "val"), strict=True):
        assert marker["rows"] == len(split.pairs(split_name)) and marker["split_digest"] == split.digest()
    assert markers[0]["files"] >= 2  # shards of a quarter of the budget at most
    val_keys = cache.read_keys(os.path.join(result.run_dir, "cache", caches[1]))
    assert key_checksum(val_keys) == key_checksum(
        [k for k in all_rows(build_dataset(split.pairs("val"), PRE))["key"]])


def test_cache_in_an_s3_run_dir(ray_local, s3_endpoint, small_set):
    import uuid

    _, split = small_set
    root = s3_endpoint.create_bucket(f"ingest-{uuid.uuid4().hex[:12]}") + "/runs/r/cache"
    first, calls = build_cache(root, split, calls=[]), []
    again = build_cache(root, split, calls=calls)
    assert again.reused and not calls and again.uri == first.uri
    keys = [o["Key"] for o in s3_endpoint.client().list_objects_v2(Bucket=root[5:].split("/")[0])["Contents"]]
    assert sum(k.endswith(".parquet") for k in keys) == first.files >= 3
    assert f"runs/r/cache/train-{first.key}/{cache.MARKER}" in keys
    streamed, materialized = (all_rows(streamed_dataset(again)),
                              all_rows(build_dataset(split.pairs("train"), PRE)))
    assert all(np.array_equal(streamed[name], materialized[name]) for name in ("key", "image", "mask"))
