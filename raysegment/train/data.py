"""Ray Data ingest for training.

    pairs --(Ray Data map_batches: decode + preprocess, ONCE)--> rows
          {key: int64, image_id: str, image: uint8 SxS, mask: uint8 CxSxS in {0, 1},
           labelled: uint8 C in {0, 1}}  (C = len(config.structures); labelled 0: the source does not
           label that structure, its channel is zeros and its loss is masked out)
      at most data.object_store_budget_mb of them: materialized in the object store (small sets)
      above it: written once to a sharded Parquet cache in the run dir, streamed each epoch (train/cache.py)
    per epoch, in each worker: get_dataset_shard -> iter_torch_batches(collate_fn=...)
          train: augment (per image, seed = (run seed, epoch, image key)) -> x (N,1,S,S) float,
          y (N,C,S,S) float, labelled (N,C) bool
          val:   no augmentation

The decode is the one input path every command takes (data/model_input.prepare_input: decode, EXIF
orientation, the inversion check of PNG/JPEG/TIFF exports, preprocess), so a film trains as exactly the
model input infer, predict, evaluate and calibrate give it. Training deliberately differs in ONE way, here:
it augments the model inputs (and their masks) per epoch (data/augment.py, TrainCollate below); it never
decodes differently.

Augmentation runs in the collate function, i.e. in Ray Data's prefetch threads inside each worker (OpenCV
releases the GIL, so it overlaps the training step). That is where the epoch is known: a Ray Data map
function cannot see it, and seeding each image by (seed, epoch, key) makes the augmentation of an image
the same whichever worker or batch it lands in, so runs and resumes are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from raysegment.data.augment import AugmentConfig, augment_pair
from raysegment.data.datasets import (
    Pair,
    SplitDataset,
    load_sources,
    load_split_dataset,
    load_structures,
    restrict,
)
from raysegment.data.model_input import InputOptions, prepare_input
from raysegment.data.preprocess import PreprocessConfig, preprocess_mask, to_tensor
from raysegment.data.structures import LUNGS
from raysegment.errors import DecodeError
from raysegment.io import storage
from raysegment.io.decode import DEFAULT_MAX_PIXELS
from raysegment.train import cache

if TYPE_CHECKING:  # torch is imported where tensors are made: the decode tasks never need it
    import ray.data
    import torch

    from raysegment.train.config import TrainConfig

log = logging.getLogger(__name__)

CACHE_BUILD_BLOCKS = 1024  # decode tasks of a cache build: ~100 pairs (~50 MB at 512 px) each at 100k pairs


def load_split(config: TrainConfig) -> SplitDataset:
    """The run's pairs and split: data.sources each split on its own (partial labels), or data.path as
    today (pairs keep only the labels of config.structures; no source column, so a lungs-only run's split
    manifest and its digest are what they always were)."""
    from raysegment.errors import ConfigError

    fractions, seed = tuple(config.data.split), config.data.split_seed
    try:
        if config.data.sources:
            return load_sources(config.source_list(), fractions, seed, config.structures)
        split = load_split_dataset(config.data.path, fractions, seed)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    pairs = [r for p in split.discovery.pairs if (r := restrict(p, config.structures, "")) is not None]
    if not pairs:
        raise ConfigError(f"data.path: {config.data.path} labels none of {', '.join(config.structures)} "
                          f"(it labels {', '.join(split.structures())})")
    split.discovery.pairs = pairs
    return split


def prepare_pair(pair: Pair, config: PreprocessConfig, structures: tuple[str, ...] = (LUNGS,),
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode and preprocess one pair: (uint8 SxS model-input image, uint8 CxSxS {0, 1} masks, uint8 C
    labelled flags), C = len(structures). The image takes the one input path (inversion check included);
    an inverted export's expert mask needs no change: inverting intensities moves no lung."""
    prepared = prepare_input(storage.read_bytes(pair.image_uri), pair.image_uri, config,
                             InputOptions(max_pixels=max_pixels))
    masks, labelled = load_structures(pair, structures, prepared.frame.image.shape)
    return (prepared.model_input, np.stack([preprocess_mask(m, config) for m in masks]),
            labelled.astype(np.uint8))


