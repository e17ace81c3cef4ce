"""The training-set cache for data sets above the object-store budget: preprocessed rows as sharded Parquet.

    pairs --(Ray Data: decode + preprocess, ONCE)--> RUN/cache/<split>-<key>/*.parquet, then _COMPLETE.json
    every epoch: read_parquet, streamed (a few blocks in flight per worker) -> the same rows as the
                 materialized path: {key, image_id, image uint8 (N,S,S), mask uint8 (N,C,S,S)}

Why: materializing the decoded split costs ~0.5 MB of object store per 512 px example (50 GB for 100k
before the first step); a Parquet cache on the run's storage (local or s3://) costs disk, not memory.

Row schema (one row per image; plain bytes and ints, so any Parquet reader can use it, not only Ray):
    key int64 (image_key: seeds augmentation), image_id string, size int32 (S),
    image binary (uint8 SxS, C order), mask binary (uint8 CxSxS in {0, 1}, C order),
    mask_channels int32 (C), mask_names string (channel names joined by "|", e.g. "lungs"),
    labelled binary (uint8 C in {0, 1}: which structures the row's source labels)

Key: sha256 of (format, split name, split digest, preprocess config, mask channel names). Same key = same
rows, so a rerun or resume reuses the cache; any change gets a new folder (and the stale one is removed
once the new one is complete). The marker is written last: a folder without it (a crash mid-build) is
never read, it is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.fs as pafs

from raysegment.data.preprocess import PreprocessConfig
from raysegment.errors import UserError
from raysegment.io import storage

if TYPE_CHECKING:
    import ray.data

# 2: labelled column; 3: images through data/model_input (inverted exports corrected). Bump when the row
# schema or its meaning changes: old caches then miss and rebuild.
CACHE_FORMAT = 3
MARKER = "_COMPLETE.json"  # Parquet readers skip names starting with "_"
MAX_SHARD_BYTES = 64 * 2**20  # big enough that per-file overhead is small, small enough to stream
MIN_SHARD_BYTES = 16 * 2**10


def row_bytes(size: int, channels: int) -> int:
    """Preprocessed bytes of one example: uint8 SxS image + uint8 CxSxS mask."""
    return size * size * (1 + channels)


def estimate_bytes(rows: int, size: int, channels: int) -> int:
    """Object-store bytes that materializing `rows` preprocessed examples needs (arrays only)."""
    return rows * row_bytes(size, channels)


def shard_rows(budget_bytes: int, size: int, channels: int) -> int:
    """Rows per Parquet file: a quarter of the budget (at most 64 MiB), so a few files in flight fit in it.
    Budget 0 (always stream): 64 MiB."""
    target = (min(MAX_SHARD_BYTES, max(MIN_SHARD_BYTES, budget_bytes // 4)) if budget_bytes > 0
              else MAX_SHARD_BYTES)
    return max(1, target // row_bytes(size, channels))


def cache_key(split_name: str, split_digest: str, preprocess: PreprocessConfig,
              mask_names: Sequence[str]) -> str:
    """16 hex digits identifying the rows a cache holds (see the module docstring)."""
    ident = {"format": CACHE_FORMAT, "split": split_name, "split_digest": split_digest,
             "preprocess": preprocess.to_dict(), "mask_names": list(mask_names)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheInfo:
    uri: str  # folder of *.parquet shards (local path or s3:// URI)
    key: str
    rows: int
    files: int
    bytes: int  # on storage (Parquet is compressed: masks shrink a lot)
    reused: bool  # True: a complete cache with this key was already there


def to_parquet_rows(batch: dict[str, np.ndarray], mask_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Ray Data map_batches: decoded rows (image (N,S,S), mask (N,C,S,S)) -> Parquet rows of bytes."""
    images, masks = batch["image"], batch["mask"]
    n = len(images)
    if masks.ndim == 3:  # (N, S, S): one channel
        masks = masks[:, None]
    return {
        "key": np.asarray(batch["key"], dtype=np.int64),
        "image_id": batch["image_id"],
        "size": np.full(n, images.shape[-1] if n else 0, dtype=np.int32),
        "image": np.array([np.ascontiguousarray(i).tobytes() for i in images], dtype=object),
        "mask": np.array([np.ascontiguousarray(m).tobytes() for m in masks], dtype=object),
        "mask_channels": np.full(n, masks.shape[1] if n else len(mask_names), dtype=np.int32),
        "mask_names": np.array(["|".join(mask_names)] * n, dtype=object),
        "labelled": np.array([np.asarray(f, np.uint8).tobytes() for f in batch["labelled"]], dtype=object)
        if "labelled" in batch else np.array([b"\x01" * masks.shape[1]] * n, dtype=object),
    }


