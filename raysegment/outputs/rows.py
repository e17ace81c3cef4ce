"""THE row of results.SCHEMA for one image: built from what the input step recorded and a scored mask.

    data.model_input.Frame --input_fields--> the input's columns (format, size, spacing, EXIF, inversion,
                                             QC notes), carried by bulk inference's decode stage
    + postprocess.scoring.Scored --result_row--> a full results.SCHEMA row (mask, areas, QC, structures,
                                                 CTR, metrics)
    any failure --error_fields--> status "error", the stage, the exception type, a one-line reason
    no chest film --skip_fields--> status "skipped" and the reason (a README, a DICOM structured report,
                                   a CT), never a failure

Bulk inference (infer/stages.py) and `raysegment evaluate` (evaluation/evaluate.py) build their rows here,
so the same image gives the same columns, the same QC lists and the same error texts in both. Writing files
(mask PNGs under --masks-out, DICOM SEG) is the caller's: a row builder only describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import raysegment
from raysegment.data.model_input import Frame
from raysegment.errors import DecodeError, NotAnImageError
from raysegment.io import storage
from raysegment.io.decode import encode_mask_png
from raysegment.io.rle import encode_rle
from raysegment.outputs.results import SCHEMA, SCHEMA_VERSION
from raysegment.postprocess.scoring import Scored

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RowOptions:
    """What a row records besides the image: who made it and which outputs it carries."""

    run_id: str
    model_id: str
    threshold: float  # the probability threshold the mask was cut at
    calibration_id: str | None = None  # the QC calibration behind quality_score (None: none)
    mask_png: bool = True  # carry the mask as PNG bytes (mask_rle is always there)


def error_type(error: BaseException) -> str:
    """The error_type column. A file named like an image whose bytes are no image at all is reported as a
    DecodeError, as it always was (NotAnImageError only lets a caller tell it apart: bulk inference skips
    such a file when its name is not an image's either)."""
    return DecodeError.__name__ if isinstance(error, NotAnImageError) else type(error).__name__


def error_fields(stage: str, error: BaseException) -> dict:
    """status "error" at `stage` (results.STAGES) with a one-line, credential-free reason."""
    text = storage.redact(" ".join(str(error).split()))[:MAX_ERROR_CHARS]
    return {"status": "error", "error_stage": stage, "error_type": error_type(error),
            "error": text or type(error).__name__}


def mark_error(row: dict, stage: str, error: BaseException) -> None:
    """Turn `row` into an error row (error_fields) in place."""
    row.update(error_fields(stage, error))


def skip_fields(reason: str) -> dict:
    """status "skipped" with its reason (short, no file name: summaries count rows by it)."""
    return {"status": "skipped", "error_stage": None, "error_type": None, "error": None,
            "skip_reason": " ".join(reason.split())[:MAX_ERROR_CHARS]}


def mark_skipped(row: dict, reason: str) -> None:
    """Turn `row` into a skipped row (skip_fields) in place."""
    row.update(skip_fields(reason))


def input_fields(frame: Frame, spacing_mm: float | None = None) -> dict:
    """The input's columns of a row. spacing_mm: the pixel spacing to assume when the file has none."""
    meta = frame.meta
    spacing = meta.pixel_spacing_mm or ((spacing_mm, spacing_mm) if spacing_mm else (None, None))
    return {"image_format": meta.format, "bit_depth": meta.bit_depth, "height": meta.height,
            "width": meta.width, "pixel_spacing_row_mm": spacing[0], "pixel_spacing_col_mm": spacing[1],
            "exif_rotation": meta.exif_rotation, "inversion_corrected": frame.inversion_corrected,
            "qc_notes": list(frame.qc_notes)}


def spacing_of(fields: dict) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm of a row's input columns, or None when unknown."""
    spacing = (fields.get("pixel_spacing_row_mm"), fields.get("pixel_spacing_col_mm"))
    return spacing if None not in spacing else None


def base_row(fields: dict, options: RowOptions) -> dict:
    """The provenance columns plus every SCHEMA column `fields` has (an error row is just this)."""
    out = {name: fields[name] for name in SCHEMA.names if name in fields}
    out.update(schema_version=SCHEMA_VERSION, run_id=options.run_id, model_id=options.model_id,
               package_version=raysegment.__version__, calibration_id=options.calibration_id)
    return out


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def structure_fields(scored: Scored, spacing: tuple[float, float] | None) -> dict:
    """The structures list and CTR columns of a multi-structure model's row; {} for a lungs-only model (its
    rows keep those columns null)."""
    if not scored.structures:
        return {}
    # scoring already turned a NaN dice into None
    cm2 = spacing[0] * spacing[1] / 100.0 if spacing else None
    parts = [{"name": p.name, "area_px": p.area_px, "area_cm2": p.area_px * cm2 if cm2 else None,
              "mask_rle": encode_rle(p.mask), "dice": (p.metrics or {}).get("dice")}
             for p in scored.structures]
    c = scored.ctr
    ctr = ({"ctr": c.ctr, "heart_width_px": c.heart_width_px, "thoracic_width_px": c.thoracic_width_px,
            "thoracic_row": c.thoracic_row} if c else {})
    return {"structures": parts, **ctr}


def result_row(fields: dict, scored: Scored, options: RowOptions) -> dict:
    """A results.SCHEMA row of one scored image. fields: the input's columns (input_fields plus identity:
    image_uri, image_id, truth_uri, ...), scored: postprocess.scoring.score of its probability."""
    out = base_row(fields, options)
    seg, flags = scored.segmentation, scored.qc_reasons
    spacing = spacing_of(fields)
    notes = [*(fields.get("qc_notes") or []), *scored.qc_notes]  # the input's first (inversion, ...)
    out.update({
        "status": "ok", "error_stage": None, "error_type": None, "error": None, "skip_reason": None,
        "mask_png": encode_mask_png(seg.mask) if options.mask_png else None,
        "mask_rle": encode_rle(seg.mask), "threshold": options.threshold, "lung_area_px": seg.area_px,
        "lung_fraction": seg.fraction, "right_lung_area_px": seg.right_area_px,
        "left_lung_area_px": seg.left_area_px,
        "lung_area_cm2": seg.area_px * spacing[0] * spacing[1] / 100.0 if spacing else None,
        "n_components": seg.n_components, "mean_confidence": _finite(seg.mean_confidence),
        "qc_flag": bool(flags), "qc_reasons": flags, "qc_notes": notes,
        "quality_score": scored.quality_score,
        **structure_fields(scored, spacing),
    })
    # A bad truth file is the ground truth's problem, not the prediction's: the row stays ok.
    out.update(scored.metrics or {}, truth_error=scored.truth_error)
    return out
