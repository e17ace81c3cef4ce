"""What to segment: the input images of a bulk inference run, listed from a folder / s3:// prefix or read
from a manifest, each with its identity (size, mtime or ETag) so a resumed run can tell changed files.

- A folder or prefix is listed recursively and filtered by name (names.is_input_name: an image extension,
  none, or a numeric one, as DICOM files are often named by UID, e.g. 1.2.840.113619.2.55.3). Hidden
  files (".name") are skipped; so is anything under `exclude` (our own output, when it lies inside the
  input folder). A local folder is listed by name bytes (storage.iter_local_tree), so every entry `ls`
  shows with such a name becomes an input, whatever it is: names that are not UTF-8 (stored escaped,
  see names.py), dangling symlinks, FIFOs, unreadable files and folders named like images (e.g. x.png/)
  are inputs too, and the read stage turns each into an error row with the reason.
- A manifest is a .csv or .parquet file with a column of URIs (`image_uri`, `image`, `uri` or `path`, or
  the one named); relative entries are relative to the manifest's folder. Optional identity columns:
  `size`, `mtime_ns`, `etag`. Use one for archives too large to list.

Every input gets a `key`: its path relative to the input folder (or to the manifest entries' common
folder), sanitized and unique within the run, used to mirror the archive layout under --masks-out.

This module walks folders (iter_folder) and holds the manifest's column names and value parsing; the run's
one listing, manifests included, is infer/worklist.iter_listing (in Arrow tables, for archives of 10^7
inputs), and resume is worklist.todo.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from raysegment.io import names, storage

MANIFEST_COLUMNS = ("image_uri", "image", "uri", "path")
OUTPUT, FOLDER_MARKER = "output", "folder-marker"  # Skipped reasons besides names.HIDDEN, names.OS_CLUTTER
log = logging.getLogger(__name__)


class Skipped:
    """What a listing passed over by name, counted by reason (files, so a skipped folder counts the files
    below it), with the first few examples; every path goes to the log (INFO: the log file, not the
    console). O(reasons + examples) memory whatever the archive's size."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def add(self, reason: str, where: str, files: int = 1, folder: bool = False) -> None:
        self.counts[reason] += files
        shown = f"{where}/ ({files} files)" if folder else where
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(shown)
        log.info("skipped by name (%s): %s", reason, shown)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts.most_common())


@dataclass(frozen=True)
class InputItem:
    uri: str
    key: str  # sanitized relative path, e.g. "site1/patient7/img.dcm"
    size: int | None = None  # bytes; None when a manifest does not say
    mtime_ns: int | None = None
    etag: str | None = None

    @property
    def image_id(self) -> str:
        """File stem: how inputs are matched to ground truth (as datasets.discover names pairs)."""
        return names.stem(self.key)


def is_manifest(uri: str) -> bool:
    return names.is_manifest_name(uri) and not storage.is_dir(uri)


def iter_folder(uri: str, exclude: tuple[str, ...] = (), s3: storage.S3Options | None = None,
                skipped: Skipped | None = None) -> Iterator[InputItem]:
    """Inputs under a local folder or s3:// prefix, one folder at a time in the order of their full paths
    (a stream: memory does not grow with the archive); what is passed over by name goes to `skipped`."""

    def inner(u: str) -> str:  # path inside its filesystem: absolute local path, or bucket/key
        if not storage.is_s3(u):
            # Only the OS separator becomes "/": on POSIX a backslash is part of a file name (a\b.png and
            # a/b.png are two inputs; stable_key gives the first a digest, so their masks never collide).
            return os.path.abspath(os.path.expanduser(u)).replace(os.sep, "/").rstrip("/")
        return uri_path(u).rstrip("/")

    def uri_path(u: str) -> str:
        return u[len("s3://"):] if storage.is_s3(u) else u

    def path_of(entry_uri: str) -> str:
        return entry_uri if entry_uri.startswith(names.FILE_SCHEME) else inner(entry_uri)

    local = not storage.is_s3(uri)
    root_path = names.uri_to_path(uri) if local else uri
    root = inner(root_path) if isinstance(root_path, str) else uri.rstrip("/")  # bytes: an escaped root
    skip = tuple(inner(e) + "/" for e in exclude if e and storage.is_s3(e) == storage.is_s3(uri))
    skipped = skipped if skipped is not None else Skipped()

    def folder_reason(folder_uri: str) -> str | None:
        if (path_of(folder_uri) + "/").startswith(skip):
            return OUTPUT
        return names.listing_skip(folder_uri, is_dir=True)

    for entry in storage.iter_files(uri, s3, prune=lambda u: folder_reason(u) is not None):
        path = path_of(entry.uri)
        relative = _relative(path, root)
        if entry.kind == "pruned":
            skipped.add(folder_reason(entry.uri) or names.HIDDEN, relative, entry.size, folder=True)
            continue
        if entry.kind == "marker":  # an S3 "x/" object; x.png/ is itself a row, which accounts for it
            if not names.has_image_extension(entry.uri):
                skipped.add(FOLDER_MARKER, relative + "/")
            continue
        if entry.kind == "dir":
            # A folder named like an image file (x.png/) is surely a mistake worth a row; UID-named DICOM
            # series folders ("1.2.840...") are not. Its contents are listed as usual.
            if not names.has_image_extension(entry.uri):
                continue
        elif path != root:  # the one file given as --input is an input whatever its name
            if path.startswith(skip):
                skipped.add(OUTPUT, relative)
                continue
            reason = names.listing_skip(entry.uri)
            if reason is not None:
                skipped.add(reason, relative)
                continue
        # (a folder that could not be listed, kind "unlistable dir", is always a row: its images would
        # be lost)
        key = names.stable_key(relative, entry.uri)
        yield InputItem(entry.uri, key, entry.size, entry.mtime_ns, entry.etag)


def _relative(path: str, root: str) -> str:
    """`path` relative to `root`; escaped (file://) paths compare on their percent-encoded text."""
    if path.startswith(names.FILE_SCHEME):
        path = path[len(names.FILE_SCHEME):]
        root = root[len(names.FILE_SCHEME):] if root.startswith(names.FILE_SCHEME) else quote(root, safe="/")
    return posixpath.relpath(path, root) if path != root else posixpath.basename(path)


def read_table(uri: str):
    """Read a CSV or Parquet file (local or s3) into a pandas DataFrame."""
    import io

    import pandas as pd
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri)
    if uri.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def optional_int(value) -> int | None:
    try:
        return None if value in (None, "") else int(float(value))
    except (TypeError, ValueError):
        return None
