"""`raysegment evaluate`: a checkpoint on one split of a labelled dataset, scored at the ORIGINAL resolution.

No Ray: one process runs predict.py's steps (data/model_input.py's input path: decode, inversion check,
preprocess -> forward_structures -> postprocess/scoring.score), so every mask is pixel-identical to what
`raysegment infer` writes for the same image, and scores it against the expert mask with
metrics.image_metrics (dice, iou, precision, recall, hd95 in pixels, hd95_mm when the file has a pixel
spacing). Each image's row is built by outputs/rows.py, as infer's are: the same columns, QC lists and
error texts (an unreadable image: status "error", error_stage read / decode / preprocess).

Which images: `--data` is a dataset (folder, s3:// prefix, manifest) split by datasets.load_split_dataset
(80/10/10, seed 42, as training does), or a run's split_manifest.csv (its split column wins). Without
--data, the run's own manifest next to the checkpoint (RUN_DIR/split_manifest.csv for RUN_DIR/best) is
used. When the checkpoint records the digest of its training split and the split evaluated here differs,
a warning says so: test images might have been training images.

Scoring is postprocess/scoring.py (shared with `infer --ground-truth` and training's test evaluation); the
summary is results.summarize_results (shared with infer), plus the worst cases by dice.

Outputs in --out (local or s3://): per_image.parquet (one row per image, errors included: the results
schema's row, mask_rle but no mask_png, plus evaluate's own columns: split, source and a multi-structure
model's per-structure iou / hd95 / truth_error, truth_ctr, ctr_abs_diff), per_image.csv (the same rows
flat: one column per metric and per structure, `flat_row`), summary.json (mean / sd / median / min / max
per metric, micro dice, the worst cases). When the checkpoint
carries a QC calibration (`raysegment calibrate`), every row also gets quality_score exactly as infer
computes it, summary.json a "qc" report (Spearman / Pearson / MAE of quality_score vs dice, which masks with
dice < 0.85 / 0.90 were flagged; evaluation/qc_report.py) and qc_scatter.png plots predicted vs real dice.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raysegment.data.datasets import load_split_dataset
from raysegment.data.model_input import LATERAL_NOTE, decode_frame, to_model_input
from raysegment.errors import InputError, NotAChestFilmError, UserError
from raysegment.io import storage
from raysegment.model.checkpoint import load_model
from raysegment.model.forward import forward_structures
from raysegment.outputs.report import REPORT_METRICS
from raysegment.outputs.results import SCHEMA, SUMMARY_COLUMNS, summarize_results
from raysegment.outputs.rows import (
    RowOptions,
    base_row,
    error_fields,
    input_fields,
    result_row,
    skip_fields,
    spacing_of,
)
from raysegment.postprocess.masks import PostprocessConfig
from raysegment.postprocess.metrics import json_safe, summarize
from raysegment.postprocess.quality import load_calibration
from raysegment.postprocess.scoring import score
from raysegment.progress import Progress

SPLIT_CHOICES = ("test", "val", "train", "all")
MANIFEST_NAME = "split_manifest.csv"
ROW_COLUMNS = ["image_id", "split", "status", "error_stage", "error_type", "error", *REPORT_METRICS,
               "tp", "fp", "fn", "height", "width", "lung_fraction", "mean_confidence", "quality_score",
               "qc_flag", "qc_reasons", "qc_notes", "truth_error", "image_uri", "truth_uri"]
RUN_ID = "evaluate"  # the run_id column of evaluate's rows (they belong to no inference run)


@dataclass
class Evaluation:
    rows: list[dict]  # one per image: a results.SCHEMA row plus evaluate's own columns (module docstring)
    summary: dict
    out: str | None  # where the files went

    def flat_rows(self) -> list[dict]:
        """The rows with a column per structure (heart_dice, heart_area_px, ...): per_image.csv's view."""
        return [flat_row(r) for r in self.rows]


def default_manifest(checkpoint: str) -> str:
    """RUN_DIR/split_manifest.csv for a checkpoint RUN_DIR/best (or RUN_DIR/checkpoint_epoch_NNNN)."""
    return storage.join(storage.parent(checkpoint), MANIFEST_NAME)


