"""Datasets: find (image, mask) pairs in the common chest X-ray layouts, split them, load them.

Layouts, detected automatically from a folder, prefix or manifest file:
  montgomery  CXR_png/*.png + ManualMask/leftMask/*.png + ManualMask/rightMask/*.png (masks unioned)
  shenzhen    image folder (CXR_png | cxr | images) + mask folder (mask | masks), mask names with `_mask`
  generic     image folder + mask folder, same file stems
  manifest    a .csv or .parquet file with `image` and `mask` columns (several masks joined by '|';
              relative paths are relative to the manifest; an optional `split` column is respected)

Pairs are matched by name, never by list position (the seed split two sorted lists separately, which
silently misaligns every later pair when one file is missing). Unmatched files are reported.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass, field

import numpy as np

from raysegment.io import names, storage
from raysegment.io.decode import DecodeError, decode_image, decode_mask
from raysegment.io.names import IMAGE_EXTENSIONS  # noqa: F401 - re-exported; the name rules live in names

IMAGE_DIRS = ("CXR_png", "cxr", "images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels")
MASK_SUFFIXES = ("_mask", "-mask", "_seg")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    """One training example: an image and the mask file(s) whose union is its lung mask."""

    image_id: str  # file stem, unique within a dataset
    image_uri: str
    mask_uris: tuple[str, ...]


@dataclass
class Discovery:
    layout: str
    root: str
    pairs: list[Pair]
    unmatched_images: list[str] = field(default_factory=list)  # image URIs with no (complete) mask
    unmatched_masks: list[str] = field(default_factory=list)  # mask URIs with no image

    def report(self, examples: int = 3) -> str:
        """One readable paragraph: what was found and what did not match."""
        lines = [f"{len(self.pairs)} image/mask pairs in {self.root} (layout: {self.layout})"]
        for label, items in (("images without a mask", self.unmatched_images),
                             ("masks without an image", self.unmatched_masks)):
            if items:
                shown = ", ".join(storage.basename(u) for u in items[:examples])
                more = f" and {len(items) - examples} more" if len(items) > examples else ""
                lines.append(f"  {len(items)} {label}: {shown}{more}")
        return "\n".join(lines)


def _images_in(uri: str) -> list[str]:
    return [e.uri for e in storage.list_files(uri, recursive=False) if names.is_image_name(e.uri)]


def _subdirs(uri: str) -> dict[str, str]:
    """Immediate sub-folders of `uri`, by name."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return {
        posixpath.basename(i.path.rstrip("/")): storage.to_uri(i.path, uri)
        for i in infos
        if i.type == pafs.FileType.Directory
    }


def _match(image_uris: list[str], mask_uris: list[str], strip_suffix: bool) -> tuple[list, list, list]:
    """Pair images and masks by stem. Returns (pairs, unmatched images, unmatched masks)."""
    masks_by_stem: dict[str, str] = {}
    for uri in mask_uris:
        stem = names.stem(uri)
        if strip_suffix:
            for suffix in MASK_SUFFIXES:
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
        masks_by_stem[stem] = uri
    pairs, lonely_images = [], []
    for uri in image_uris:
        stem = names.stem(uri)
        mask = masks_by_stem.pop(stem, None)
        if mask is None:
            lonely_images.append(uri)
        else:
            pairs.append(Pair(stem, uri, (mask,)))
    return pairs, lonely_images, sorted(masks_by_stem.values())


def _discover_montgomery(root: str, subdirs: dict[str, str]) -> Discovery:
    manual = _subdirs(subdirs["ManualMask"])
    images = _images_in(subdirs["CXR_png"])
    left = {names.stem(u): u for u in _images_in(manual["leftMask"])} if "leftMask" in manual else {}
    right = {names.stem(u): u for u in _images_in(manual["rightMask"])} if "rightMask" in manual else {}
    pairs, lonely = [], []
    for uri in images:
        stem = names.stem(uri)
        if stem in left and stem in right:
            pairs.append(Pair(stem, uri, (left.pop(stem), right.pop(stem))))
        else:  # a missing left OR right mask makes the union wrong: report, do not guess
            left.pop(stem, None)
            right.pop(stem, None)
            lonely.append(uri)
    return Discovery("montgomery", root, pairs, lonely, sorted(list(left.values()) + list(right.values())))


def _discover_manifest(uri: str) -> tuple[Discovery, dict[str, str]]:
    table = read_table(uri)
    columns = set(table.columns)
    if not {"image", "mask"} <= columns:
        raise ValueError(f"manifest {uri} needs 'image' and 'mask' columns, has {sorted(columns)}")
    base = storage.parent(uri)
    pairs, lonely, splits = [], [], {}
    for row in table.to_dict("records"):
        image = names.resolve(str(row["image"]), base)
        masks = tuple(names.resolve(m, base) for m in str(row.get("mask") or "").split("|")
                      if m and m != "nan")
        image_id = str(row["image_id"]) if "image_id" in columns else names.stem(image)
        if not masks:
            lonely.append(image)
            continue
        pairs.append(Pair(image_id, image, masks))
        if "split" in columns and row["split"] in SPLITS:
            splits[image_id] = row["split"]
    return Discovery("manifest", uri, pairs, lonely, []), splits