def from_parquet_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data map_batches: Parquet rows -> {key, image_id, image uint8 (N,S,S), mask uint8 (N,C,S,S)}."""
    n = len(batch["key"])
    size = int(batch["size"][0]) if n else 0
    channels = int(batch["mask_channels"][0]) if n else 1
    if n and ((batch["size"] != size).any() or (batch["mask_channels"] != channels).any()):
        raise ValueError("a training cache mixes image sizes or mask channel counts")
    return {
        "key": np.asarray(batch["key"], dtype=np.int64),
        "image_id": batch["image_id"],
        "image": np.frombuffer(b"".join(batch["image"]), dtype=np.uint8).reshape(n, size, size),
        "mask": np.frombuffer(b"".join(batch["mask"]), dtype=np.uint8).reshape(n, channels, size, size),
        # which structures each row labels (partial labels: its loss is masked for the others)
        "labelled": np.frombuffer(b"".join(batch["labelled"]), dtype=np.uint8).reshape(n, channels)
        if "labelled" in batch else np.ones((n, channels), np.uint8),
    }


def read_marker(uri: str) -> dict | None:
    """The completion marker of a cache folder, or None when the folder is missing or half-written."""
    marker = storage.join(uri, MARKER)
    if not storage.exists(marker):
        return None
    return json.loads(storage.read_text(marker))


def read_keys(uri: str) -> np.ndarray:
    """The key column of a cache (int64 (N,), in file order): cheap, one column of small files."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=["key"])["key"].to_numpy()


def _remove_stale(root: str, split_name: str, keep: str) -> None:
    """Delete this split's caches under `root` other than `keep` (older keys: data or preprocessing
    changed)."""
    fs, path = storage.filesystem(root)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(f"{split_name}-") and name != keep:
            fs.delete_dir(info.path)


def ensure_cache(root: str, split_name: str, split_digest: str, preprocess: PreprocessConfig,
                 mask_names: Sequence[str], decoded: Callable[[], ray.data.Dataset],
                 rows_per_file: int) -> CacheInfo:
    """The complete cache of one split under `root`, built now if none with this key is complete.

    `decoded` returns the (lazy) Ray Dataset of decoded rows; it is only called when building. Building
    streams decode -> Parquet (nothing is materialized), then counts the rows and writes the marker last.
    """
    key = cache_key(split_name, split_digest, preprocess, mask_names)
    name = f"{split_name}-{key}"
    uri = storage.join(root, name)
    marker = read_marker(uri)
    if marker is not None and marker.get("key") == key:
        return CacheInfo(uri, key, int(marker["rows"]), int(marker["files"]), int(marker["bytes"]),
                         reused=True)

    # a half-written earlier attempt is never trusted: write_parquet would append to it
    storage.delete_dir(uri)
    fs, path = storage.filesystem(uri)
    ds = decoded().map_batches(to_parquet_rows, fn_kwargs={"mask_names": tuple(mask_names)}, batch_size=None,
                               batch_format="numpy")
    ds.write_parquet(path, filesystem=fs, min_rows_per_file=rows_per_file, max_rows_per_file=rows_per_file)
    if not storage.exists(uri):  # nothing decodable: still a valid (empty) cache folder
        storage.makedirs(uri)
    parts = [f for f in storage.list_files(uri) if f.uri.endswith(".parquet")]
    rows = len(read_keys(uri)) if parts else 0
    info = CacheInfo(uri, key, rows, len(parts), sum(f.size for f in parts), reused=False)
    storage.write_text(storage.join(uri, MARKER), json.dumps({
        "format": CACHE_FORMAT, "key": key, "split": split_name, "split_digest": split_digest,
        "preprocess": preprocess.to_dict(), "mask_names": list(mask_names), "rows": info.rows,
        "files": info.files, "bytes": info.bytes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2))
    _remove_stale(root, split_name, keep=name)
    return info


def open_cache(info: CacheInfo) -> ray.data.Dataset:
    """A lazy Ray Dataset over a complete cache: read_parquet + bytes -> arrays, re-read each iteration."""
    import ray

    if info.files == 0:
        raise UserError(f"training cache {info.uri} holds no rows: no image of the split could be decoded")
    fs, path = storage.filesystem(info.uri)
    ds = ray.data.read_parquet(path, filesystem=fs)
    return ds.map_batches(from_parquet_rows, batch_size=None, batch_format="numpy")
