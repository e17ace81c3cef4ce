"""`raysegment show`: pictures of bulk inference results, for the images worth a look.

    raysegment show RESULTS [--worst N | --qc-flagged | --uri URI ...] [--ground-truth DATA] --out DIR

Rows are picked from results.read_results: the N lowest dice (needs the dice column, written when
`raysegment infer` ran with --ground-truth), the QC-flagged ones, or the given image URIs; with no
choice, the --limit lowest dice when there are dice, else the QC-flagged. For each, the input is decoded
again (storage + data/model_input.decode_frame, without the inversion check: the file as it is), the mask
comes from the row's mask_png, and the true mask, when there is one, from --ground-truth (matched by image
id = file stem) or else the row's own truth_uri.
A multi-structure model's rows also carry `structures` (heart, clavicles: their mask_rle): each is drawn
in its own colour (viz.STRUCTURE_COLORS), their truths (the ground truth's or truth_uri's ';heart=...'
parts) outlined in blue like the lungs', and when the row has a CTR its two widths are drawn as lines
(columns measured again with postprocess.ctr.measure_ctr on the decoded masks) and "CTR 0.47" is captioned.
DIR (local or s3://) gets one side-by-side PNG per image (viz.side_by_side), contact_sheet.png (their
overlays in a grid) and index.csv; error rows are listed with their reason, not drawn.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysegment.data.datasets import discover, load_mask, parse_truth
from raysegment.data.model_input import InputOptions, decode_frame
from raysegment.data.structures import LUNGS
from raysegment.errors import InputError, UserError
from raysegment.io import storage
from raysegment.io.decode import decode_mask_png, encode_mask_png, encode_png
from raysegment.io.rle import decode_rle
from raysegment.outputs.results import read_results, result_files
from raysegment.postprocess.ctr import measure_ctr
from raysegment.viz import figures as viz

# Measurements read to choose and caption rows (mask_png is read only for the chosen ones).
LIGHT_COLUMNS = ["image_uri", "image_id", "run_id", "status", "error_stage", "error", "dice", "iou", "hd95",
                 "qc_flag", "qc_reasons", "truth_uri", "lung_fraction", "mean_confidence", "quality_score",
                 "ctr"]
SHEET_TILE_HEIGHT = 256
AS_IS = InputOptions(correct_inversion=False)  # pictures show the input file as it is


@dataclass
class ShowResult:
    pictures: list[str] = field(default_factory=list)  # one side-by-side PNG per drawn image
    contact_sheet: str | None = None
    index: str | None = None  # index.csv: what was drawn (or why not)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (image_uri, reason), not drawn
    tiles: int = 0  # tiles in the contact sheet
    notes: dict[str, str] = field(default_factory=dict)  # picture -> e.g. why its truth is missing


def safe_name(image_id: str) -> str:
    """A file-name-safe version of an image id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"


