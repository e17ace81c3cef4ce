"""The part of bulk inference that DICOM archives need in the postprocess stage: `write_dicom_seg`, a DICOM
SEG per DICOM input under --dicom-seg-out.

(How a file becomes the model input, EXIF notes and inversion correction included, is
data/model_input.py: the one input path every command shares.)
"""

from __future__ import annotations

import numpy as np

from raysegment.io import storage


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
