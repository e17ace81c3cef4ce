"""Results folders as `raysegment infer` writes them (results.SCHEMA rows under OUTPUT/runs/<run_id>/,
run.json, summary.json), made without Ray or a model, for the tests and benches of what reads results (the run
report, `show`): phantom films on disk and rows whose masks are those films' masks.

    films = write_films(folder, n=6, size=128)               # PNG phantoms + their masks
    table = synthetic_table([f.uri for f in films], films)   # one row per URI, films cycled
    write_run(output, table)                                 # Parquet files, run.json, summary.json

The measurements are drawn from plausible distributions (seeded), not computed from the pictures: a reader
of results must not care. Error rows, rows of a status this version does not write (`skipped`), QC flags and
ground truth come in the proportions asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysegment.data.synth import make_phantom
from raysegment.io import storage
from raysegment.io.decode import encode_mask_png, encode_png
from raysegment.io.rle import encode_rle
from raysegment.outputs.results import SCHEMA, SCHEMA_VERSION, run_uri, summarize_results
from raysegment.postprocess.metrics import json_safe

RUN_ID = "20260101T000000Z-aaaaaa"
MODEL_ID = "0123456789abcdef"
CALIBRATION_ID = "fedcba9876543210"
SKIP_REASON = "not a chest radiograph (Modality CT)"  # the message of a `skipped` row (not a v2 status)


@dataclass(frozen=True)
class Film:
    """A phantom X-ray written to `uri` and what a row of it carries (its masks)."""

    uri: str
    height: int
    width: int
    mask_png: bytes
    mask_rle: str
    heart_rle: str
    heart_px: int


def write_films(folder: str, n: int, size: int = 128, seed: int = 0, prefix: str = "film") -> list[Film]:
    """n phantom PNGs `folder/{prefix}{i:04d}.png` (seeded), with their lung and heart masks."""
    os.makedirs(folder, exist_ok=True)
    films = []
    for i in range(n):
        p = make_phantom(seed, i, size)
        uri = os.path.join(folder, f"{prefix}{i:04d}.png")
        with open(uri, "wb") as f:
            f.write(encode_png(p.image))
        lungs = p.left_mask | p.right_mask
        films.append(Film(uri, size, size, encode_mask_png(lungs), encode_rle(lungs),
                          encode_rle(p.heart_mask), int(p.heart_mask.sum())))
    return films


def synthetic_table(uris: list[str], films: list[Film], seed: int = 0, run_id: str = RUN_ID,
                    model_id: str = MODEL_ID, calibration_id: str | None = CALIBRATION_ID,
                    error_rate: float = 0.02, skipped_rate: float = 0.0, truth: bool = False,
                    spacing_mm: float | None = None, structures: bool = True,
                    schema_version: int = SCHEMA_VERSION) -> pa.Table:
    """One results.SCHEMA row per URI; row i carries the masks of films[i % len(films)] (a URI that is not
    the film's own path makes an original that cannot be read back). calibration_id None: no
    quality_score; truth: dice and the other metrics; structures: a heart (its mask) and a CTR."""
    n = len(uris)
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    status = np.where(u < error_rate, "error", np.where(u < error_rate + skipped_rate, "skipped", "ok"))
    ok = status == "ok"
    names = [storage.basename(x) for x in uris]
    film = [films[i % len(films)] for i in range(n)]
    quality = np.clip(rng.beta(9, 1.5, n), 0, 1) if calibration_id else np.full(n, np.nan)
    fraction = np.clip(rng.normal(0.3, 0.07, n), 0.0, 0.75)
    confidence = 0.62 + 0.38 * rng.beta(6, 1, n)
    ctr = np.clip(rng.normal(0.46, 0.05, n), 0.2, 0.9)
    dice = np.clip(1 - rng.beta(1.2, 25, n), 0, 1)

    reasons = []
    for i in range(n):
        r = []
        if fraction[i] < 0.05:
            r.append("lung_fraction_low")
        if fraction[i] > 0.6:
            r.append("lung_fraction_high")
        if confidence[i] < 0.75:
            r.append("low_confidence")
        if calibration_id and quality[i] < 0.7:
            r.append("low_quality_score")
        reasons.append(r if ok[i] else None)

    def when_ok(values) -> list:
        return [v if o else None for v, o in zip(values, ok, strict=True)]

    def number(values: np.ndarray) -> list:
        return [None if not o or not np.isfinite(v) else float(v) for v, o in zip(values, ok, strict=True)]

    area = [int(f * fi.height * fi.width) for f, fi in zip(fraction, film, strict=True)]
    cm2 = spacing_mm * spacing_mm / 100.0 if spacing_mm else None
    error_stage = ["read" if i % 2 else "decode" for i in range(n)]
    error_type = ["FileNotFoundError" if i % 2 else "DecodeError" for i in range(n)]
    error_text = [f"{name}: no such file" if i % 2 else f"{name}: truncated PNG (no IEND chunk)"
                  for i, name in enumerate(names)]
    cols = {
        "schema_version": [schema_version] * n, "run_id": [run_id] * n, "model_id": [model_id] * n,
        "package_version": ["0.0.0"] * n, "image_uri": list(uris),
        "image_id": [os.path.splitext(x)[0] for x in names], "input_size": [1000] * n,
        "status": status.tolist(),
        "error_stage": [s if st == "error" else ("decode" if st == "skipped" else None)
                        for s, st in zip(error_stage, status, strict=True)],
        "error_type": [t if st == "error" else None for t, st in zip(error_type, status, strict=True)],
        "error": [e if st == "error" else (SKIP_REASON if st == "skipped" else None)
                  for e, st in zip(error_text, status, strict=True)],
        "image_format": when_ok(["png"] * n), "bit_depth": when_ok([8] * n),
        "height": [f.height for f in film], "width": [f.width for f in film],
        "pixel_spacing_row_mm": when_ok([spacing_mm] * n), "pixel_spacing_col_mm": when_ok([spacing_mm] * n),
        "mask_png": when_ok([f.mask_png for f in film]), "mask_rle": when_ok([f.mask_rle for f in film]),
        "threshold": when_ok([0.5] * n), "lung_area_px": when_ok(area),
        "lung_fraction": number(fraction),
        "lung_area_cm2": when_ok([a * cm2 if cm2 else None for a in area]),
        "n_components": when_ok([2] * n), "mean_confidence": number(confidence),
        "qc_flag": when_ok([bool(r) for r in reasons]), "qc_reasons": reasons,
        "qc_notes": when_ok([[] for _ in range(n)]),
        "quality_score": number(quality), "calibration_id": [calibration_id] * n,
        "exif_rotation": when_ok([0] * n), "inversion_corrected": when_ok([False] * n),
        "total_ms": when_ok([float(x) for x in rng.uniform(20, 80, n)]),
    }
    if structures:
        cols["structures"] = when_ok([[{"name": "heart", "area_px": f.heart_px,
                                        "area_cm2": f.heart_px * cm2 if cm2 else None,
                                        "mask_rle": f.heart_rle, "dice": None}] for f in film])
        cols["ctr"] = number(ctr)
    if truth:
        cols["truth_uri"] = [f"/truth/{name}" for name in names]
        cols["dice"] = number(dice)
        cols["iou"] = number(dice / (2 - dice))
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_run(output: str, table: pa.Table, run_id: str | None = None, rows_per_file: int = 1024,
              summary: bool = True, input_uri: str = "/archive", wall_s: float = 12.5) -> dict | None:
    """`table` as the Parquet files of one run under `output` (its run_id: the rows'), with run.json and,
    unless `summary` is False (a run cut short), summary.json as `raysegment infer` writes them (also
    OUTPUT/summary.json). Returns the summary."""
    run_id = run_id or (table.column("run_id")[0].as_py() if table.num_rows else RUN_ID)
    folder = run_uri(output, run_id)
    os.makedirs(folder, exist_ok=True)
    for k, start in enumerate(range(0, table.num_rows, rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), os.path.join(folder, f"part-{k:05d}.parquet"))
    model_id = table.column("model_id")[0].as_py() if table.num_rows else MODEL_ID
    calibration_id = table.column("calibration_id")[0].as_py() if table.num_rows else None
    record = {"run_id": run_id, "config": {"io": {"input": input_uri, "output": output}},
              "model_id": model_id, "calibration_id": calibration_id, "inputs": table.num_rows,
              "todo": table.num_rows,
              "schema_version": SCHEMA_VERSION}
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump(record, f, indent=2)
    if not summary:
        return None
    n = table.num_rows
    out = json_safe({
        "run_id": run_id, "output": output, "model_id": model_id, "calibration_id": calibration_id,
        "inputs_seen": n, "processed": n, "rows_written": n, "skipped_resume": 0, "missing": 0,
        "duplicates_resolved": 0, **summarize_results(table), "wall_s": wall_s,
        "images_per_s": round(n / wall_s, 3) if n else None,
        "plan": "synthetic rows (no model)",
        "batch_size": 8,
    })
    text = json.dumps(out, indent=2, allow_nan=False) + "\n"
    for where in (folder, output):
        with open(os.path.join(where, "summary.json"), "w") as f:
            f.write(text)
    return out
