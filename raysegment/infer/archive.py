"""The parts of bulk inference that real hospital archives need, hooked into the pipeline's stages:

- decode stage (`prepare_image`): record the EXIF rotation the decoder applied, invert an inverted
  PNG/JPEG/TIFF export back (data/inversion.py, unless --no-inversion-check), and collect the QC notes
  that say so: "inverted_input_corrected", "exif_mirrored" (an EXIF orientation with a mirror),
  "multiframe_first_frame" (a multi-frame DICOM: only frame 1 is segmented). Notes never set qc_flag.
- postprocess stage (`write_dicom_seg`): a DICOM SEG per DICOM input under --dicom-seg-out.
"""

from __future__ import annotations

import numpy as np

from raysegment.data.inversion import QC_NOTE as INVERSION_NOTE
from raysegment.data.inversion import correct_inversion
from raysegment.io import storage
from raysegment.io.decode import DecodedImage

EXIF_MIRRORED_NOTE = "exif_mirrored"
MULTIFRAME_NOTE = "multiframe_first_frame"


def prepare_image(decoded: DecodedImage, fix_inversion: bool, row: dict) -> np.ndarray:
    """The image to segment (inverted back when it is an inverted export); sets the row's exif_rotation,
    inversion_corrected and qc_notes."""
    meta, notes = decoded.meta, []
    image, inverted = (correct_inversion(decoded.image, meta.format) if fix_inversion
                       else (decoded.image, False))
    if inverted:
        notes.append(INVERSION_NOTE)
    if meta.exif_mirrored:
        notes.append(EXIF_MIRRORED_NOTE)
    if meta.frames > 1:
        notes.append(MULTIFRAME_NOTE)
    row.update(exif_rotation=meta.exif_rotation, inversion_corrected=inverted, qc_notes=notes)
    return image


def write_dicom_seg(row: dict, mask: np.ndarray, job, structures: dict[str, np.ndarray] | None = None) -> str:
    """Write the DICOM SEG of one DICOM input row under job.dicom_seg_out; returns its URI. The source is
    read again (only its header and size matter): the decode stage does not ship bytes this far.
    structures: a multi-structure model's further masks by name (heart, clavicles), one segment each."""
    from raysegment.outputs.dicom_seg import make_dicom_seg, seg_key

    source = storage.read_bytes(row["image_uri"], job.s3)
    uri = storage.join(job.dicom_seg_out, seg_key(row["key"]))
    seg = make_dicom_seg(source, mask, job.model_id, job.dicom_seg_sides, structures)
    storage.write_bytes(uri, seg, job.s3)
    return uri
