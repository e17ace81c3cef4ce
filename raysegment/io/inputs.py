"""What to segment: the input images of a bulk inference run, listed from a folder / s3:// prefix or read
from a manifest, each with its identity (size, mtime or ETag) so a resumed run can tell changed files.

- A folder or prefix is listed recursively (storage.list_files) and filtered by name: the image extensions
  of datasets.IMAGE_EXTENSIONS, no extension, or a numeric one (DICOM files are often named by UID,
  e.g. 1.2.840.113619.2.55.3). Hidden files (".name") are skipped; so is anything under `exclude`
  (our own output, when it lies inside the input folder).
- A manifest is a .csv or .parquet file with a column of URIs (`image_uri`, `image`, `uri` or `path`, or
  the one named); relative entries are relative to the manifest's folder. Optional identity columns:
  `size`, `mtime_ns`, `etag`. Use one for archives too large to list.

Every input gets a `key`: its path relative to the input folder (or to the manifest entries' common
folder), sanitized, used to mirror the archive layout under --masks-out.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from raysegment.data.datasets import IMAGE_EXTENSIONS, _resolve, read_table
from raysegment.io import storage

MANIFEST_EXTENSIONS = (".csv", ".parquet")
MANIFEST_COLUMNS = ("image_uri", "image", "uri", "path")


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
        name = posixpath.basename(self.key)
        return name.rsplit(".", 1)[0] if "." in name else name


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_EXTENSIONS) and not storage.is_dir(uri)


def is_image_name(name: str) -> bool:
    """Image extension, no extension, or a numeric one (UID-named DICOM); hidden files are not images."""
    base = posixpath.basename(name.replace("\\", "/"))
    if not base or base.startswith("."):
        return False
    if "." not in base:
        return True
    ext = base.rsplit(".", 1)[1].lower()
    return "." + ext in IMAGE_EXTENSIONS or ext.isdigit()


def sanitize_key(key: str) -> str:
    """A relative, normalized '/'-path that cannot leave its prefix: no scheme, drive, '..', '.' or
    empty parts, no leading '/'. Returns "unnamed" when nothing is left."""
    key = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key.replace("\\", "/"))  # s3://, file://
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    while parts and re.fullmatch(r"[a-zA-Z]:", parts[0]):  # Windows drive letter(s): "while" keeps this
        parts = parts[1:]  # idempotent ("C:/C:" -> "C:" would lose its name on mask_key's second pass)
    return "/".join(parts) or "unnamed"


def mask_key(key: str) -> str:
    """Where the mask of input `key` goes under --masks-out: same folders, name + ".mask.png".

    The whole input name is kept (a.png and a.jpg in one folder must not share a mask), and the suffix
    cannot collide with another input's mask.
    """
    return sanitize_key(key) + ".mask.png"


def _strip_scheme(uri: str) -> str:
    return uri[len("s3://") :] if storage.is_s3(uri) else uri.replace("\\", "/")


def _relative_keys(uris: list[str]) -> list[str]:
    """Keys relative to the deepest folder all URIs share."""
    paths = [_strip_scheme(u) for u in uris]
    folders = {posixpath.dirname(p) for p in paths}
    try:
        common = posixpath.commonpath(list(folders)) if folders else ""
    except ValueError:  # mixed absolute and relative paths
        common = ""
    return [sanitize_key(posixpath.relpath(p, common) if common else p) for p in paths]


def list_folder(uri: str, exclude: tuple[str, ...] = (), s3: storage.S3Options | None = None) -> list[InputItem]:
    """Images under a local folder or s3:// prefix, sorted by URI."""

    def inner(u: str) -> str:  # path inside its filesystem: absolute local path, or bucket/key
        return storage.filesystem(u, s3)[1].replace("\\", "/").rstrip("/")

    root = inner(uri)
    skip = tuple(inner(e) + "/" for e in exclude if e and storage.is_s3(e) == storage.is_s3(uri))
    items = []
    for entry in storage.list_files(uri, recursive=True, s3=s3):
        path = inner(entry.uri)
        if not is_image_name(path) or path.startswith(skip):
            continue
        rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        items.append(InputItem(entry.uri, sanitize_key(rel), entry.size, entry.mtime_ns, entry.etag))
    return items


def _optional_int(value) -> int | None:
    try:
        return None if value in (None, "") else int(float(value))
    except (TypeError, ValueError):
        return None


def read_manifest(uri: str, column: str | None = None) -> list[InputItem]:
    """Inputs named by a .csv / .parquet manifest, in file order, duplicates removed."""
    table = read_table(uri)
    if column is None:
        column = next((c for c in MANIFEST_COLUMNS if c in table.columns), None)
    if column is None or column not in table.columns:
        raise ValueError(
            f"manifest {uri} has no image column: expected one of {', '.join(MANIFEST_COLUMNS)} "
            f"(or --manifest-column), found {', '.join(map(str, table.columns))}"
        )
    base = storage.parent(uri)
    rows = table.to_dict("records")
    uris = [_resolve(str(r[column]), base) for r in rows]
    keys = _relative_keys(uris)
    items, seen = [], set()
    for row, image_uri, key in zip(rows, uris, keys):
        if image_uri in seen or not str(row[column]).strip():
            continue
        seen.add(image_uri)
        etag = row.get("etag")
        items.append(InputItem(image_uri, key, _optional_int(row.get("size")), _optional_int(row.get("mtime_ns")),
                               str(etag) if etag not in (None, "") else None))
    return items


def list_inputs(uri: str, column: str | None = None, limit: int | None = None, exclude: tuple[str, ...] = (),
                s3: storage.S3Options | None = None) -> list[InputItem]:
    """The inputs of a run: a manifest's entries or a folder's images; the first `limit` when given."""
    items = read_manifest(uri, column) if is_manifest(uri) else list_folder(uri, exclude, s3)
    return items[:limit] if limit is not None else items
