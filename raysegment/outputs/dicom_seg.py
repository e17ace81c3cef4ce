"""DICOM Segmentation (SEG) output for DICOM inputs (`raysegment infer --dicom-seg-out URI`).

One binary SEG object per DICOM input, written with highdicom (MIT), that a PACS or DICOM viewer loads
over the source image:
- segment 1 "Lung": category SCT 91723000 "Anatomical Structure", type SCT 39607008 "Lung"; or, with
  `sides=True`, segment 1 "Right lung" (SCT 3341006) and segment 2 "Left lung" (SCT 44029006), split by
  position like the right/left areas of the results (patient's right = image left);
- a multi-structure model's further structures (heart, clavicles) as one more segment each, after the
  lung segment(s), labelled and coded from data/structures.STRUCTURES (e.g. "Heart", SCT 80891009 "Heart";
  "Clavicles", SCT 51299004 "Clavicle"). Segments may overlap (clavicles over the lungs): each is its own
  binary frame, so every segment's pixels are exactly its mask;
- algorithm identification: name "raysegment", family DCM 123110 "Artificial Intelligence", version =
  the package version, parameter model_id = the weights' digest (also the device serial number);
- references the source image (its study, series and SOP instance: same study, new series), same
  patient; pixels are exactly the results' mask (original resolution, 1 bit per pixel).
"""

from __future__ import annotations

import io

import numpy as np

from raysegment.data.structures import LUNGS, STRUCTURES, further_structures
from raysegment.io import names
from raysegment.postprocess.masks import split_lungs

SEG_SUFFIX = ".seg.dcm"
SEG_SERIES_NUMBER = 9901  # far from scanner series numbers, so viewers list it apart


def seg_key(key: str) -> str:
    """Where the SEG of input `key` goes under --dicom-seg-out (like names.mask_key, suffix .seg.dcm)."""
    return names.mask_key(key, SEG_SUFFIX)


def _descriptions(sides: bool, model_id: str, extra: tuple[str, ...] = ()):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import raysegment

    algorithm = hd.AlgorithmIdentificationSequence(
        name="raysegment", family=codes.cid7162.ArtificialIntelligence, version=raysegment.__version__,
        parameters={"model_id": model_id},
    )
    types = ([("Right lung", hd.sr.CodedConcept("3341006", "SCT", "Right lung")),
              ("Left lung", hd.sr.CodedConcept("44029006", "SCT", "Left lung"))] if sides
             else [("Lung", codes.SCT.Lung)])
    for name in extra:
        structure = STRUCTURES[name]
        types.append((structure.label, hd.sr.CodedConcept(structure.snomed[0], "SCT", structure.snomed[1])))
    return [
        hd.seg.SegmentDescription(
            segment_number=i, segment_label=label,
            segmented_property_category=codes.cid7150.AnatomicalStructure, segmented_property_type=prop,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        )
        for i, (label, prop) in enumerate(types, start=1)
    ]


def make_dicom_seg(source: bytes, mask: np.ndarray, model_id: str, sides: bool = False,
                   structures: dict[str, np.ndarray] | None = None) -> bytes:
    """Encoded source DICOM + bool HxW lung mask (its size) -> encoded DICOM SEG bytes.

    structures: further structures' bool HxW masks by name (e.g. {"heart": ..., "clavicles": ...}), one
    segment each after the lung segment(s), in the STRUCTURES order; None or {}: lungs only.
    Raises ValueError when the source cannot carry a SEG (e.g. missing patient/study attributes) or a
    structure is unknown, the lungs, or not the mask's size."""
    import highdicom as hd
    import pydicom

    import raysegment

    ds = pydicom.dcmread(io.BytesIO(source), force=True)
    mask = np.asarray(mask, dtype=bool)
    if (int(ds.Rows), int(ds.Columns)) != mask.shape:
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the DICOM {ds.Columns}x{ds.Rows}")
    extra = _check_structures(structures or {}, mask.shape)
    if sides:
        right, left = split_lungs(mask)
        labels = right.astype(np.uint8) + 2 * left.astype(np.uint8)  # label map: 1 right, 2 left
        lung_segments = [right, left]
    else:
        labels = mask.astype(np.uint8)
        lung_segments = [mask]
    model_name, description = "raysegment lung UNet", "raysegment lung segmentation"
    if extra:
        # Overlapping segments (clavicles over the lungs) cannot share a label map: the "stacked segments"
        # array (frames, rows, cols, segments) gives every segment its own binary frame.
        segments = lung_segments + [np.asarray(structures[n], dtype=bool) for n in extra]
        labels = np.stack(segments, axis=-1)[None].astype(np.uint8)  # (1, H, W, segments)
        model_name = "raysegment UNet"
        description = "raysegment " + ", ".join([LUNGS, *extra]) + " segmentation"
    try:
        seg = hd.seg.Segmentation(
            source_images=[ds], pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_descriptions(sides, model_id, extra), series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="raysegment", manufacturer_model_name=model_name,
            software_versions=raysegment.__version__, device_serial_number=model_id,
            series_description=description, omit_empty_frames=False,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot make a DICOM SEG for this source: {type(e).__name__}: {e}") from e
    out = io.BytesIO()
    seg.save_as(out)
    return out.getvalue()


def _check_structures(structures: dict[str, np.ndarray], shape: tuple[int, int]) -> tuple[str, ...]:
    """The further structures' names in STRUCTURES order. ValueError: the lungs, unknown, wrong size."""
    try:
        names = further_structures(structures)
    except ValueError as e:
        raise ValueError(f"DICOM SEG: {e}") from None
    for name in names:
        got = np.shape(structures[name])
        if got != shape:
            raise ValueError(f"DICOM SEG: the {name} mask is {got}, the lung mask {shape}")
    return names


def read_seg_mask(data: bytes) -> np.ndarray:
    """Encoded SEG -> bool HxW union of its segments (one frame per segment of a 2D source)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    return np.asarray(ds.pixel_array).reshape(-1, int(ds.Rows), int(ds.Columns)).any(axis=0)


def read_seg_segments(data: bytes) -> dict[str, np.ndarray]:
    """Encoded SEG of a 2D source -> {segment label: bool HxW}, in segment number order (e.g. "Lung",
    "Heart", "Clavicles"). Frames are matched to segments by their ReferencedSegmentNumber (per frame, or
    in the shared functional groups when there is one segment)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    frames = np.asarray(ds.pixel_array).reshape(-1, int(ds.Rows), int(ds.Columns)).astype(bool)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    out = {label: np.zeros(frames.shape[1:], bool) for _, label in sorted(labels.items())}
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [shared] * len(frames)
    for frame, group in zip(frames, per_frame, strict=True):
        ident = group.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        out[labels[int(ident[0].ReferencedSegmentNumber)]] |= frame
    return out
