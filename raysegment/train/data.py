"""Ray Data ingest for training.

    pairs --(Ray Data map_batches: decode + preprocess, ONCE)--> materialized rows
          {key: int64, image_id: str, image: uint8 SxS, mask: uint8 SxS in {0, 1}}
    per epoch, in each worker: get_dataset_shard -> iter_torch_batches(collate_fn=...)
          train: augment (per image, seed = (run seed, epoch, image key)) -> x (N,1,S,S) float, y (N,1,S,S)
          float
          val:   no augmentation

Augmentation runs in the collate function, i.e. in Ray Data's prefetch threads inside each worker (OpenCV
releases the GIL, so it overlaps the training step). That is where the epoch is known: a Ray Data map
function cannot see it, and seeding each image by (seed, epoch, key) makes the augmentation of an image
the same whichever worker or batch it lands in, so runs and resumes are reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from raysegment.data.augment import AugmentConfig, augment_pair
from raysegment.data.datasets import Pair, load_pair
from raysegment.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask, to_tensor
from raysegment.io.decode import DecodeError

if TYPE_CHECKING:  # torch is imported where tensors are made: the decode tasks never need it
    import torch

log = logging.getLogger(__name__)


def prepare_pair(pair: Pair, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess one pair: (uint8 SxS model-input image, uint8 SxS {0, 1} mask)."""
    image, mask = load_pair(pair)
    return preprocess_image(image, config)[0], preprocess_mask(mask, config)


def image_key(image_id: str) -> int:
    """A stable 60-bit integer per image id: seeds its augmentation."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:15], 16)


def _decode_batch(batch: dict[str, np.ndarray], preprocess: PreprocessConfig) -> dict[str, np.ndarray]:
    """Ray Data map_batches: rows of file URIs -> rows of preprocessed arrays. Undecodable pairs are dropped
    with a warning (the driver reports how many are missing)."""
    keep, images, masks = [], [], []
    for i, (image_id, image_uri, mask_uris) in enumerate(zip(batch["image_id"], batch["image_uri"],
                                                              batch["mask_uris"], strict=False)):
        pair = Pair(str(image_id), str(image_uri), tuple(str(mask_uris).split("|")))
        try:
            image, mask = prepare_pair(pair, preprocess)
        except DecodeError as e:
            log.warning("skipping %s: %s", image_id, e)
            continue
        keep.append(i)
        images.append(image)
        masks.append(mask)
    size = preprocess.size
    return {
        "key": batch["key"][keep],
        "image_id": batch["image_id"][keep],
        "image": np.stack(images) if images else np.zeros((0, size, size), np.uint8),
        "mask": np.stack(masks) if masks else np.zeros((0, size, size), np.uint8),
    }


def build_dataset(pairs: list[Pair], preprocess: PreprocessConfig, rows_per_block: int = 16,
                  max_blocks: int = 64):
    """A materialized Ray Dataset of preprocessed rows for `pairs` (decoded in parallel Ray tasks).

    One decode task per block of ~rows_per_block pairs: enough tasks to spread over the cluster, few
    enough that task overhead does not dominate small data sets.
    """
    import ray

    rows = [{"key": image_key(p.image_id), "image_id": p.image_id, "image_uri": p.image_uri,
             "mask_uris": "|".join(p.mask_uris)} for p in pairs]
    blocks = max(1, min(math.ceil(len(rows) / rows_per_block), max_blocks))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # The dataset owns a copy of the DataContext: these settings stay with it, not with the process.
    ds.context.execution_options.preserve_order = True  # rows in pair order: val batches are reproducible
    ds.context.print_on_execution_start = False  # no plan banner per execution (one per epoch in training)
    ds = ds.map_batches(_decode_batch, fn_kwargs={"preprocess": preprocess}, batch_size=rows_per_block,
                        batch_format="numpy")
    ds = ds.materialize()
    ds.context.enable_progress_bars = False  # the per-epoch re-reads in the workers need no progress bars
    return ds


def _writable(batch: np.ndarray) -> np.ndarray:
    # Ray Data hands out read-only zero-copy views; torch.from_numpy warns on those.
    return np.require(batch, requirements=["C", "W"])


def mask_tensor(masks: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) in {0, 1} -> float32 (N, 1, S, S): the loss target."""
    import torch

    return torch.from_numpy(_writable(masks)).unsqueeze(1).float()


class TrainCollate(NumpyBatchCollateFn):
    """Numpy batch -> augmented (x, y) tensors for one epoch. Per-image seeds: (seed, epoch, key)."""

    def __init__(self, augment: AugmentConfig, seed: int, epoch: int) -> None:
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.augment.enabled:
            return to_tensor(_writable(batch["image"])), mask_tensor(batch["mask"])
        images, masks = np.array(batch["image"]), np.array(batch["mask"])  # copies: filled in place below
        for i, key in enumerate(batch["key"]):
            rng = np.random.default_rng([self.seed, self.epoch, int(key)])
            images[i], masks[i] = augment_pair(images[i], masks[i], rng, self.augment)
        return to_tensor(images), mask_tensor(masks)


KEY_CHECK_MODULUS = 2**20  # key checksums stay exact integers in float64 sums over any realistic val set


def key_checksum(keys) -> int:
    """Sum of image keys modulo KEY_CHECK_MODULUS each: proves which rows a (distributed) pass covered."""
    return int(sum(int(k) % KEY_CHECK_MODULUS for k in keys))


class EvalCollate(NumpyBatchCollateFn):
    """Numpy batch -> (x, y, key % KEY_CHECK_MODULUS as int64 (N,)) tensors, unaugmented."""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        keys = torch.from_numpy(np.asarray(batch["key"], dtype=np.int64) % KEY_CHECK_MODULUS)
        return to_tensor(_writable(batch["image"])), mask_tensor(batch["mask"]), keys