def _value(row: dict, name: str):
    v = row.get(name)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def select_rows(table, worst: int | None = None, qc_flagged: bool = False, uris: list[str] | None = None,
                limit: int = 24) -> tuple[list[dict], list[dict]]:
    """(rows to draw, error rows to list) from a light results table (LIGHT_COLUMNS).

    worst: the N ok rows with the lowest dice; qc_flagged: ok rows with qc_flag (at most `limit`, lowest
    quality_score first, then lowest confidence); uris: those rows, in the given order; none of them: the
    `limit` lowest dice when the results have dice, else the QC-flagged. Error rows: the chosen ones for
    `uris`, else every error
    row of the table (they are worse than any drawn one).
    """
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    if worst is None and not qc_flagged and not uris:
        has_dice = any(_value(r, "dice") is not None for r in ok)
        worst, qc_flagged = (limit, False) if has_dice else (None, True)
    if uris:
        by_uri = {r["image_uri"]: r for r in rows}
        missing = [u for u in uris if u not in by_uri]
        if missing:
            raise UserError(f"not in the results: {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        chosen = [by_uri[u] for u in dict.fromkeys(uris)]
        return [r for r in chosen if r["status"] == "ok"], [r for r in chosen if r["status"] != "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    if worst is not None:
        scored = [r for r in ok if _value(r, "dice") is not None]
        if not scored:
            raise UserError("the results have no dice values: run `raysegment infer --ground-truth DATA` to "
                             "score them, or pick images with --qc-flagged or --uri")
        return sorted(scored, key=lambda r: (r["dice"], r["image_uri"]))[:worst], errors
    if qc_flagged:
        flagged = [r for r in ok if r.get("qc_flag")]
        # Lowest predicted dice first (rows without a quality_score after), then least confident: the
        # likeliest to be real failures.
        flagged.sort(key=lambda r: (_value(r, "quality_score") is None, _value(r, "quality_score") or 0.0,
                                    _value(r, "mean_confidence") or 0.0, r["image_uri"]))
        return flagged[:limit], errors
    raise AssertionError("unreachable")


def read_masks(results: str, rows: list[dict],
               structures: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, bytes]:
    """image_uri -> mask PNG of the given rows, reading only those rows' masks from the Parquet files
    (mask_png, or mask_rle re-encoded when the run dropped mask_png).

    structures: when given, filled with image_uri -> {name: bool HxW} of the rows' further structures
    (heart, clavicles: decoded from their mask_rle); rows of lungs-only models add nothing."""
    wanted = {(r["image_uri"], r["run_id"]) for r in rows}
    uris = sorted({u for u, _ in wanted})
    found: dict[str, bytes] = {}
    for uri in result_files(results):
        fs, path = storage.filesystem(uri)
        try:
            present = pq.read_schema(path, filesystem=fs).names
            rle = [c for c in ("mask_rle", "height", "width") if c in present]
            more = ["structures"] if structures is not None and "structures" in present else []
            columns = ["image_uri", "run_id", "mask_png", *rle, *more]
            part = pq.read_table(path, filesystem=fs, columns=columns,
                                 filters=[("image_uri", "in", uris)])
        except (OSError, pa.ArrowException):  # a partial file of a killed run; read_results skipped it too
            continue
        for r in part.to_pylist():
            if r["mask_png"] is None and r.get("mask_rle"):  # written with --no-mask-png
                r["mask_png"] = encode_mask_png(decode_rle(r["mask_rle"], r["height"], r["width"]))
            if (r["image_uri"], r["run_id"]) in wanted and r["mask_png"] is not None:
                if r["image_uri"] not in found and r.get("structures"):
                    structures[r["image_uri"]] = {
                        s["name"]: decode_rle(s["mask_rle"], r["height"], r["width"])
                        for s in r["structures"] if s.get("mask_rle")}
                found.setdefault(r["image_uri"], r["mask_png"])
    return found


def caption(row: dict) -> str:
    """One line about a row: id, dice / iou / hd95 when scored, QC reasons."""
    parts = [row.get("image_id") or row["image_uri"]]
    if _value(row, "dice") is not None:
        parts.append(f"dice {row['dice']:.3f}")
        if _value(row, "iou") is not None:
            parts.append(f"iou {row['iou']:.3f}")
        if _value(row, "hd95") is not None:
            parts.append(f"hd95 {row['hd95']:.1f}px")
    if _value(row, "quality_score") is not None:
        parts.append(f"quality {row['quality_score']:.2f}")
    if _value(row, "ctr") is not None:
        parts.append(f"CTR {row['ctr']:.2f}")
    if row.get("qc_reasons"):
        parts.append("QC: " + ", ".join(row["qc_reasons"]))
    return "  ".join(parts)


def show(results: str, out: str, worst: int | None = None, qc_flagged: bool = False,
         uris: list[str] | None = None, ground_truth: str | None = None, cols: int = 4, limit: int = 24,
         tile_height: int = 384) -> ShowResult:
    """Draw the chosen rows of `results` into `out` (see the module docstring). Returns what was written."""
    table = read_results(results, columns=LIGHT_COLUMNS)
    if table.num_rows == 0:
        raise InputError(f"no inference results under {results}",
                         hint="pass the --output folder of a `raysegment infer` run")
    rows, error_rows = select_rows(table, worst, qc_flagged, uris, limit)
    truth_index = {p.image_id: (p.mask_uris, dict(p.others)) for p in discover(ground_truth).pairs
                   } if ground_truth else {}
    structures: dict[str, dict[str, np.ndarray]] = {}
    masks = read_masks(results, rows, structures)

    result = ShowResult(errors=[(r["image_uri"], f"{r.get('error_stage')}: {r.get('error')}")
                                for r in error_rows])
    index = ["rank,image_id,dice,qc_reasons,picture,image_uri,note"]
    tiles, labels = [], []
    for rank, row in enumerate(rows, 1):
        image_uri, image_id = row["image_uri"], row.get("image_id") or storage.basename(row["image_uri"])
        note, picture = "", ""
        try:
            # The one input path's decode step, but the picture shows the file as it is (an inverted export
            # stays inverted, as the user's viewer shows it); the mask fits either way.
            image = decode_frame(storage.read_bytes(image_uri), image_uri, AS_IS).image
            if image_uri not in masks:
                raise ValueError("the row has no mask_png")
            pred = decode_mask_png(masks[image_uri])
        except Exception as e:  # noqa: BLE001 - e.g. the input moved since inference: say so, draw the others
            note = f"not drawn: {type(e).__name__}: {storage.redact(str(e))}"
            result.errors.append((image_uri, note))
        else:
            truth_uris, other_truths = truth_index.get(image_id, ((), {}))
            if image_id not in truth_index and row.get("truth_uri") and not ground_truth:
                truth_uris, other_truths = parse_truth(row["truth_uri"])  # lungs '|'-joined; ';heart=...'
            extra, ctr = structures_of(row, structures.get(image_uri), pred)
            # Only the truths of structures the row predicts: a lungs-only row's picture stays lungs-only.
            other_truths = {n: f for n, f in other_truths.items() if f and n in (extra or {})}
            truth, true_structures = None, {}
            if truth_uris or other_truths:
                try:
                    truth = load_mask(truth_uris, image.shape, image_uri) if truth_uris else None
                    true_structures = {n: load_mask(files, image.shape, image_uri)
                                       for n, files in other_truths.items()}
                except Exception as e:  # noqa: BLE001 - a bad truth file: draw the prediction alone
                    truth, true_structures = None, {}
                    note = f"ground truth not drawn: {type(e).__name__}: {storage.redact(str(e))}"
            elif ground_truth or row.get("truth_uri"):
                note = "no ground truth for this image"
            picture = storage.join(out, f"{rank:03d}_{safe_name(image_id)}.png")
            drawing = viz.side_by_side(image, truth, pred, f"#{rank}  {caption(row)}", tile_height,
                                       structures=extra, true_structures=true_structures, ctr=ctr)
            storage.write_bytes(picture, encode_png(drawing))
            result.pictures.append(picture)
            if note:
                result.notes[picture] = note
            tiles.append(viz.overlay(image, truth, pred, min(tile_height, SHEET_TILE_HEIGHT),
                                     structures=extra, true_structures=true_structures, ctr=ctr))
            score = _value(row, "dice")  # short labels: the sheet's tiles are narrow
            labels.append(f"#{rank} {image_id}" + ("" if score is None else f"  dice {score:.3f}")
                          + ("" if _value(row, "ctr") is None else f"  CTR {row['ctr']:.2f}"))
        dice = "" if _value(row, "dice") is None else f"{row['dice']:.6f}"
        index.append(",".join(_csv(v) for v in (rank, image_id, dice, "|".join(row.get("qc_reasons") or []),
                                                   picture, image_uri, note)))
    for row in error_rows:
        reason = f"error row: {row.get('error_stage')}: {row.get('error')}"
        cells = ("", row.get("image_id") or "", "", "", "", row["image_uri"], reason)
        index.append(",".join(_csv(v) for v in cells))
    if tiles:
        result.contact_sheet = storage.join(out, "contact_sheet.png")
        storage.write_bytes(result.contact_sheet, encode_png(viz.contact_sheet(tiles, labels, cols)))
        result.tiles = len(tiles)
    result.index = storage.join(out, "index.csv")
    storage.write_text(result.index, "\n".join(index) + "\n")
    return result


def structures_of(row: dict, masks: dict[str, np.ndarray] | None, pred: np.ndarray):
    """(further structures to draw or None, the CTR's measurement or None) of one row: its decoded
    structure masks (the ones with a colour; a mask of another size is left out rather than failing the
    picture), and, when the row has a CTR, its lines measured again on the decoded lungs and heart (the
    row keeps only the widths)."""
    if not masks:
        return None, None
    extra = {n: m for n, m in masks.items()
             if n in viz.STRUCTURE_COLORS and n != LUNGS and m.shape == pred.shape}
    ctr = None
    if _value(row, "ctr") is not None and "heart" in extra:
        ctr = measure_ctr(pred, extra["heart"])
    return extra or None, ctr


def _csv(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