def select_pairs(data: str, split: str, split_digest: str | None = None) -> tuple[list, str, str | None]:
    """(pairs of `split` sorted by id, the data URI used, warning or None). `split` "all" takes every pair.

    A run folder as `data` means its split_manifest.csv.
    """
    if storage.exists(storage.join(data, MANIFEST_NAME)):  # a run folder: its own split
        data = storage.join(data, MANIFEST_NAME)
    dataset = load_split_dataset(data)
    pairs = dataset.discovery.pairs if split == "all" else dataset.pairs(split)
    warning = None
    if split != "all" and split_digest and dataset.digest() != split_digest:
        warning = (f"the split of {data} differs from the one this checkpoint was trained with "
                   f"(digest {dataset.digest()[:12]} vs {split_digest[:12]}): '{split}' may contain training "
                   f"images; pass the run's {MANIFEST_NAME} as --data to evaluate on the same split")
    return sorted(pairs, key=lambda p: p.image_id), data, warning


def _pair_fields(pair) -> dict:
    """The identity columns of a pair's row."""
    return {"image_id": pair.image_id, "image_uri": pair.image_uri, "source": pair.source or None,
            "truth_uri": "|".join(pair.mask_uris), "status": "ok"}


def _prepare(pair, preprocess) -> tuple[dict, tuple | None]:
    """(the row's input fields, (uint8 SxS model input, Geometry)) of one pair through the one input path
    (data/model_input.py); a failure makes the fields an error row (as bulk inference's stages do) and
    returns None for the input."""
    fields = _pair_fields(pair)
    stage = "read"
    try:
        data = storage.read_bytes(pair.image_uri)
        fields["input_size"] = len(data)
        stage = "decode"
        frame = decode_frame(data, storage.basename(pair.image_uri))  # the file name prefixes its errors
        fields.update(input_fields(frame))
        stage = "preprocess"
        return fields, to_model_input(frame, preprocess)
    except NotAChestFilmError as e:  # a DICOM without an image or of another modality: skipped, as in infer
        fields.update(skip_fields(e.reason))
        return fields, None
    except Exception as e:  # noqa: BLE001 - a bad file must not end an evaluation: it is an error row
        fields.update(error_fields(stage, e))
        return fields, None


def evaluate_pairs(loaded, pairs, batch_size: int = 8, postprocess_config=None,
                   threshold: float | None = None, progress: bool = False, calibration=None) -> list[dict]:
    """Predict and score each pair (scoring.score), one results row each (outputs/rows.py). Unreadable
    images are rows with status "error" and the reason; an unreadable truth mask leaves the row ok with
    `truth_error` and no metrics (as in infer).

    Batching only groups the decode work and the forward calls: forward_structures runs the same
    fixed-size micro-batches as predict.predict and the bulk pipeline, so results do not depend on it.
    A multi-structure model adds evaluation_fields() per row (each structure's iou, hd95 and truth error,
    the CTR from the expert masks).
    """
    post = postprocess_config or PostprocessConfig()
    names = loaded.spec.structures
    threshold = loaded.spec.threshold if threshold is None else threshold
    options = RowOptions(RUN_ID, loaded.model_id, threshold,
                         calibration.calibration_id if calibration else None, mask_png=False)
    rows: list[dict] = []
    bar = Progress(len(pairs), "evaluate", "images") if progress else None
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ready = []  # (index in rows, pair, fields, (model input, Geometry)) of the pairs that decode
        for pair in chunk:
            fields, prepared = _prepare(pair, loaded.spec.preprocess)
            rows.append({**base_row(fields, options), "source": fields["source"]})
            if prepared is not None:
                ready.append((len(rows) - 1, pair, fields, prepared))
        if ready:
            probs = forward_structures(loaded.model, np.stack([r[3][0] for r in ready]))
            for (i, pair, fields, (_, geo)), prob in zip(ready, probs, strict=True):
                others = {name: prob[c] for c, name in enumerate(names) if c > 0}
                truths = {k: v for k, v in pair.masks().items() if k in others}
                scored = score(prob[0], geo, threshold, post, pair.mask_uris, pair.image_uri,
                               spacing_of(fields), calibration, others, truths,
                               frontal=LATERAL_NOTE not in (fields.get("qc_notes") or ()))
                rows[i] = {**result_row(fields, scored, options), "source": fields["source"],
                           **(evaluation_fields(scored) if others else {})}
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    return rows


