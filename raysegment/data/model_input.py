"""THE path from an image file's bytes to the model input: every command that segments an image takes it.

    bytes --decode_frame--> Frame: float32 HxW in [0, 1], EXIF orientation applied by the decoder,
                                   an inverted PNG/JPEG/TIFF export inverted back (data/inversion.py),
                                   ImageMeta, the QC notes that say what was done on the way in
          --to_model_input--> (uint8 SxS model input, Geometry)  (data/preprocess.preprocess_image)
    prepare_input = both

Bulk inference's decode stage (infer/stages.py: the two steps apart, so an error row says which one
failed), single-image predict (infer/predict.py), `raysegment evaluate` (evaluation/evaluate.py),
calibration (evaluation/calibrate.py: decode_frame, then its acquisition shifts on the frame's image,
then to_model_input) and training's ingest (train/data.py) all call these functions and nothing else, so
one file gives one model input whichever command reads it (tests/test_layering.py checks that the
decode and preprocess primitives are called nowhere else). Training deliberately differs in ONE way,
written in train/data.py: it augments the model inputs (never the decode).

Errors: errors.DecodeError for bytes that do not decode. Its subclasses say the file is no film to
segment at all, which a caller may skip rather than count as a failure: NotAnImageError (no image format:
a stray file), NotAChestFilmError (NonImageDicomError: a DICOM structured report, key object selection,
presentation state, encapsulated PDF, DICOMDIR, ...; NotRadiographError: a DICOM whose Modality is not
among InputOptions.modalities), each with its `reason`.

`triage` decides the same from a file's first bytes only (SNIFF_BYTES: a range read on S3): bulk inference
reads a file that is not named like an image that far and no further unless those bytes are an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysegment.data.inversion import QC_NOTE as INVERSION_NOTE
from raysegment.data.inversion import correct_inversion
from raysegment.data.preprocess import Geometry, PreprocessConfig, preprocess_image
from raysegment.errors import NotAChestFilmError
from raysegment.io.decode import (
    DEFAULT_MAX_PIXELS,
    RADIOGRAPH_MODALITIES,
    ImageMeta,
    decode_image,
    probe_dicom,
    sniff_format,
)

EXIF_MIRRORED_NOTE = "exif_mirrored"  # an EXIF orientation with a mirror was applied
MULTIFRAME_NOTE = "multiframe_first_frame"  # a multi-frame DICOM or animated GIF: only frame 1 is segmented
LATERAL_NOTE = "lateral_view"  # DICOM ViewPosition LL/RL: segmented, no CTR (it is a frontal measure)

SNIFF_BYTES = 64 * 1024  # what `triage` reads of a file not named like an image
# A file whose first SNIFF_BYTES look like the start of a DICOM dataset without preamble but hold no whole
# header is read in full up to this size to settle it; a larger one is skipped by its size, unread.
SNIFF_WHOLE_LIMIT = 32 * 1024 * 1024
EMPTY_REASON = "empty file (0 bytes)"
NOT_AN_IMAGE_REASON = "not an image (no image format recognised)"
TOO_LARGE_REASON = f"not an image (no image header in its first {SNIFF_BYTES // 1024} KiB, too large to read)"


@dataclass(frozen=True)
class InputOptions:
    """How bytes become an image (the same for every command; infer's --no-inversion-check turns the
    inversion check off)."""

    correct_inversion: bool = True  # invert an inverted PNG/JPEG/TIFF export back (never DICOM)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard, checked on the header (--max-pixels)
    # DICOM Modality values segmented (--modalities); None: every modality. A DICOM without one is segmented.
    modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES


@dataclass(frozen=True)
class Frame:
    """One decoded X-ray, as the model should see it, before resizing."""

    image: np.ndarray  # float32 HxW in [0, 1]: EXIF orientation applied, inversion corrected
    meta: ImageMeta  # from the decoder (size, format, bit depth, pixel spacing, EXIF, frames)
    inversion_corrected: bool = False  # the file was an inverted export and was inverted back
    qc_notes: tuple[str, ...] = ()  # of severity "note" (postprocess/masks.QC_SEVERITY): never flags

    @property
    def frontal(self) -> bool:
        """False for a lateral film (DICOM ViewPosition): no CTR is measured on it."""
        return not self.meta.lateral


@dataclass(frozen=True)
class Prepared:
    """A file ready for the model: its frame, the uint8 SxS model input and how the two map."""

    frame: Frame
    model_input: np.ndarray  # uint8 SxS (S = PreprocessConfig.size)
    geometry: Geometry


def input_notes(meta: ImageMeta, inversion_corrected: bool) -> tuple[str, ...]:
    """The QC notes of what happened to a file on the way in (inversion, EXIF mirror, multi-frame, a
    lateral view)."""
    notes = []
    if inversion_corrected:
        notes.append(INVERSION_NOTE)
    if meta.exif_mirrored:
        notes.append(EXIF_MIRRORED_NOTE)
    if meta.frames > 1:
        notes.append(MULTIFRAME_NOTE)
    if meta.lateral:
        notes.append(LATERAL_NOTE)
    return tuple(notes)


def triage(head: bytes, name: str, size: int | None, options: InputOptions = InputOptions()) -> str | None:
    """Whether a file not named like an image is one, from its first bytes: None (read it whole and decode
    it: its bytes start like an image) or the reason it is skipped, unread past `head`.

    `head`: the file's first SNIFF_BYTES (all of it when shorter); `size`: its length when known. Skipped:
    an empty file, bytes of no image format (a README, an .xml), a DICOM object that holds no image or
    of a Modality not in options.modalities (told by its header, so a 500 MB CT is not read), and, unread,
    a file over SNIFF_WHOLE_LIMIT whose first bytes only might be a DICOM header."""
    if not head:
        return EMPTY_REASON
    whole = size is not None and size <= len(head)
    fmt = sniff_format(head, name)
    if fmt == "dicom":
        try:
            probe_dicom(head, name, options.modalities)
        except NotAChestFilmError as e:
            return e.reason
        return None
    if fmt is not None:
        return None
    group = int.from_bytes(head[:2], "little")
    maybe_bare_dicom = len(head) >= 8 and group % 2 == 0 and group <= 0x0028  # the header did not fit
    if maybe_bare_dicom and not whole:
        return None if size is None or size <= SNIFF_WHOLE_LIMIT else TOO_LARGE_REASON
    return NOT_AN_IMAGE_REASON


def decode_frame(data: bytes, name: str = "", options: InputOptions = InputOptions()) -> Frame:
    """Encoded bytes -> Frame. `name` (a file name, best without its folders) prefixes error messages.

    Raises errors.DecodeError (NotAnImageError when the bytes are no image format at all).
    """
    decoded = decode_image(data, name, options.max_pixels, options.modalities)
    image, inverted = decoded.image, False
    if options.correct_inversion:
        image, inverted = correct_inversion(decoded.image, decoded.meta.format)
    return Frame(image, decoded.meta, inverted, input_notes(decoded.meta, inverted))


def to_model_input(frame: Frame | np.ndarray, preprocess: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """A Frame (or a float32 HxW image in [0, 1]) -> (uint8 SxS model input, Geometry)."""
    image = frame.image if isinstance(frame, Frame) else frame
    return preprocess_image(np.asarray(image, dtype=np.float32), preprocess)


def prepare_input(data: bytes, name: str, preprocess: PreprocessConfig,
                  options: InputOptions = InputOptions()) -> Prepared:
    """decode_frame, then to_model_input."""
    frame = decode_frame(data, name, options)
    model_input, geo = to_model_input(frame, preprocess)
    return Prepared(frame, model_input, geo)
