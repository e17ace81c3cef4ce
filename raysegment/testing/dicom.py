"""Synthetic DICOM files for tests and fixtures: a minimal valid single-frame DX image with the tags the
decoder reads (rescale, window, photometric interpretation, pixel spacing)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def make_dicom_bytes(
    array: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    imager_pixel_spacing: tuple[float, float] | None = None,
    bits_stored: int = 16,
) -> bytes:
    """A minimal valid DICOM file (Explicit VR Little Endian, 16-bit unsigned, one frame).

    array: uint16 HxW stored values; window: (centre, width) in modality (rescaled) units;
    spacings: (row, col) mm. For tests and fixtures (in the package, so Ray workers can import it).
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "ui" or array.min() < 0 or array.max() > 65535:
        raise ValueError("make_dicom_bytes needs an HxW integer array with values in 0..65535")
    array = np.ascontiguousarray(array, dtype="<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [f"{v:g}" for v in imager_pixel_spacing]
    ds.PixelData = array.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_study(data: bytes) -> bytes:
    """A DICOM file (e.g. from make_dicom_bytes) plus the patient and study attributes that a DICOM SEG
    copies from its source."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P7", "Test^Patient", "", ""
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "", "20260101", "120000"
    ds.ReferringPhysicianName = ""
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


# --------------------------------------------------------------------------- what a PACS export holds

# SOP classes of DICOM objects without an image, as PACS exports and CDs carry them beside the films.
NON_IMAGE_SOP_CLASSES = {
    "sr": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "ko": "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document Storage
    "pr": "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    "pdf": "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
    "dicomdir": "1.2.840.10008.1.3.10",  # Media Storage Directory Storage
}
_MODALITY = {"sr": "SR", "ko": "KO", "pr": "PR", "pdf": "DOC"}


def _save(ds, meta_sop: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def non_image_dicom(kind: str) -> bytes:
    """A small valid DICOM object without an image: kind "sr" (structured report), "ko" (key object
    selection), "pr" (presentation state), "pdf" (encapsulated PDF) or "dicomdir" (a media directory)."""
    from pydicom.sequence import Sequence

    sop = NON_IMAGE_SOP_CLASSES[kind]
    ds = Dataset()
    if kind == "dicomdir":
        ds.FileSetID = "EXPORT"
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.FileSetConsistencyFlag = 0
        ds.DirectoryRecordSequence = Sequence([])
        return _save(ds, sop)
    ds.SOPClassUID, ds.SOPInstanceUID = sop, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "P7", _MODALITY[kind]
    if kind == "sr":
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "No acute findings."
        ds.ContentSequence = Sequence([item])
    elif kind == "ko":
        ds.ValueType = "CONTAINER"
        ds.CurrentRequestedProcedureEvidenceSequence = Sequence([])
    elif kind == "pr":
        ds.ContentLabel = "VIEW"
        ds.PresentationLUTShape = "IDENTITY"
    else:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return _save(ds, sop)


def with_attributes(data: bytes, **attributes) -> bytes:
    """A DICOM file with attributes set or replaced (e.g. Modality="CT", ViewPosition="LL", SOPClassUID=...);
    a value None deletes the attribute."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if attributes.get("SOPClassUID"):
        ds.file_meta.MediaStorageSOPClassUID = attributes["SOPClassUID"]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def without_preamble(data: bytes) -> bytes:
    """The same DICOM written as a bare implicit-VR dataset: no 128-byte preamble, no "DICM", no file meta
    (as older modalities and some CDs store them)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)
    return out.getvalue()