def read_table(uri: str):
    """Read a CSV or Parquet file (local or s3) into a pandas DataFrame."""
    import pandas as pd
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri)
    if uri.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def discover(uri: str) -> Discovery:
    """Find image/mask pairs under a folder, s3:// prefix or manifest file (layout detected)."""
    if names.is_manifest_name(uri):
        return _discover_manifest(uri)[0]
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"dataset not found: {uri} "
                                "(expected a folder, s3:// prefix or manifest file)")
    subdirs = _subdirs(uri)
    if "CXR_png" in subdirs and "ManualMask" in subdirs:
        found = _discover_montgomery(uri, subdirs)
    else:
        image_dir = next((subdirs[d] for d in IMAGE_DIRS if d in subdirs), None)
        mask_dir = next((subdirs[d] for d in MASK_DIRS if d in subdirs), None)
        if image_dir is None or mask_dir is None:
            raise ValueError(
                f"cannot tell the layout of {uri}: expected an image folder ({', '.join(IMAGE_DIRS)}) and a "
                f"mask folder ({', '.join(MASK_DIRS)}), or CXR_png + ManualMask (Montgomery), or a manifest "
                f".csv/.parquet with image and mask columns; found folders {sorted(subdirs) or 'none'}"
            )
        images, masks = _images_in(image_dir), _images_in(mask_dir)
        with_suffix = any(names.stem(m).endswith(MASK_SUFFIXES) for m in masks)
        pairs, lonely_images, lonely_masks = _match(images, masks, strip_suffix=with_suffix)
        found = Discovery("shenzhen" if with_suffix else "generic", uri, pairs, lonely_images, lonely_masks)
    if not found.pairs:
        raise ValueError(f"no image/mask pairs found in {uri}\n{found.report()}")
    return found


# --- splits -------------------------------------------------------------------------------------


def _unit_hash(image_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, image id): adding files never moves existing ones."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    image_ids: list[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 42
) -> dict[str, str]:
    """image id -> "train" | "val" | "test", by a hash of the id (default 80/10/10, seed 42 as the seed).

    Assignment depends only on (id, seed), so it is stable when files are added. For tiny data sets a hash
    can leave val or test empty; then the train ids whose hash lies nearest that split's interval move
    over, so every split with a non-zero fraction has at least one image when there are >= 3 images.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    hashes = {i: _unit_hash(i, seed) for i in image_ids}
    splits = {i: "train" if h < cut_train else "val" if h < cut_val else "test" for i, h in hashes.items()}
    if len(image_ids) >= 3:
        for name, frac, anchor in (("val", fractions[1], cut_train), ("test", fractions[2], 1.0)):
            if frac > 0 and name not in splits.values():
                train_ids = [i for i, s in splits.items() if s == "train"]
                if len(train_ids) > 1:
                    splits[min(train_ids, key=lambda i: abs(hashes[i] - anchor))] = name
    return splits


@dataclass
class SplitDataset:
    """A discovered data set with its split: what a training run reads and saves as its manifest."""

    discovery: Discovery
    splits: dict[str, str]  # image id -> split

    def pairs(self, split: str) -> list[Pair]:
        return [p for p in self.discovery.pairs if self.splits[p.image_id] == split]

    def manifest_csv(self) -> str:
        """The split manifest as CSV (image_id, split, image, mask): enough to reproduce the run."""
        lines = ["image_id,split,image,mask"]
        for p in sorted(self.discovery.pairs, key=lambda p: p.image_id):
            lines.append(",".join([p.image_id, self.splits[p.image_id], p.image_uri, "|".join(p.mask_uris)]))
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        """sha256 of the manifest: identifies exactly which images went into which split."""
        return hashlib.sha256(self.manifest_csv().encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for v in self.splits.values() if v == s) for s in SPLITS}


def load_split_dataset(
    uri: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 42
) -> SplitDataset:
    """Discover pairs and split them; a manifest's own `split` column wins over the hash."""
    if names.is_manifest_name(uri):
        found, given = _discover_manifest(uri)
    else:
        found, given = discover(uri), {}
    ids = [p.image_id for p in found.pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"image ids (file stems) are not unique in {uri}; "
                         "rename or use a manifest with image_id")
    splits = assign_splits(ids, fractions, seed)
    splits.update(given)
    return SplitDataset(found, splits)


def write_manifest(dataset: SplitDataset, uri: str) -> str:
    """Write the split manifest CSV to `uri` (local or s3); returns its digest."""
    storage.write_text(uri, dataset.manifest_csv())
    return dataset.digest()


# --- loading ------------------------------------------------------------------------------------


def load_pair(pair: Pair, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair: (float32 HxW image in [0, 1], bool HxW mask = union of its mask files)."""
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    image = decode_image(storage.read_bytes(pair.image_uri), pair.image_uri, **kwargs).image
    return image, load_mask(pair.mask_uris, image.shape, pair.image_uri)


def load_mask(mask_uris: tuple[str, ...], shape: tuple[int, int], image_uri: str = "") -> np.ndarray:
    """bool HxW union of the mask files; DecodeError when one is unreadable or not `shape` (H, W)."""
    mask = np.zeros(shape, dtype=bool)
    for uri in mask_uris:
        part = decode_mask(storage.read_bytes(uri), uri)
        if part.shape != tuple(shape):
            raise DecodeError(
                f"mask {storage.basename(uri)} is {part.shape[1]}x{part.shape[0]} but image "
                f"{storage.basename(image_uri)} is {shape[1]}x{shape[0]}"
            )
        mask |= part
    return mask
