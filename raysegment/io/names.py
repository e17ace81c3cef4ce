"""File-name rules, in one place: which names are images or manifests, stems, relative keys, mask keys, and
how a local name that is not valid UTF-8 becomes a URI (and back).

Names the product reads (a file's FORMAT is always decided by its bytes, io/decode.sniff_format; a name
only decides whether a file is looked at, and whether a file that is no image is an error or skipped):
- Skipped by name, never read (`listing_skip`): hidden files and folders (".name"; a hidden folder is not
  walked) and operating-system clutter: AppleDouble "._name" files, .DS_Store, Thumbs.db, ehthumbs.db,
  desktop.ini, "Icon\r", and the folders __MACOSX, $RECYCLE.BIN, System Volume Information.
- Inputs of bulk inference (`is_input_name`): every other file, whatever its name.
- Named like an image (`is_image_name`): an image extension (`IMAGE_EXTENSIONS`, any case: .png .jpg
  .jpeg .tif .tiff .bmp .gif .jp2 .j2k .dcm .dicom .ima) or a DICOM UID (digits and dots, e.g.
  1.2.840.113619.2.55.3). Such a file that does not decode is an error row (the user expected a film);
  a file of another name whose bytes are no image is a skipped row.
- Training data sets and ground-truth folders (`may_be_image_name`): names like an image, and names
  without an extension (DICOM files often have none).
- Manifests (`MANIFEST_EXTENSIONS`): .csv and .parquet files.
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".jp2", ".j2k", ".dcm",
                    ".dicom", ".ima")
# Operating-system clutter (compared in lower case): files, and folders that are never walked.
OS_CLUTTER_FILES = (".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r")
OS_CLUTTER_FOLDERS = ("__macosx", "$recycle.bin", "system volume information")
HIDDEN, OS_CLUTTER = "hidden", "os-clutter"  # listing_skip's reasons
_UID_NAME = re.compile(r"[0-9]+(\.[0-9]+)+")
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


def listing_skip(name: str, is_dir: bool = False) -> str | None:
    """Why a listing passes over a file or folder by its name alone: OS_CLUTTER ("._x", .DS_Store,
    Thumbs.db, desktop.ini, __MACOSX/, ...), HIDDEN (".name"), or None (it is looked at)."""
    base = basename(name)
    low = base.lower()
    if low.startswith("._") or low in OS_CLUTTER_FILES or (is_dir and low in OS_CLUTTER_FOLDERS):
        return OS_CLUTTER
    if base.startswith("."):
        return HIDDEN
    return None


def has_image_extension(name: str) -> bool:
    """One of IMAGE_EXTENSIONS, any case (x.png, A.DCM, scan.IMA)."""
    return basename(name).lower().endswith(IMAGE_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """Named like an image: an image extension or a DICOM UID (digits and dots, e.g. 1.2.840.113619.2.55.3);
    never a hidden or clutter file. A file so named that does not decode is an error, not a stray file."""
    base = basename(name)
    if not base or listing_skip(base) is not None:
        return False
    return has_image_extension(base) or _UID_NAME.fullmatch(base) is not None


def may_be_image_name(name: str) -> bool:
    """An image of a training data set or ground truth: named like an image, or without an extension."""
    base = basename(name)
    return is_image_name(base) or (bool(base) and listing_skip(base) is None and extension(base) == "")


def is_input_name(name: str) -> bool:
    """An input of bulk inference: any file that listing_skip does not pass over (its bytes decide what it
    is)."""
    base = basename(name)
    return bool(base) and listing_skip(base) is None


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