def image_key(image_id: str) -> int:
    """A stable 60-bit integer per image id: seeds its augmentation."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:15], 16)


def _row_pair(image_id, image_uri, labels) -> Pair:
    """A pair back from a decode row: labels is JSON {structure: [files]}."""
    files = {name: tuple(uris) for name, uris in json.loads(str(labels)).items()}
    lungs = files.pop(LUNGS, ())
    return Pair(str(image_id), str(image_uri), lungs, tuple(files.items()))


def _decode_batch(batch: dict[str, np.ndarray], preprocess: PreprocessConfig,
                  structures: tuple[str, ...] = (LUNGS,), max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> dict[str, np.ndarray]:
    """Ray Data map_batches: rows of file URIs -> rows of preprocessed arrays. Undecodable pairs are dropped
    with a warning (the driver reports how many are missing)."""
    keep, images, masks, labelled = [], [], [], []
    for i, (image_id, image_uri, labels) in enumerate(zip(batch["image_id"], batch["image_uri"],
                                                          batch["labels"], strict=False)):
        try:
            image, mask, flags = prepare_pair(_row_pair(image_id, image_uri, labels), preprocess, structures,
                                              max_pixels)
        except DecodeError as e:
            log.warning("skipping %s: %s", image_id, e)
            continue
        keep.append(i)
        images.append(image)
        masks.append(mask)
        labelled.append(flags)
    size, c = preprocess.size, len(structures)
    return {
        "key": batch["key"][keep],
        "image_id": batch["image_id"][keep],
        "image": np.stack(images) if images else np.zeros((0, size, size), np.uint8),
        "mask": np.stack(masks) if masks else np.zeros((0, c, size, size), np.uint8),  # (N, C, S, S)
        "labelled": np.stack(labelled) if labelled else np.zeros((0, c), np.uint8),  # (N, C)
    }


def _quiet(ds):
    # The dataset owns a copy of the DataContext: these settings stay with it, not with the process.
    ds.context.execution_options.preserve_order = True  # rows in a fixed order: val batches are reproducible
    ds.context.print_on_execution_start = False  # no plan banner per execution (one per epoch in training)
    return ds


def decoded_dataset(pairs: list[Pair], preprocess: PreprocessConfig, rows_per_block: int = 16,
                    max_blocks: int = 64, structures: tuple[str, ...] = (LUNGS,),
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> ray.data.Dataset:
    """A lazy Ray Dataset of preprocessed rows for `pairs` (decoded in parallel Ray tasks when executed).

    One decode task per block of ~rows_per_block pairs: enough tasks to spread over the cluster, few
    enough that task overhead does not dominate small data sets. The Parquet cache build passes a higher
    cap: it streams, and smaller blocks keep what each task holds small however large the split.
    """
    import ray

    rows = [{"key": image_key(p.image_id), "image_id": p.image_id, "image_uri": p.image_uri,
             "labels": json.dumps(p.masks())} for p in pairs]
    blocks = max(1, math.ceil(len(rows) / rows_per_block))
    ds = _quiet(ray.data.from_items(rows, override_num_blocks=min(blocks, max_blocks)))
    return ds.map_batches(_decode_batch, batch_size=rows_per_block, batch_format="numpy",
                          fn_kwargs={"preprocess": preprocess, "structures": tuple(structures),
                                     "max_pixels": max_pixels})


def build_dataset(pairs: list[Pair], preprocess: PreprocessConfig, rows_per_block: int = 16,
                  max_blocks: int = 64, structures: tuple[str, ...] = (LUNGS,),
                  max_pixels: int = DEFAULT_MAX_PIXELS):
    """A materialized Ray Dataset of preprocessed rows for `pairs` (decoded in parallel Ray tasks)."""
    ds = decoded_dataset(pairs, preprocess, rows_per_block, max_blocks, structures, max_pixels).materialize()
    ds.context.enable_progress_bars = False  # the per-epoch re-reads in the workers need no progress bars
    return ds


def streamed_dataset(info: cache.CacheInfo) -> ray.data.Dataset:
    """The rows of a complete Parquet cache, re-read (streamed) at each iteration; the same rows as
    build_dataset's."""
    ds = _quiet(cache.open_cache(info))
    ds.context.enable_progress_bars = False
    return ds


@dataclass
class Ingest:
    """The train and val datasets of a run and how they were made."""

    datasets: dict  # "train" / "val" -> Ray Dataset of rows (see the module docstring)
    rows: dict[str, int]  # decoded rows per split (undecodable pairs are dropped)
    val_check: tuple[int, int]  # (images, key_checksum) of the val set: the loop checks its passes
    estimate_bytes: int  # preprocessed train + val arrays, what materializing needs
    budget_bytes: int
    caches: dict[str, cache.CacheInfo] = field(default_factory=dict)  # streamed path only

    @property
    def streamed(self) -> bool:
        return bool(self.caches)

    def execution_options(self) -> dict:
        """Ray Data options per dataset for ray.train.DataConfig. Val is read in order: each worker takes
        every world_size-th batch, so all must see the same order. A streamed dataset's object-store use is
        capped at the budget (each execution: the train split's once, val's once per worker); without the
        cap Ray Data would read ahead up to its share of the whole object store."""
        import ray.train

        options = {}
        for name in self.datasets:
            o = ray.train.DataConfig.default_ingest_options()
            o.preserve_order = name == "val" or o.preserve_order
            if self.streamed and self.budget_bytes > 0:
                o.resource_limits = o.resource_limits.copy(object_store_memory=self.budget_bytes)
            options[name] = o
        return options

    def describe(self) -> str:
        mb = f"~{self.estimate_bytes / 2**20:.1f} MB preprocessed"
        budget = f"data.object_store_budget_mb {self.budget_bytes / 2**20:g}"
        if not self.streamed:
            return f"materialized in the object store ({mb} <= {budget})"
        parts = ", ".join(f"{name} {'reused' if c.reused else 'built'} ({c.files} file(s), "
                          f"{c.bytes / 2**20:.1f} MB)" for name, c in self.caches.items())
        return (f"streamed from the Parquet cache {storage.parent(self.caches['train'].uri)} each epoch "
                f"({mb} > {budget}; {parts})")


