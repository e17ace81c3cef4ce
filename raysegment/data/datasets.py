"""Datasets: find (image, mask) pairs in the common chest X-ray layouts, split them, load them.

Layouts, detected automatically from a folder, prefix or manifest file:
  montgomery  CXR_png/*.png + ManualMask/leftMask/*.png + ManualMask/rightMask/*.png (masks unioned)
  shenzhen    image folder (CXR_png | cxr | images) + mask folder (mask | masks), mask names with `_mask`
  generic     image folder + mask folder, same file stems
  structures  image folder + structures/<part>/ folders (as JSRT/SCR: left_lung, right_lung, heart,
              left_clavicle, right_clavicle), same file stems; data/structures.py says which parts make a
              structure (lungs = right_lung | left_lung); a `masks/` lung folder is used when no lung parts
  manifest    a .csv or .parquet file with an `image` column and one mask column per structure: `mask` (or
              `lungs`), `heart`, `clavicles` (several files joined by '|'; an empty cell = not labelled;
              relative paths are relative to the manifest; optional `split`, `image_id`, `source` columns)

Several sources (a training run's data.sources) are split each on its own, by the same hash, and joined
(load_sources): each pair records its source and which structures it labels (partial labels).

Pairs are matched by name, never by list position (the seed split two sorted lists separately, which
silently misaligns every later pair when one file is missing). Unmatched files are reported.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field

import numpy as np

from raysegment.data.structures import LUNGS, STRUCTURES
from raysegment.errors import DecodeError
from raysegment.io import names, storage
from raysegment.io.decode import decode_mask
from raysegment.io.inputs import read_table

IMAGE_DIRS = ("CXR_png", "cxr", "images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels")
MASK_SUFFIXES = ("_mask", "-mask", "_seg")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    """One training example: an image and the mask file(s) whose union is its lung mask, plus the mask
    files of the further structures it labels."""

    image_id: str  # file stem, unique within a dataset
    image_uri: str
    mask_uris: tuple[str, ...]  # the lung mask file(s); () when its source does not label the lungs
    others: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (structure name, its mask files), e.g. heart
    source: str = ""  # the data source's name (several sources in one run)

    def masks(self) -> dict[str, tuple[str, ...]]:
        """structure name -> mask files, for every structure this pair labels."""
        return {**({LUNGS: self.mask_uris} if self.mask_uris else {}), **dict(self.others)}

    def truth_string(self) -> str:
        """The ground truth as one string (infer's truth_uri column): the lung files '|'-joined, then
        ';name=files' per further structure (a lungs-only truth is just the '|'-joined lung files)."""
        return "".join(["|".join(self.mask_uris), *(f";{n}={'|'.join(f)}" for n, f in self.others)])


def parse_truth(text: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Pair.truth_string back: (lung files, {structure: files})."""
    lungs, *rest = text.split(";") if text else [""]
    others = {}
    for part in rest:
        name, _, files = part.partition("=")
        others[name] = tuple(f for f in files.split("|") if f)
    return tuple(f for f in lungs.split("|") if f), others


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
    return [e.uri for e in storage.list_files(uri, recursive=False) if names.may_be_image_name(e.uri)]


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


def _discover_structures(root: str, subdirs: dict[str, str], image_dir: str) -> Discovery:
    """cxr/ + structures/<part>/ (+ masks/ for the lungs when structures/ has no lung parts): a pair for each
    image that has every labelled structure's files; the others are reported."""
    folders = _subdirs(subdirs["structures"])
    by_part = {part: {names.stem(u): u for u in _images_in(uri)} for part, uri in folders.items()}
    mask_dir = next((subdirs[d] for d in MASK_DIRS if d in subdirs), None)
    if mask_dir is not None:
        by_part.setdefault("masks", {names.stem(u): u for u in _images_in(mask_dir)})
    labelled = {}  # structure -> its part folders
    for s in STRUCTURES.values():
        if s.name in by_part:
            labelled[s.name] = (s.name,)
        elif all(p in by_part for p in s.parts):
            labelled[s.name] = s.parts
    if LUNGS not in labelled and "masks" in by_part:
        labelled[LUNGS] = ("masks",)
    used = {p for parts in labelled.values() for p in parts}
    pairs, lonely = [], []
    for uri in _images_in(image_dir):
        stem = names.stem(uri)
        files = {name: tuple(by_part[p].get(stem) for p in parts) for name, parts in labelled.items()}
        if not files or any(None in f for f in files.values()):  # a missing part: report, do not guess
            lonely.append(uri)
            continue
        for p in used:
            by_part[p].pop(stem, None)
        lungs = files.pop(LUNGS, ())
        pairs.append(Pair(stem, uri, lungs, tuple(files.items())))
    leftover = sorted(u for p in used for u in by_part[p].values())
    return Discovery("structures", root, pairs, lonely, leftover)


def _files(cell, base: str) -> tuple[str, ...]:
    return tuple(names.resolve(m, base) for m in str(cell or "").split("|") if m and m != "nan")


def _discover_manifest(uri: str) -> tuple[Discovery, dict[str, str]]:
    table = read_table(uri)
    columns = set(table.columns)
    lung_column = "mask" if "mask" in columns else LUNGS
    others = [s for s in STRUCTURES if s != LUNGS and s in columns]
    if "image" not in columns or not ({lung_column} | set(others)) & columns:
        raise ValueError(f"manifest {uri} needs an 'image' column and a mask column ('mask' for the lungs, "
                         f"or one per structure: {', '.join(STRUCTURES)}), has {sorted(columns)}")
    base = storage.parent(uri)
    pairs, lonely, splits = [], [], {}
    for row in table.to_dict("records"):
        image = names.resolve(str(row["image"]), base)
        masks = _files(row.get(lung_column), base)
        extra = tuple((s, f) for s in others if (f := _files(row.get(s), base)))
        image_id = str(row["image_id"]) if "image_id" in columns else names.stem(image)
        if not masks and not extra:
            lonely.append(image)
            continue
        pairs.append(Pair(image_id, image, masks, extra, str(row.get("source") or "")))
        if "split" in columns and row["split"] in SPLITS:
            splits[image_id] = row["split"]
    return Discovery("manifest", uri, pairs, lonely, []), splits


def discover(uri: str) -> Discovery:
    """Find image/mask pairs under a folder, s3:// prefix or manifest file (layout detected)."""
    if names.is_manifest_name(uri):
        return _discover_manifest(uri)[0]
    if not storage.is_dir(uri):
        raise FileNotFoundError(f"dataset not found: {uri} "
                                "(expected a folder, s3:// prefix or manifest file)")
    subdirs = _subdirs(uri)
    image_dir = next((subdirs[d] for d in IMAGE_DIRS if d in subdirs), None)
    if "CXR_png" in subdirs and "ManualMask" in subdirs:
        found = _discover_montgomery(uri, subdirs)
    elif "structures" in subdirs and image_dir is not None:
        found = _discover_structures(uri, subdirs, image_dir)
    else:
        mask_dir = next((subdirs[d] for d in MASK_DIRS if d in subdirs), None)
        if image_dir is None or mask_dir is None:
            raise ValueError(
                f"cannot tell the layout of {uri}: expected an image folder ({', '.join(IMAGE_DIRS)}) and a "
                f"mask folder ({', '.join(MASK_DIRS)}) or a structures/ folder, or CXR_png + ManualMask "
                "(Montgomery), or a manifest "
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

    def structures(self) -> list[str]:
        """The structures some pair labels, in STRUCTURES order."""
        found = {name for p in self.discovery.pairs for name in p.masks()}
        return [s for s in STRUCTURES if s in found]

    def manifest_csv(self) -> str:
        """The split manifest as CSV (image_id, split, image, mask): enough to reproduce the run. With further
        structures or several sources, a column per structure and a `source` column follow (empty cell:
        not labelled); a lungs-only single-source manifest keeps the four columns (and so its digest)."""
        others = [s for s in self.structures() if s != LUNGS]
        sources = any(p.source for p in self.discovery.pairs)
        lines = [",".join(["image_id", "split", "image", "mask", *others, *(["source"] if sources else [])])]
        for p in sorted(self.discovery.pairs, key=lambda p: p.image_id):
            masks = p.masks()
            cells = [p.image_id, self.splits[p.image_id], p.image_uri, "|".join(p.mask_uris),
                     *("|".join(masks.get(s, ())) for s in others), *([p.source] if sources else [])]
            lines.append(",".join(cells))
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        """sha256 of the manifest: identifies exactly which images went into which split."""
        return hashlib.sha256(self.manifest_csv().encode()).hexdigest()

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Images per split of each source (several sources only; {} otherwise)."""
        out: dict[str, dict[str, int]] = {}
        for p in self.discovery.pairs:
            if p.source:
                out.setdefault(p.source, dict.fromkeys(SPLITS, 0))[self.splits[p.image_id]] += 1
        return out

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


def restrict(pair: Pair, structures, source: str) -> Pair | None:
    """The pair with only the labels of `structures` (and its source named); None when none is left."""
    lungs = pair.mask_uris if LUNGS in structures else ()
    others = tuple((name, files) for name, files in pair.others if name in structures)
    return Pair(pair.image_id, pair.image_uri, lungs, others, source) if lungs or others else None


def load_sources(sources: list[tuple[str, str, tuple[str, ...] | None]],
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 42,
                 structures: tuple[str, ...] = (LUNGS,)) -> SplitDataset:
    """Several labelled sources as one SplitDataset. sources: (name, uri, structures it should train, None =
    every one of `structures` it labels). Each source is split on its own, exactly as it would be alone
    (the same test images whichever other sources join), and each pair keeps the labels of `structures`
    only. Raises ValueError when a source labels none of them or image ids collide between sources."""
    pairs, splits, layouts = [], {}, []
    lonely_images, lonely_masks = [], []
    for name, uri, wanted in sources:
        one = load_split_dataset(uri, fractions, seed)
        wanted = tuple(s for s in structures if wanted is None or s in wanted)
        kept = [r for p in one.discovery.pairs if (r := restrict(p, wanted, name)) is not None]
        if not kept:
            raise ValueError(f"source {name} ({uri}) labels none of {', '.join(wanted)} "
                             f"(it labels {', '.join(one.structures()) or 'nothing'})")
        clash = {p.image_id for p in kept} & set(splits)
        if clash:
            raise ValueError(f"source {name}: image ids also in another source, e.g. {min(clash)}; "
                             "give the files unique names or use a manifest with an image_id column")
        pairs += kept
        splits.update({p.image_id: one.splits[p.image_id] for p in kept})
        layouts.append(f"{name} ({one.discovery.layout}: {', '.join(one.structures())})")
        lonely_images += one.discovery.unmatched_images
        lonely_masks += one.discovery.unmatched_masks
    root = " + ".join(uri for _, uri, _ in sources)
    return SplitDataset(Discovery("; ".join(layouts), root, pairs, lonely_images, lonely_masks), splits)


def write_manifest(dataset: SplitDataset, uri: str) -> str:
    """Write the split manifest CSV to `uri` (local or s3); returns its digest."""
    storage.write_text(uri, dataset.manifest_csv())
    return dataset.digest()


# --- loading ------------------------------------------------------------------------------------


def load_pair(pair: Pair, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair: (float32 HxW image in [0, 1], bool HxW mask = union of its mask files). The image
    takes the one input path's decode step (data/model_input.decode_frame: EXIF, inversion check)."""
    from raysegment.data.model_input import InputOptions, decode_frame

    options = InputOptions() if max_pixels is None else InputOptions(max_pixels=max_pixels)
    image = decode_frame(storage.read_bytes(pair.image_uri), pair.image_uri, options).image
    return image, load_mask(pair.mask_uris, image.shape, pair.image_uri)


def load_structures(pair: Pair, structures: tuple[str, ...], shape: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(bool (C, H, W) masks, bool (C,) labelled) for `structures` in order; a structure the pair does not
    label is an all-zero channel with labelled False (its loss is masked out in training)."""
    files = pair.masks()
    masks = np.zeros((len(structures), *shape), dtype=bool)
    labelled = np.array([name in files for name in structures], dtype=bool)
    for c, name in enumerate(structures):
        if labelled[c]:
            masks[c] = load_mask(files[name], shape, pair.image_uri)
    return masks, labelled


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