def structure_columns(names) -> list[str]:
    """Per-image columns of a multi-structure model's evaluation (none for a lungs-only model)."""
    others = [n for n in names if n != "lungs"]
    cols = [f"{n}_{k}" for n in others for k in ("dice", "iou", "hd95", "area_px", "truth_error")]
    if "heart" in others:
        cols += ["ctr", "heart_width_px", "thoracic_width_px", "thoracic_row", "truth_ctr", "ctr_abs_diff"]
    return cols


def evaluation_fields(scored) -> dict:
    """evaluate's own columns of one scored image of a multi-structure model: what a results row does not
    carry (each structure's iou, hd95 and truth error; the CTR of the expert masks and its difference)."""
    out = {}
    for part in scored.structures:
        m = part.metrics or {}
        out.update({f"{part.name}_iou": m.get("iou"), f"{part.name}_hd95": m.get("hd95"),
                    f"{part.name}_truth_error": part.truth_error})
    if scored.ctr is not None:
        c, t = scored.ctr, scored.truth_ctr
        out["truth_ctr"] = t.ctr if t is not None else None
        out["ctr_abs_diff"] = (abs(c.ctr - t.ctr) if t is not None and c.ctr is not None and t.ctr is not None
                               else None)
    return out


def flat_row(row: dict) -> dict:
    """An evaluate row with the structure_columns() derived from its `structures` list (dice, area) next
    to its own columns: the per_image.csv view (a CSV cell holds no list of structs)."""
    out = dict(row)
    for part in row.get("structures") or []:
        out.update({f"{part['name']}_dice": part["dice"], f"{part['name']}_area_px": part["area_px"]})
    return out


def _stats(values) -> dict:
    """metrics.summarize of the values that are there (None: no truth for that image)."""
    return summarize([x for x in values if x is not None])


def structure_summary(rows: list[dict], names) -> dict:
    """Of flat rows (flat_row): per structure the dice statistics over the images whose truth labels it;
    the CTR agreement (predicted vs expert: mean absolute difference); lung dice per source when rows have
    several."""
    ok = [r for r in rows if r["status"] == "ok"]
    out = {"structure_dice": {"lungs": _stats(r.get("dice") for r in ok),
                              **{n: _stats(r.get(f"{n}_dice") for r in ok) for n in names if n != "lungs"}}}
    if "heart" in names:
        diffs = [r.get("ctr_abs_diff") for r in ok]
        out["ctr_agreement"] = {"predicted": _stats(r.get("ctr") for r in ok),
                      "expert": _stats(r.get("truth_ctr") for r in ok),
                      "abs_diff": _stats(diffs),
                      "not_measurable": sum(1 for r in ok if r.get("ctr") is None)}
    sources = sorted({r.get("source") for r in ok if r.get("source")})
    if len(sources) > 1:
        out["sources"] = {s: {n: _stats(r.get("dice" if n == "lungs" else f"{n}_dice")
                                        for r in ok if r.get("source") == s) for n in names}
                          for s in sources}
    return out


def summarize_rows(rows: list[dict], worst: int = 5) -> dict:
    """results.summarize_results of the rows (the summary infer writes too), plus the worst cases by dice."""
    columns = ["image_uri", *SUMMARY_COLUMNS]
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows],
                                 schema=pa.schema([SCHEMA.field(c) for c in columns]))
    scored = sorted((r for r in rows if r["status"] == "ok" and r.get("dice") is not None),
                    key=lambda r: r["dice"])
    return {**summarize_results(table),
            "worst": [{"image_id": r["image_id"], "dice": r["dice"], "iou": r["iou"], "hd95": r["hd95"],
                       "qc_reasons": r["qc_reasons"]} for r in scored[:worst]]}


