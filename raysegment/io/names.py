"""File-name rules, in one place: which names are images or manifests, stems, relative keys, mask keys, and
how a local name that is not valid UTF-8 becomes a URI (and back).

Names the product reads:
- Image files (`IMAGE_EXTENSIONS`): .png .jpg .jpeg .tif .tiff .dcm, any case. Bulk inference also takes
  names without an extension or with a numeric one (DICOM files are often named by UID, e.g.
  1.2.840.113619.2.55.3): `is_input_name`. Training data sets take only `is_image_name`. Hidden files
  (".name") are never images.
- Manifests (`MANIFEST_EXTENSIONS`): .csv and .parquet files. A DICOM without its 128-byte preamble is
  only tried for names `may_be_dicom_name` accepts (.dcm, .dicom, none, numeric).
- The stem (name without its last extension) identifies an image: it matches images to masks and
  inference inputs to ground truth.

URIs of local files (`path_to_uri` / `uri_to_path`): a path whose bytes are valid UTF-8 is stored as the
plain absolute path, exactly as before (so results of earlier runs keep resuming). A path that is not
valid UTF-8 (e.g. Latin-1 bytes from an old Windows share) is stored as an RFC 8089 `file://` URI whose
path is percent-encoded byte for byte (`urllib.parse.quote_from_bytes`, "/" kept):
b"/data/caf\\xe9 1.png" -> "file:///data/caf%E9%201.png". It is unambiguous because listings only ever
produce absolute paths ("/...") for valid names, and reversible: `uri_to_path` percent-decodes any
`file://` URI back to the original bytes. S3 keys are always valid UTF-8 and stay as they are.

Keys: every input gets a relative `key` (its path under the input folder, `sanitize_key`), mirrored under
--masks-out by `mask_key`. Keys are unique within a run (`stable_key`) and every part of a mask key fits
the usual 255-byte file-name limit (`fit_name`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from urllib.parse import quote_from_bytes, unquote_to_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
FILE_SCHEME = "file://"
MAX_NAME_BYTES = 255  # longest file name (one path part) on ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units)
MASK_SUFFIX = ".mask.png"


def basename(uri: str) -> str:
    """Last part of a local path, file:// URI or s3:// URI (after a trailing '/')."""
    return posixpath.basename(uri.replace("\\", "/").rstrip("/"))


def stem(uri: str) -> str:
    """File name without its last extension: "a/b/img.dcm" -> "img", "1.2.840" -> "1.2"."""
    name = basename(uri)
    return name.rsplit(".", 1)[0] if "." in name else name


def extension(name: str) -> str:
    """Last extension, lower case, without the dot ("" when none)."""
    base = basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def is_image_name(name: str) -> bool:
    """An image file of a training data set: one of IMAGE_EXTENSIONS, not hidden."""
    base = basename(name)
    return bool(base) and not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def is_input_name(name: str) -> bool:
    """An input of bulk inference: an image extension, no extension, or a numeric one (UID-named DICOM);
    hidden files are not inputs."""
    base = basename(name)
    if not base or base.startswith("."):
        return False
    ext = extension(base)
    return ext == "" or "." + ext in IMAGE_EXTENSIONS or ext.isdigit()


def may_be_dicom_name(name: str) -> bool:
    """Names a DICOM without the 128-byte preamble is tried for: *.dcm / *.dicom, no extension, or a numeric
    one (DICOM files are often named by UID, e.g. 1.2.840.113619.2.55.3)."""
    ext = extension(name)
    return ext in ("", "dcm", "dicom") or ext.isdigit()


def is_manifest_name(name: str) -> bool:
    """A .csv or .parquet file name (whether it is a file, not a folder, is the caller's check)."""
    return name.lower().endswith(MANIFEST_EXTENSIONS)


def resolve(path: str, base: str) -> str:
    """A manifest entry as a URI: s3:// URIs, file:// URIs and absolute paths as they are, relative paths
    joined onto the manifest's folder `base`."""
    if path.startswith(("s3://", FILE_SCHEME)) or os.path.isabs(path):
        return path
    return posixpath.join(base.rstrip("/"), path) if base.startswith("s3://") else os.path.join(base, path)


# --------------------------------------------------------------------------- local names <-> URIs


def path_to_uri(path: bytes | str) -> str:
    """A local path (bytes as the OS gives them, or str) -> the URI stored in results (see module doc)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return FILE_SCHEME + quote_from_bytes(raw, safe="/")


def uri_to_path(uri: str) -> str | bytes:
    """The local path to open for `uri`: a file:// URI decodes to the original bytes, anything else
    is the path itself."""
    if uri.startswith(FILE_SCHEME):
        raw = unquote_to_bytes(uri[len(FILE_SCHEME):])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return uri


# --------------------------------------------------------------------------- keys


def sanitize_key(key: str) -> str:
    """A relative, normalized '/'-path that cannot leave its prefix: no scheme, drive, '..', '.' or
    empty parts, no leading '/'. Returns "unnamed" when nothing is left."""
    key = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key.replace("\\", "/"))  # s3://, file://
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    while parts and re.fullmatch(r"[a-zA-Z]:", parts[0]):  # Windows drive letter(s): "while" keeps this
        parts = parts[1:]  # idempotent ("C:/C:" -> "C:" would lose its name on mask_key's second pass)
    return "/".join(parts) or "unnamed"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def fit_name(name: str, suffix: str = "", limit: int = MAX_NAME_BYTES) -> str:
    """`name + suffix`, shortened to at most `limit` UTF-8 bytes: a name too long keeps its longest
    prefix that fits (whole characters) plus "~" and a digest of the full name, so two long names that
    share a prefix stay distinct."""
    if len((name + suffix).encode("utf-8")) <= limit:
        return name + suffix
    tag = "~" + _digest(name)
    room = limit - len((tag + suffix).encode("utf-8"))
    head = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + tag + suffix


def mask_key(key: str, suffix: str = MASK_SUFFIX) -> str:
    """Where the mask of input `key` goes under --masks-out: same folders, name + ".mask.png" (`suffix`).

    The whole input name is kept (a.png and a.jpg in one folder must not share a mask), the suffix cannot
    collide with another input's mask, and every path part fits MAX_NAME_BYTES.
    """
    parts = sanitize_key(key).split("/")
    return "/".join([*(fit_name(p) for p in parts[:-1]), fit_name(parts[-1], suffix)])


def stable_key(relative: str, uri: str) -> str:
    """The key of an input at `relative` (its path under the input folder or the manifest's common folder).

    A name that sanitize_key leaves as it is keeps it (two inputs cannot share such a path). A name it had to
    change (a scheme, drive, '..', '//', a leading '/') could then collide with another input's key, so it
    gets "~<digest of its URI>" before the extension: unique without remembering earlier keys, so a listing
    of 10^7 inputs can be keyed in a stream."""
    key = sanitize_key(relative)
    if key == relative:
        return key
    folder, name = posixpath.split(key)
    base, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    return posixpath.join(folder, f"{base}~{_digest(uri)}{dot}{ext}")