def build_datasets(split: SplitDataset, config: TrainConfig, run_dir: str, split_digest: str) -> Ingest:
    """Train and val datasets: materialized when their preprocessed arrays fit in data.object_store_budget_mb,
    else a Parquet cache in RUN_DIR/cache (built once per split digest + preprocessing) streamed each
    epoch."""
    pairs = {name: split.pairs(name) for name in ("train", "val")}
    structures = tuple(config.structures)
    size, channels = config.preprocess.size, len(structures)
    estimate = cache.estimate_bytes(sum(len(p) for p in pairs.values()), size, channels)
    budget = int(config.data.object_store_budget_mb * 2**20)
    if estimate <= budget:
        datasets = {name: build_dataset(p, config.preprocess, structures=structures,
                                        max_pixels=config.data.max_pixels)
                    for name, p in pairs.items()}
        rows = {name: ds.count() for name, ds in datasets.items()}
        val_keys = [int(k) for batch in datasets["val"].iter_batches(batch_size=None, batch_format="numpy")
                    for k in batch["key"]]
        return Ingest(datasets, rows, (len(val_keys), key_checksum(val_keys)), estimate, budget)

    root = storage.join(run_dir, "cache")
    per_file = cache.shard_rows(budget, size, channels)
    caches = {name: cache.ensure_cache(root, name, split_digest, config.preprocess, structures,
                                       lambda p=p: decoded_dataset(p, config.preprocess,
                                                                   max_blocks=CACHE_BUILD_BLOCKS,
                                                                   structures=structures,
                                                                   max_pixels=config.data.max_pixels),
                                       per_file)
              for name, p in pairs.items()}
    val_keys = cache.read_keys(caches["val"].uri) if caches["val"].files else []
    datasets = {name: streamed_dataset(info) for name, info in caches.items()}
    rows = {name: info.rows for name, info in caches.items()}
    return Ingest(datasets, rows, (len(val_keys), key_checksum(val_keys)), estimate, budget, caches)


def _writable(batch: np.ndarray) -> np.ndarray:
    # Ray Data hands out read-only zero-copy views; torch.from_numpy warns on those.
    return np.require(batch, requirements=["C", "W"])


def mask_tensor(masks: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, S, S) (or (N, S, S): one channel) in {0, 1} -> float32 (N, C, S, S): the loss target."""
    import torch

    t = torch.from_numpy(_writable(masks))
    return (t.unsqueeze(1) if t.ndim == 3 else t).float()


def labelled_tensor(batch: dict[str, np.ndarray]) -> torch.Tensor:
    """bool (N, C): which structures each row labels (all, for rows of a cache without the column)."""
    import torch

    if "labelled" not in batch:
        masks = batch["mask"]
        return torch.ones((len(masks), masks.shape[1] if masks.ndim == 4 else 1), dtype=torch.bool)
    return torch.from_numpy(_writable(np.asarray(batch["labelled"], dtype=np.uint8))).bool()


class TrainCollate(NumpyBatchCollateFn):
    """Numpy batch -> augmented (x, y, labelled) tensors for one epoch. Per-image seeds: (seed, epoch,
    key)."""

    def __init__(self, augment: AugmentConfig, seed: int, epoch: int) -> None:
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.augment.enabled:
            return to_tensor(_writable(batch["image"])), mask_tensor(batch["mask"]), labelled_tensor(batch)
        images, masks = np.array(batch["image"]), np.array(batch["mask"])  # copies: filled in place below
        for i, key in enumerate(batch["key"]):
            rng = np.random.default_rng([self.seed, self.epoch, int(key)])
            images[i], masks[i] = augment_pair(images[i], masks[i], rng, self.augment)
        return to_tensor(images), mask_tensor(masks), labelled_tensor(batch)


KEY_CHECK_MODULUS = 2**20  # key checksums stay exact integers in float64 sums over any realistic val set


def key_checksum(keys) -> int:
    """Sum of image keys modulo KEY_CHECK_MODULUS each: proves which rows a (distributed) pass covered."""
    return int(sum(int(k) % KEY_CHECK_MODULUS for k in keys))


class EvalCollate(NumpyBatchCollateFn):
    """Numpy batch -> (x, y, labelled, key % KEY_CHECK_MODULUS as int64 (N,)) tensors, unaugmented."""

    def __call__(self, batch: dict[str, np.ndarray]):
        import torch

        keys = torch.from_numpy(np.asarray(batch["key"], dtype=np.int64) % KEY_CHECK_MODULUS)
        return to_tensor(_writable(batch["image"])), mask_tensor(batch["mask"]), labelled_tensor(batch), keys