def parquet_schema(rows: list[dict]) -> pa.Schema:
    """per_image.parquet: results.SCHEMA, then evaluate's own columns (split, source when any row has
    one, the evaluation_fields() the rows carry)."""
    own = [pa.field("split", pa.string())] + ([pa.field("source", pa.string())]
                                              if any(r.get("source") for r in rows) else [])
    taken = {*SCHEMA.names, "split", "source"}
    present = dict.fromkeys(k for r in rows for k in r if k not in taken)
    own += [pa.field(k, pa.string() if k.endswith("_truth_error") else pa.float64()) for k in present]
    return pa.schema([*SCHEMA, *own])


def write_outputs(rows: list[dict], summary: dict, out: str,
                  extra_columns: list[str] | None = None) -> list[str]:
    """per_image.parquet (the rows), per_image.csv (flat_row of each: ROW_COLUMNS, source, extra_columns),
    summary.json under `out`; returns their URIs."""
    schema = parquet_schema(rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema),
                   buf)
    extra = [c for c in (["source"] if any(r.get("source") for r in rows) else []) + (extra_columns or [])]
    frame = pd.DataFrame([flat_row(r) for r in rows]).reindex(columns=ROW_COLUMNS + extra)
    csv = frame.assign(**{  # lists do not fit in a CSV cell
        name: frame[name].map(lambda v: "|".join(v) if isinstance(v, list) else "")
        for name in ("qc_reasons", "qc_notes")})
    uris = [storage.join(out, name) for name in ("per_image.parquet", "per_image.csv", "summary.json")]
    storage.write_bytes(uris[0], buf.getvalue())
    storage.write_text(uris[1], csv.to_csv(index=False))
    storage.write_text(uris[2], json.dumps(json_safe(summary), indent=2) + "\n")
    if "qc" in summary:
        from raysegment.evaluation.qc_report import scatter_png

        uris.append(storage.join(out, "qc_scatter.png"))
        storage.write_bytes(uris[-1], scatter_png([r.get("dice") for r in rows],
                                                  [r.get("quality_score") for r in rows],
                                                  [r.get("qc_flag") for r in rows],
                                                  summary["qc"]["threshold"]))
    return uris


def evaluate(checkpoint: str, data: str | None = None, split: str = "test", out: str | None = None,
             batch_size: int = 8, threshold: float | None = None, progress: bool = False,
             quality_threshold: float | None = None) -> Evaluation:
    """Evaluate `checkpoint` on `split` of `data` (see the module docstring); writes to `out` when given."""
    if split not in SPLIT_CHOICES:
        raise UserError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    loaded = load_model(checkpoint)
    calibration = load_calibration(checkpoint, loaded.model_id)  # quality_score exactly as infer computes it
    post = PostprocessConfig(min_quality_score=quality_threshold)
    if data is None:
        data = default_manifest(checkpoint)
        if not storage.exists(data):
            raise InputError(f"no --data given and no {MANIFEST_NAME} beside the checkpoint ({data})",
                             hint="pass the dataset (folder, s3:// prefix or manifest) with --data")
    pairs, data, warning = select_pairs(data, split, loaded.config.get("split_digest"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if not pairs:
        raise UserError(f"the '{split}' split of {data} is empty")
    t0 = time.perf_counter()
    rows = evaluate_pairs(loaded, pairs, batch_size, post, threshold=threshold, progress=progress,
                          calibration=calibration)
    wall = time.perf_counter() - t0
    for row in rows:
        row["split"] = split
    summary = {"checkpoint": checkpoint, "model_id": loaded.model_id, "data": data, "split": split,
               "threshold": loaded.spec.threshold if threshold is None else threshold,
               "split_warning": warning, **summarize_rows(rows), "wall_s": round(wall, 3)}
    names = loaded.spec.structures
    if len(names) > 1 or any(r.get("source") for r in rows):
        summary.update(structures=list(names), **structure_summary([flat_row(r) for r in rows], names))
    if calibration:
        from raysegment.evaluation.qc_report import qc_report

        ok = [r for r in rows if r["status"] == "ok"]
        summary["calibration_id"] = calibration.calibration_id
        summary["qc"] = qc_report([r["dice"] for r in ok], [r["quality_score"] for r in ok],
                                  [r["qc_flag"] for r in ok],
                                  calibration.threshold if quality_threshold is None else quality_threshold)
    if out:
        write_outputs(rows, summary, out, structure_columns(names) if len(names) > 1 else None)
    return Evaluation(rows, summary, out)
