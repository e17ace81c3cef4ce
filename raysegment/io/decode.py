"""The one decode path for chest X-ray images and masks (training, inference, evaluation).

``decode_image(bytes) -> DecodedImage``: a float32 HxW image in [0, 1] plus ``ImageMeta``.
Supported, recognised by their bytes (never the name): PNG (1-16 bit), JPEG, TIFF (gray/RGB/RGBA,
integer or float), BMP, GIF (the first frame; ``ImageMeta.frames`` says how many there were), JPEG 2000
(.jp2 files and raw .j2k codestreams, 8-16 bit) and DICOM (with or without the 128-byte preamble).
Anything we cannot decode -- empty, truncated, corrupt, not an image, too many pixels,
an undecodable DICOM transfer syntax -- raises ``DecodeError`` (a ``ValueError``) with a
one-line reason; no cv2/PIL/pydicom exception type escapes. Its subclasses say why a file is no film
to segment at all (errors.py): ``NotAnImageError`` (no image format), ``NonImageDicomError`` (a DICOM
object of a SOP class without an image: structured report, key object selection, presentation state,
encapsulated PDF, DICOMDIR, ...) and ``NotRadiographError`` (a DICOM of a Modality not asked for).

Scaling to [0, 1]:
  * unsigned integer rasters are divided by their dtype max (uint8 / 255, uint16 / 65535),
    so a 16-bit PNG that only uses 12 bits comes out dark (max 4095/65535); that is the
    standard PNG meaning and we do not guess;
  * float and signed-integer rasters are min-max normalised;
  * DICOM: modality LUT (rescale slope/intercept), then the VOI LUT or window centre/width,
    scaled so the VOI output range maps to [0, 1]; without a usable VOI, min-max.
    MONOCHROME1 is inverted so that high values are always bright.
Colour is converted to gray (alpha ignored).

EXIF orientation (JPEG, TIFF, PNG eXIf) IS applied: pixels come out as every viewer displays them,
for images and masks alike (masks decode through the same path, so pairs stay aligned), and
``ImageMeta.exif_rotation`` / ``exif_mirrored`` record what was done (height and width are the
displayed ones).

DICOM pixel data is decoded by pydicom with the plugin measured fastest for its transfer syntax
(``PREFERRED_PLUGINS``; docs/formats.md), falling back to any other installed one. Multi-frame
objects: the first frame is used, and ``ImageMeta.frames`` says how many there were.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from raysegment.errors import DecodeError, NonImageDicomError, NotAnImageError, NotRadiographError

DEFAULT_MAX_PIXELS = 100_000_000  # infer --max-pixels, training data.max_pixels
# DICOM modalities that are radiographs to segment (infer --modalities): computed and digital radiography,
# and "other" (secondary captures of films are often OT). A DICOM without a Modality is segmented too.
RADIOGRAPH_MODALITIES = ("CR", "DX", "OT")
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")  # DICOM ViewPosition of a lateral film
FORMATS = ("png", "jpeg", "tiff", "bmp", "gif", "jpeg2000", "dicom")

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # zero-length IEND chunk incl. its CRC
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)  # BITMAPCOREHEADER .. BITMAPV5HEADER
_GIF_SIGS = (b"GIF87a", b"GIF89a")
_GIF_TRAILER = b"\x3b"
_JP2_SIG = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JPEG 2000 signature box of a .jp2 file
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # a raw codestream (.j2k, .j2c) starts SOC then SIZ
_J2K_EOC = b"\xff\xd9"
_PNG_COMPRESSION = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; masks compress well anyway


@dataclass(frozen=True)
class ImageMeta:
    height: int
    width: int
    bit_depth: int  # bits per sample in the file: PNG IHDR depth, DICOM BitsStored, else dtype bits
    format: str  # one of FORMATS: "png", "jpeg", "tiff", "bmp", "gif", "jpeg2000", "dicom"
    channels: int  # channels in the file before conversion to gray (1, 3, 4)
    pixel_spacing_mm: tuple[float, float] | None  # (row, col) when known
    photometric: str | None = None  # DICOM PhotometricInterpretation
    exif_rotation: int = 0  # degrees clockwise applied from the EXIF orientation (after the mirror, if any)
    exif_mirrored: bool = False  # the EXIF orientation also mirrored the image left-right (codes 2, 4, 5, 7)
    frames: int = 1  # DICOM NumberOfFrames, GIF frames; only the first is decoded
    modality: str | None = None  # DICOM Modality (CR, DX, ...)
    view_position: str | None = None  # DICOM ViewPosition (PA, AP, LL, ...)

    @property
    def lateral(self) -> bool:
        """A lateral film by its DICOM ViewPosition (LL, RL)."""
        return (self.view_position or "").upper() in LATERAL_VIEWS


@dataclass(frozen=True)
class DecodedImage:
    image: np.ndarray  # float32 HxW in [0, 1]
    meta: ImageMeta


# --------------------------------------------------------------------------- errors


def _error(msg: str, name: str = "") -> DecodeError:
    """DecodeError with the file name in front and everything on one line."""
    msg = " ".join(msg.split())
    return DecodeError(f"{name}: {msg}" if name else msg)


def _check_pixel_count(height: int, width: int, max_pixels: int, name: str) -> None:
    """Reject decompression bombs from the header dimensions, before any pixel is decoded."""
    if height <= 0 or width <= 0:
        raise _error(f"image header claims an empty image ({width}x{height}); the file is corrupt", name)
    if height * width > max_pixels:
        raise _error(
            f"image is {width}x{height} = {height * width / 1e6:.4g} MP, over the "
            f"{max_pixels / 1e6:.4g} MP limit: raise it if this is a genuine image (raysegment infer "
            f"--max-pixels N; data.max_pixels in a training config)",
            name,
        )


# --------------------------------------------------------------------------- sniffing




def _read_bare_dicom_header(data: bytes):
    """pydicom Dataset (no pixels) for a DICOM without the 128-byte preamble, or None.

    Tried on any bytes (the name never decides); `data` may be just the first KiB of a file: pydicom
    stops at the end of what it was given. A dataset counts as DICOM when it has Rows and Columns (an
    image) or a DICOM SOP Class UID (any DICOM object: a structured report has no Rows)."""
    if len(data) < 8:
        return None
    # Cheap filter before asking pydicom (force=True "reads" almost anything): the first
    # element of a real dataset is in an even group no later than the image group 0028.
    group = struct.unpack("<H", data[:2])[0]
    if group % 2 or group > 0x0028:
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        sop = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "")
                  or "")
        return ds if ("Rows" in ds and "Columns" in ds) or sop.startswith(_DICOM_UID_ROOT) else None
    except Exception:  # noqa: BLE001 - garbage makes pydicom raise anything; it just means "not DICOM"
        return None


_DICOM_UID_ROOT = "1.2.840.10008."


def _is_bmp(head: bytes) -> bool:
    return head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_DIB_SIZES


def sniff_format(data: bytes, name: str = "") -> str | None:
    """Format from the magic bytes (never the name; `name` is accepted for callers' messages only): one of
    FORMATS or None. Looks at the first bytes only, so the first 64 KiB of a file are enough."""
    head = data[:16]
    if head.startswith(_PNG_SIG):
        return "png"
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head[:6] in _GIF_SIGS:
        return "gif"
    if head.startswith((_JP2_SIG, _J2K_SOC_SIZ)):
        return "jpeg2000"
    if _is_bmp(data[:18]):
        return "bmp"
    if data[128:132] == b"DICM":
        return "dicom"
    if _read_bare_dicom_header(data) is not None:
        return "dicom"
    return None


def _sniff_or_raise(data: bytes, name: str) -> str:
    if len(data) == 0:
        raise _error("empty file (0 bytes)", name)
    fmt = sniff_format(data, name)
    if fmt is None:
        msg = (f"not an image: unrecognised header {data[:8]!r} (expected PNG, JPEG, TIFF, BMP, GIF, "
               "JPEG 2000 or DICOM)")
        raise NotAnImageError(_error(msg, name).args[0])
    return fmt


# --------------------------------------------------------------------------- DICOM objects

# SOP classes that hold no image, by UID prefix (PS3.4 B.5), most specific first: what a PACS export, a
# CD or a DICOMDIR brings along with the films. The name in a skip reason is pydicom's name of the UID.
NON_IMAGE_SOP_CLASSES = (
    ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection"),
    ("1.2.840.10008.5.1.4.1.1.88.", "Structured Report"),
    ("1.2.840.10008.5.1.4.1.1.11.", "Presentation State"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF"),
    ("1.2.840.10008.5.1.4.1.1.104.", "Encapsulated Document"),
    ("1.2.840.10008.1.3.10", "DICOMDIR"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation"),
    ("1.2.840.10008.5.1.4.1.1.66", "Raw Data or Registration"),
    ("1.2.840.10008.5.1.4.1.1.67", "Real World Value Mapping"),
    ("1.2.840.10008.5.1.4.1.1.9.", "Waveform"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose"),
    ("1.2.840.10008.5.1.4.1.1.481.", "Radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.90.", "Content Assessment"),
    ("1.2.840.10008.5.1.4.1.1.131", "Structured Display"),
    ("1.2.840.10008.5.1.4.1.1.200.", "Protocol"),
    ("1.2.840.10008.5.1.4.38.", "Hanging Protocol"),
    ("1.2.840.10008.5.1.4.39.", "Color Palette"),
    ("1.2.840.10008.5.1.4.43.", "Implant Template"),
    ("1.2.840.10008.5.1.4.44.", "Implant Template"),
    ("1.2.840.10008.5.1.4.45.", "Implant Template"),
)


def _sop_class(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return str(uid or "").strip()


def modality_reason(modality: str) -> str:
    """The skip reason of a DICOM image of `modality` (summaries count it; resume matches it)."""
    return f"not a chest radiograph (Modality {modality})"


MODALITY_REASON_PREFIX = "not a chest radiograph (Modality "


def check_dicom_object(ds, name: str = "",
                       modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES) -> None:
    """Raise NonImageDicomError for a SOP class that holds no image (a DICOMDIR included), and
    NotRadiographError for an image whose Modality is not in `modalities` (None: any; a dataset without a
    Modality always passes). Works on a header read without pixels, even a partial one."""
    from pydicom.uid import UID

    uid = _sop_class(ds)
    kind = next((k for prefix, k in NON_IMAGE_SOP_CLASSES if uid == prefix.rstrip(".") or
                 (prefix.endswith(".") and uid.startswith(prefix))), None)
    if kind is None and "DirectoryRecordSequence" in ds:
        kind = "DICOMDIR"
    if kind is not None:
        title = UID(uid).name if uid else ""
        detail = f" ({title})" if title and title != uid and title != kind else ""
        reason = f"not an image: DICOM {kind}{detail}"
        raise NonImageDicomError(_error(reason, name).args[0], reason)
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modalities is not None and modality and modality not in {m.upper() for m in modalities}:
        reason = modality_reason(modality)
        raise NotRadiographError(_error(reason, name).args[0], reason)


def probe_dicom(head: bytes, name: str = "", modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES
                ) -> None:
    """check_dicom_object on the header in `head` (the first KiB of a DICOM file): raises as it does, so
    a structured report or a CT is skipped without reading the rest. A header that does not parse raises
    nothing here (the full decode will say what is wrong)."""
    import pydicom

    try:
        force = head[128:132] != b"DICM"
        ds = pydicom.dcmread(io.BytesIO(head), force=force, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a damaged header: the whole file's decode names the problem
        return
    check_dicom_object(ds, name, modalities)


# --------------------------------------------------------------------------- headers


def _png_header(data: bytes, name: str) -> tuple[int, int, int]:
    """(height, width, bit_depth) from the IHDR chunk, which must come first."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _error("truncated or corrupt PNG (no IHDR chunk after the signature)", name)
    width, height, depth = struct.unpack(">IIB", data[16:25])
    return height, width, depth


def _pil_open(data: bytes, fmt: str, name: str):
    """PIL image object with only the header parsed (no pixels read).

    The plugin class is used directly instead of ``Image.open`` because ``Image.open`` runs
    PIL's own decompression-bomb check (warning / error on ``MAX_IMAGE_PIXELS``); our
    ``max_pixels`` is the one guard, and this avoids mutating PIL's global setting.
    """
    from PIL import BmpImagePlugin, GifImagePlugin, Jpeg2KImagePlugin, JpegImagePlugin, TiffImagePlugin

    cls = {"jpeg": JpegImagePlugin.JpegImageFile, "tiff": TiffImagePlugin.TiffImageFile,
           "bmp": BmpImagePlugin.BmpImageFile, "gif": GifImagePlugin.GifImageFile,
           "jpeg2000": Jpeg2KImagePlugin.Jpeg2KImageFile}[fmt]
    try:
        return cls(io.BytesIO(data))
    except Exception as e:  # PIL raises SyntaxError/OSError/struct.error/... on bad headers
        label = _LABELS.get(fmt, fmt.upper())
        raise _error(f"corrupt {label} header ({e}); the file is damaged or not a {label}", name) from e


_LABELS = {"jpeg2000": "JPEG 2000", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF"}


def _read_dicom(data: bytes, name: str, stop_before_pixels: bool):
    import pydicom

    force = data[128:132] != b"DICM"  # preamble-less files only parse with force=True
    try:
        return pydicom.dcmread(io.BytesIO(data), force=force, stop_before_pixels=stop_before_pixels)
    except Exception as e:
        raise _error(f"corrupt DICOM ({type(e).__name__}: {e})", name) from e


def _dicom_size(ds, name: str) -> tuple[int, int]:
    try:
        return int(ds.Rows), int(ds.Columns)
    except Exception as e:
        raise _error(
            "DICOM has no readable Rows/Columns: the file is truncated or damaged; re-copy it", name) from e


def image_size(data: bytes, name: str = "") -> tuple[int, int]:
    """(height, width) from the header only, without decoding pixels; DecodeError when unreadable."""
    data = bytes(data)
    fmt = _sniff_or_raise(data, name)
    if fmt == "png":
        h, w, _ = _png_header(data, name)
        return h, w
    if fmt == "dicom":
        return _dicom_size(_read_dicom(data, name, stop_before_pixels=True), name)
    w, h = _pil_open(data, fmt, name).size
    return h, w


# --------------------------------------------------------------------------- truncation checks


def _check_png_complete(data: bytes, name: str) -> None:
    # Some cv2/libpng builds decode a truncated PNG partially without complaint.
    # Trailing junk after IEND is legal-ish and decoders ignore it, hence rfind.
    if not data.endswith(_PNG_IEND) and data.rfind(b"IEND\xaeB`\x82") < 0:
        raise _error("truncated PNG (no IEND chunk): the file is incomplete; re-copy it", name)


def _check_jpeg_complete(data: bytes, name: str) -> None:
    # libjpeg pads a truncated scan with gray and only warns; the EOI marker must end the file
    # (zero padding after it is tolerated, as written by some storage systems).
    if not data.endswith(_JPEG_EOI) and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise _error("truncated JPEG (no FFD9 end-of-image marker): the file is incomplete; re-copy it", name)


def _check_bmp_complete(data: bytes, name: str) -> None:
    # bfSize (bytes 2-6) is the whole file's size as written; a shorter file lost its last rows.
    declared = struct.unpack("<I", data[2:6])[0]
    if declared > len(data):
        raise _error(f"truncated BMP (header says {declared} bytes, file has {len(data)}): the file is "
                     "incomplete; re-copy it", name)


def _check_gif_complete(data: bytes, name: str) -> None:
    if not data.rstrip(b"\x00").endswith(_GIF_TRAILER):
        raise _error("truncated GIF (no trailer byte 3B): the file is incomplete; re-copy it", name)


def _check_jpeg2000_complete(data: bytes, name: str) -> None:
    """A raw codestream must end with its EOC marker; a .jp2 file's boxes must all lie inside the data."""
    if not data.startswith(_JP2_SIG):
        if not data.rstrip(b"\x00").endswith(_J2K_EOC):
            raise _error("truncated JPEG 2000 codestream (no FFD9 end-of-codestream marker): the file is "
                         "incomplete; re-copy it", name)
        return
    at = 0
    while at + 8 <= len(data):
        size = struct.unpack(">I", data[at:at + 4])[0]
        if size == 1 and at + 16 <= len(data):  # XLBox: a 64-bit length
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        if size == 0:  # the last box runs to the end of the file
            return
        if size < 8 or at + size > len(data):
            raise _error(f"truncated JPEG 2000 file (a box ends at byte {at + size}, file has {len(data)}): "
                         "the file is incomplete; re-copy it", name)
        at += size


def _gif_frames(pil_image) -> int:
    try:
        return int(getattr(pil_image, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged later frame: the first one is what is decoded
        return 1


def _check_tiff_complete(pil_image, data: bytes, name: str) -> None:
    """The first page's strips/tiles must lie inside the data."""
    tags = pil_image.tag_v2
    offsets = tags.get(273) or tags.get(324)  # StripOffsets / TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts / TileByteCounts
    try:
        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
    except (TypeError, ValueError):  # missing or mistyped tags: let the decoder judge
        return
    if end > len(data):
        raise _error(
            f"truncated TIFF (pixel data ends at byte {end}, file has {len(data)}): "
            "the file is incomplete; re-copy it",
            name,
        )


# --------------------------------------------------------------------------- rasters


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """HxW[xC] cv2 array (BGR / BGRA order) -> HxW, same dtype."""
    if arr.ndim == 2:
        return arr
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY)
    return np.ascontiguousarray(arr[:, :, 0])  # 1 or 2 (gray + alpha) channels


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Any numeric HxW -> float32 in [0, 1]; a constant image becomes all zeros."""
    arr = np.nan_to_num(arr.astype(np.float32, copy=False))
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return (arr - lo) / np.float32(hi - lo)


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Unsigned integers are divided by the dtype max (exact: 65535 -> 1.0); others min-max."""
    if arr.dtype.kind == "u":
        return np.divide(arr, np.float32(np.iinfo(arr.dtype).max), dtype=np.float32)
    return _minmax(arr)


# EXIF orientation code -> (mirror left-right first, then rotate clockwise by degrees); checked against
# PIL.ImageOps.exif_transpose by a test.
EXIF_ORIENTATIONS = {1: (False, 0), 2: (True, 0), 3: (False, 180), 4: (True, 180), 5: (True, 270),
                     6: (False, 90), 7: (True, 90), 8: (False, 270)}
_EXIF_ORIENTATION_TAG = 0x0112


def _exif_orientation(pil_image) -> int:
    """EXIF orientation code 1-8 of a header-parsed PIL image (1 when absent or unreadable)."""
    try:
        code = int(pil_image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the decode: no orientation
        return 1
    return code if code in EXIF_ORIENTATIONS else 1


def _png_orientation(data: bytes) -> int:
    """EXIF orientation of a PNG with an eXIf chunk (rare; PIL parses it only when present)."""
    if b"eXIf" not in data[: data.find(b"IDAT") if b"IDAT" in data else len(data)]:
        return 1
    from PIL import PngImagePlugin

    try:
        return _exif_orientation(PngImagePlugin.PngImageFile(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - unreadable eXIf: no orientation
        return 1


def apply_orientation(arr: np.ndarray, code: int) -> np.ndarray:
    """Stored HxW[xC] pixels -> as displayed for EXIF orientation `code` (mirror, then rotate clockwise)."""
    mirror, degrees = EXIF_ORIENTATIONS.get(code, (False, 0))
    if mirror:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(np.rot90(arr, -(degrees // 90)) if degrees else arr)


_COMPLETE = {"bmp": _check_bmp_complete, "gif": _check_gif_complete, "jpeg2000": _check_jpeg2000_complete}


def _decode_raster(data: bytes, fmt: str, name: str, max_pixels: int) -> tuple[np.ndarray, ImageMeta]:
    """PNG/JPEG/TIFF/BMP/GIF/JPEG 2000 -> (gray HxW array in the file's dtype, as displayed: EXIF orientation
    applied, meta). Header checks come first."""
    depth, frames, orientation = 0, 1, 1
    label = _LABELS[fmt]
    if fmt == "png":
        h, w, depth = _png_header(data, name)
        _check_pixel_count(h, w, max_pixels, name)
        _check_png_complete(data, name)
        orientation = _png_orientation(data)
    else:
        pil_image = _pil_open(data, fmt, name)
        w, h = pil_image.size
        _check_pixel_count(h, w, max_pixels, name)
        if fmt == "jpeg":
            _check_jpeg_complete(data, name)
        elif fmt == "tiff":
            _check_tiff_complete(pil_image, data, name)
        else:
            _COMPLETE[fmt](data, name)
        if fmt in ("jpeg", "tiff"):
            orientation = _exif_orientation(pil_image)
        if fmt == "gif":
            frames = _gif_frames(pil_image)
    try:
        # IMREAD_UNCHANGED keeps 16 bit and float, ignores JPEG/PNG EXIF orientation (applied below);
        # cv2 returns None on failure. A GIF comes out as its first frame.
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise _error(f"cannot decode {label}: {e}", name) from e
    if arr is None or arr.size == 0:
        raise _error(f"corrupt {label}: the decoder rejected the pixel data; the file is damaged", name)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    gray = _to_gray(arr)
    if fmt != "tiff":  # cv2's TIFF reader applies it itself (even with IMREAD_IGNORE_ORIENTATION)
        gray = apply_orientation(gray, orientation)
    mirrored, degrees = EXIF_ORIENTATIONS[orientation]
    meta = ImageMeta(
        height=gray.shape[0],
        width=gray.shape[1],
        bit_depth=depth or gray.dtype.itemsize * 8,
        format=fmt,
        channels=channels,
        pixel_spacing_mm=None,
        exif_rotation=degrees,
        exif_mirrored=mirrored,
        frames=frames,
    )
    return gray, meta


# --------------------------------------------------------------------------- DICOM


def _ensure_transfer_syntax(ds) -> None:
    """Preamble-less files often lack file meta; pydicom needs a Transfer Syntax UID to decode,
    so take it from the encoding the parser detected."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


# Fastest permissively licensed plugin first, per transfer syntax, measured by bench/dicom_decoders.py
# (docs/formats.md); pydicom's own order would pick GDCM for JPEG baseline (3x slower than Pillow),
# GDCM for JPEG-LS (1.7x slower than pyjpegls) and its pure-numpy RLE (10x slower than pylibjpeg-rle).
PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.50": ("pillow", "gdcm", "pylibjpeg"),  # JPEG baseline (process 1)
    "1.2.840.10008.1.2.4.51": ("pillow", "gdcm", "pylibjpeg"),  # JPEG extended (12 bit: pylibjpeg only)
    "1.2.840.10008.1.2.4.57": ("gdcm", "pylibjpeg"),  # JPEG lossless (process 14)
    "1.2.840.10008.1.2.4.70": ("gdcm", "pylibjpeg"),  # JPEG lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm", "pylibjpeg"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("gdcm", "pillow", "pylibjpeg"),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("gdcm", "pillow", "pylibjpeg"),  # JPEG 2000
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom", "gdcm"),  # RLE lossless
}


def _preferred_plugin(uid) -> str | None:
    """The first installed plugin of PREFERRED_PLUGINS for this syntax, or None (pydicom's default)."""
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(uid).available_plugins
    except (NotImplementedError, ValueError):
        return None
    return next((p for p in PREFERRED_PLUGINS.get(str(uid), ()) if p in available), None)


def _first_frame(ds) -> np.ndarray:
    """Pixels of the first frame, with the preferred plugin; any other installed one when that fails."""
    plugin = _preferred_plugin(ds.file_meta.get("TransferSyntaxUID"))
    if plugin:
        try:
            ds.pixel_array_options(index=0, decoding_plugin=plugin)
            return ds.pixel_array
        except Exception as e:  # noqa: BLE001 - e.g. a bit depth this plugin refuses: let pydicom try others
            logging.getLogger(__name__).debug("DICOM plugin %s failed (%s); trying the others", plugin, e)
    ds.pixel_array_options(index=0, decoding_plugin="")
    return ds.pixel_array


def _dicom_pixel_error(ds, exc: Exception, name: str) -> DecodeError:
    """Name the transfer syntax, and the missing decoder packages when that is the cause."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID")
    ts = f"'{uid.name}' ({uid})" if uid else "(unknown)"
    reason = f"{type(exc).__name__}: {exc}"
    if uid is not None and not uid.is_transfer_syntax:
        return _error(
            f"cannot decode DICOM pixel data: {ts} is not a transfer syntax; the file is corrupt", name
        )
    if uid is not None and uid.is_compressed:
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:  # no decoder class at all for this UID
            available = False
        if not available:
            return _error(
                f"cannot decode DICOM pixel data: no decoder installed for transfer syntax {ts}; "
                "the default decoders (python-gdcm, pyjpegls, pylibjpeg, pylibjpeg-rle) are missing: "
                "reinstall raysegment, or `pip install raysegment[jpeg-gpl]` for 12-bit JPEG Extended",
                name,
            )
        return _error(
            f"cannot decode DICOM pixel data with transfer syntax {ts} ({reason}); either the data "
            "is corrupt or the installed decoders (python-gdcm, pyjpegls, pylibjpeg + pylibjpeg-rle, Pillow) "
            "cannot handle it; 12-bit JPEG Extended needs `pip install raysegment[jpeg-gpl]` (GPLv3)",
            name,
        )
    return _error(f"cannot decode DICOM pixel data with transfer syntax {ts} ({reason})", name)


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """(row, col) mm from PixelSpacing, else ImagerPixelSpacing (detector plane), else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            # MultiValue for the normal "row\\col" form, a single DSfloat when malformed
            values = [] if value is None else [float(v) for v in (value if ds[keyword].VM > 1 else [value])]
        except (ValueError, TypeError):  # malformed DS strings: spacing unknown, not a decode failure
            values = []
        if values and min(values) > 0:
            return values[0], values[-1]
    return None


def _voi_range(ds) -> tuple[float, float] | None:
    """Output range (lo, hi) of the VOI transform apply_voi_lut applies, None when there is none.

    Found by pushing the extreme inputs through the same pydicom function, so it matches
    whatever pydicom does for windowing (LINEAR, LINEAR_EXACT, SIGMOID) and VOI LUTs.
    """
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        first, entries = int(descriptor[1]), int(descriptor[0]) or 2**16
        out = apply_voi_lut(np.array([first, first + entries - 1], np.int64), ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(over="ignore"):  # SIGMOID of +-1e12 overflows exp(); the limit is fine
            out = apply_voi_lut(np.array([-1e12, 1e12]), ds)
    else:
        return None
    return float(out.min()), float(out.max())


def _linear_window(ds) -> tuple[float, float] | None:
    """(centre, width) of the first window when the VOI is a plain LINEAR window, else None."""
    if "VOILUTSequence" in ds or "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    if str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() != "LINEAR":
        return None
    c, w = ds["WindowCenter"], ds["WindowWidth"]
    center = float(c.value[0] if c.VM > 1 else c.value)
    width = float(w.value[0] if w.VM > 1 else w.value)
    return (center, width) if width > 1 else None


def _apply_linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR window (PS3.3 C.11.2.1.2.1) straight to float32 [0, 1].

    Equals pydicom's apply_voi_lut scaled by its output range (a test checks this), but works
    in place in float32 instead of float64 masks: ~10x faster, and this is the common case.
    """
    unit = values.astype(np.float32)
    unit -= np.float32(center - 0.5)
    unit *= np.float32(1.0 / (width - 1))
    unit += np.float32(0.5)
    return np.clip(unit, 0.0, 1.0, out=unit)


def _pydicom_voi(values: np.ndarray, ds) -> np.ndarray | None:
    """VOI LUT / non-LINEAR window via pydicom's apply_voi_lut, scaled to float32 [0, 1]; None
    when the dataset has no VOI."""
    from pydicom.pixels import apply_voi_lut

    lo_hi = _voi_range(ds)
    if lo_hi is None or lo_hi[1] <= lo_hi[0]:
        return None
    if "VOILUTSequence" in ds:  # LUT indices must be integers
        values = np.rint(values).astype(np.int64)
    voi = apply_voi_lut(values, ds)
    return np.clip((voi - lo_hi[0]) / (lo_hi[1] - lo_hi[0]), 0.0, 1.0).astype(np.float32)


def _dicom_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """Monochrome stored values -> float32 [0, 1]: modality LUT, VOI, MONOCHROME1 inversion."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds)
    try:
        window = _linear_window(ds)
        unit = _apply_linear_window(values, *window) if window else _pydicom_voi(values, ds)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError):
        # Malformed VOI (zero width, broken LUT) is common in the wild: ignore it, min-max.
        unit = None
    if unit is None:
        unit = _minmax(values)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: the minimum value is white
    return unit


def _decode_dicom(data: bytes, name: str, max_pixels: int, modalities: tuple[str, ...] | None = None
                  ) -> DecodedImage:
    ds = _read_dicom(data, name, stop_before_pixels=False)
    try:
        check_dicom_object(ds, name, modalities)
        return _dicom_image(ds, name, max_pixels)
    except DecodeError:
        raise
    except Exception as e:  # pydicom parses elements lazily: a damaged one fails on first access
        raise _error(f"corrupt DICOM ({type(e).__name__}: {e})", name) from e


def _check_native_pixel_length(ds, rows: int, cols: int, name: str) -> None:
    """Uncompressed pixel data shorter than Rows x Columns x samples x frames x BitsAllocated: a file cut
    short (a copy that stopped), said as such rather than as pydicom's length message."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None or uid.is_compressed:
        return
    try:
        bits = int(ds.get("BitsAllocated") or 0) * int(ds.get("SamplesPerPixel") or 1) * rows * cols
        bits *= int(ds.get("NumberOfFrames") or 1)
        have = len(ds.PixelData) * 8
    except (TypeError, ValueError):  # malformed numbers: the decoder judges
        return
    if bits and have < bits:
        raise _error(f"truncated DICOM (pixel data has {have // 8} of {bits // 8} bytes): the file is "
                     "incomplete; re-copy it", name)


def _dicom_image(ds, name: str, max_pixels: int) -> DecodedImage:
    """Parsed dataset -> DecodedImage (first frame only)."""
    rows, cols = _dicom_size(ds, name)
    # Pixel data is decoded lazily by ds.pixel_array, so this is still before decoding.
    _check_pixel_count(rows, cols, max_pixels, name)
    if "PixelData" not in ds:
        raise _error("DICOM image without pixel data (no PixelData element): the file is truncated or "
                     "damaged; re-copy it", name)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper() or None
    _ensure_transfer_syntax(ds)
    _check_native_pixel_length(ds, rows, cols, name)
    try:
        arr = _first_frame(ds)
    except Exception as e:
        raise _dicom_pixel_error(ds, e, name) from e
    if arr.ndim == 3:  # colour (pydicom converts YBR to RGB): no modality/VOI for colour
        image = _to_unit_float(cv2.cvtColor(np.ascontiguousarray(arr[:, :, :3]), cv2.COLOR_RGB2GRAY))
    else:
        image = _dicom_to_unit(arr, ds)
    meta = ImageMeta(
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or arr.dtype.itemsize * 8),
        format="dicom",
        channels=int(ds.get("SamplesPerPixel") or 1),
        pixel_spacing_mm=_pixel_spacing(ds),
        photometric=photometric,
        frames=int(ds.get("NumberOfFrames") or 1),
        modality=str(ds.get("Modality", "") or "").strip().upper() or None,
        view_position=str(ds.get("ViewPosition", "") or "").strip().upper() or None,
    )
    return DecodedImage(image=image, meta=meta)


# --------------------------------------------------------------------------- public decode


def decode_image(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                 modalities: tuple[str, ...] | None = None) -> DecodedImage:
    """Encoded bytes -> float32 HxW image in [0, 1] + meta. Raises DecodeError only.

    ``max_pixels`` is checked against the header before decoding. cv2 has its own limit
    (env OPENCV_IO_MAX_IMAGE_PIXELS, default 2**30) for rasters above that. ``modalities``: the DICOM
    Modality values to decode (None: any; data/model_input.InputOptions passes RADIOGRAPH_MODALITIES);
    NotRadiographError for another one, NonImageDicomError for a DICOM object that holds no image.
    """
    data = bytes(data)  # accepts bytearray / memoryview; no copy for bytes
    fmt = _sniff_or_raise(data, name)
    if fmt == "dicom":
        return _decode_dicom(data, name, max_pixels, modalities)
    gray, meta = _decode_raster(data, fmt, name, max_pixels)
    return DecodedImage(image=_to_unit_float(gray), meta=meta)


# --------------------------------------------------------------------------- masks


def binarize(mask: np.ndarray) -> np.ndarray:
    """bool array, same shape: integers are scaled by their dtype max, then > 0.5; floats > 0.5."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind in "ui":
        # x / max > 0.5  <=>  x > max / 2 (max is odd, so no ties), without a float copy
        return mask > np.iinfo(mask.dtype).max / 2
    return mask > 0.5


def decode_mask(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded mask -> bool HxW: same decode path as decode_image, then binarize.

    One exception to the >0.5 rule: an integer mask whose only values are 0 and 1 (a common
    "label" encoding) would binarize to all False, so there 1 is taken as foreground.
    """
    data = bytes(data)
    fmt = _sniff_or_raise(data, name)
    if fmt == "dicom":
        return binarize(_decode_dicom(data, name, max_pixels).image)
    gray, _ = _decode_raster(data, fmt, name, max_pixels)
    if gray.dtype.kind in "ui" and gray.max() == 1:
        return gray > 0
    return binarize(gray)


def _mask_to_bool(mask: np.ndarray) -> np.ndarray:
    """bool / 0-1 / 0-255 HxW -> bool HxW (0-1 data thresholded at 0.5, 0-255 at 127.5)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if mask.size == 0:
        return mask.astype(bool)
    lo, hi = float(mask.min()), float(mask.max())
    if lo < 0 or hi > 255 or np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"mask values must be bool, 0-1 or 0-255, got range [{lo}, {hi}]")
    return mask > (0.5 if hi <= 1 else 127.5)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """bool / 0-1 / 0-255 HxW mask -> 8-bit gray PNG bytes holding 0/255."""
    pixels = _mask_to_bool(mask).astype(np.uint8) * np.uint8(255)
    ok, buf = cv2.imencode(".png", pixels, _PNG_COMPRESSION)
    if not ok:
        raise ValueError(f"cv2 could not encode a mask of shape {pixels.shape} as PNG")
    return buf.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    """PNG bytes from encode_mask_png -> the same bool HxW mask."""
    return decode_mask(data)


def encode_png(image: np.ndarray) -> bytes:
    """uint8/uint16 HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) -> PNG bytes (8 or 16 bit)."""
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png needs uint8 or uint16, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # cv2 writes BGR order
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif image.ndim != 2:
        raise ValueError(f"encode_png needs HxW, HxWx3 or HxWx4, got shape {image.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), _PNG_COMPRESSION)
    if not ok:
        raise ValueError(f"cv2 could not encode an image of shape {image.shape} as PNG")
    return buf.tobytes()
