"""`raysegment evaluate`: a checkpoint on one split of a labelled dataset, scored at the ORIGINAL resolution.

No Ray: one process runs predict.py's steps (decode_image -> preprocess_image -> forward_probabilities ->
postprocess), so every mask is pixel-identical to what `raysegment infer` writes for the same image, and
scores it against the expert mask with metrics.image_metrics (dice, iou, precision, recall, hd95 in
pixels, hd95_mm when the file has a pixel spacing).

Which images: `--data` is a dataset (folder, s3:// prefix, manifest) split by datasets.load_split_dataset
(80/10/10, seed 42, as training does), or a run's split_manifest.csv (its split column wins). Without
--data, the run's own manifest next to the checkpoint (RUN_DIR/split_manifest.csv for RUN_DIR/best) is
used. When the checkpoint records the digest of its training split and the split evaluated here differs,
a warning says so: test images might have been training images.

Outputs in --out (local or s3://): per_image.parquet, per_image.csv (one row per image, errors included),
summary.json (mean / sd / median / min / max per metric, micro dice, the worst cases). When the checkpoint
carries a QC calibration (`raysegment calibrate`), every row also gets quality_score exactly as infer
computes it, summary.json a "qc" report (Spearman / Pearson / MAE of quality_score vs dice, which masks with
dice < 0.85 / 0.90 were flagged; evaluation/qc_report.py) and qc_scatter.png plots predicted vs real dice.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass

from raysegment.cli.s3_args import add_s3_arguments, apply_s3_arguments

SPLIT_CHOICES = ("test", "val", "train", "all")
REPORT_METRICS = ("dice", "iou", "precision", "recall", "hd95", "hd95_mm")
MANIFEST_NAME = "split_manifest.csv"


@dataclass
class Evaluation:
    rows: list[dict]  # one per image: image_id, image_uri, status, metrics, measurements
    summary: dict
    out: str | None  # where the files went


def default_manifest(checkpoint: str) -> str:
    """RUN_DIR/split_manifest.csv for a checkpoint RUN_DIR/best (or RUN_DIR/checkpoint_epoch_NNNN)."""
    from raysegment.io import storage

    return storage.join(storage.parent(checkpoint), MANIFEST_NAME)


def select_pairs(data: str, split: str, split_digest: str | None = None) -> tuple[list, str, str | None]:
    """(pairs of `split` sorted by id, the data URI used, warning or None). `split` "all" takes every pair.

    A run folder as `data` means its split_manifest.csv.
    """
    from raysegment.data.datasets import load_split_dataset
    from raysegment.io import storage

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


def evaluate_pairs(loaded, pairs, batch_size: int = 8, postprocess_config=None,
                   threshold: float | None = None, progress: bool = False, calibration=None) -> list[dict]:
    """Predict and score each pair. Rows carry status "error" (and the reason) for unreadable images or masks.

    Batching only groups the decode work and the forward calls: forward_probabilities runs the same
    fixed-size micro-batches as predict.predict and the bulk pipeline, so results do not depend on it.
    """
    import numpy as np

    from raysegment.data.datasets import load_mask
    from raysegment.data.preprocess import preprocess_image
    from raysegment.evaluation.metrics import image_metrics, json_safe
    from raysegment.infer.postprocess import PostprocessConfig, postprocess, qc_reasons, split_reasons
    from raysegment.infer.predict import forward_probabilities
    from raysegment.io import storage
    from raysegment.io.decode import decode_image

    post = postprocess_config or PostprocessConfig()
    threshold = loaded.spec.threshold if threshold is None else threshold
    rows: list[dict] = []
    t0 = time.perf_counter()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        decoded = []  # (row, pair, DecodedImage, uint8 SxS model input, Geometry) of the pairs that decode
        for pair in chunk:
            row = {"image_id": pair.image_id, "image_uri": pair.image_uri,
                   "truth_uri": "|".join(pair.mask_uris), "status": "ok", "error": None}
            rows.append(row)
            try:
                image = decode_image(storage.read_bytes(pair.image_uri), pair.image_uri)
                model_input, geo = preprocess_image(image.image, loaded.spec.preprocess)
            except Exception as e:  # noqa: BLE001 - a bad file must not end an evaluation: it is an error row
                row.update(status="error", error=f"{type(e).__name__}: {storage.redact(str(e))}")
                continue
            decoded.append((row, pair, image, model_input, geo))
        if not decoded:
            continue
        probs = forward_probabilities(loaded.model, np.stack([d[3] for d in decoded]))
        for (row, pair, image, _, geo), prob in zip(decoded, probs):
            seg = postprocess(prob, geo, threshold, post)
            quality = calibration.score(seg) if calibration else None  # as infer does
            reasons, notes = split_reasons(qc_reasons(seg, post, quality, calibration and calibration.threshold))
            meta = image.meta
            row.update(height=meta.height, width=meta.width, lung_fraction=seg.fraction,
                       mean_confidence=json_safe(seg.mean_confidence), qc_flag=bool(reasons),
                       qc_reasons=reasons, qc_notes=notes, quality_score=quality)
            try:
                truth = load_mask(pair.mask_uris, seg.mask.shape, pair.image_uri)
            except Exception as e:  # noqa: BLE001 - same for a bad mask file
                row.update(status="error", error=f"mask: {type(e).__name__}: {storage.redact(str(e))}")
                continue
            row.update({k: json_safe(v) for k, v in image_metrics(seg.mask, truth,
                                                                         meta.pixel_spacing_mm).items()})
        if progress:
            done = min(start + batch_size, len(pairs))
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"  {done}/{len(pairs)} images ({rate:.1f} images/s)", file=sys.stderr, flush=True)
    return rows


def summarize_rows(rows: list[dict], worst: int = 5) -> dict:
    """Per-metric mean / sd / median / min / max (NaN, None skipped), micro dice, worst cases by dice."""
    import numpy as np

    from raysegment.evaluation.metrics import MetricSums, summarize

    scored = [r for r in rows if r["status"] == "ok"]
    sums = MetricSums()
    for r in scored:
        sums.add({k: r[k] if r[k] is not None else float("nan") for k in (*REPORT_METRICS, "tp", "fp", "fn")})
    by_dice = sorted(scored, key=lambda r: r["dice"])[:worst]
    return {
        "images": len(rows),
        "scored": len(scored),
        "errors": [{"image_id": r["image_id"], "image_uri": r["image_uri"], "error": r["error"]}
                   for r in rows if r["status"] != "ok"],
        "qc_flagged": sum(1 for r in scored if r["qc_flag"]),
        "micro_dice": sums.means()["micro_dice"] if scored else float("nan"),
        "metrics": {name: summarize(np.array([r[name] if r[name] is not None else np.nan for r in scored],
                                             dtype=np.float64)) for name in REPORT_METRICS},
        "worst": [{"image_id": r["image_id"], "dice": r["dice"], "iou": r["iou"], "hd95": r["hd95"],
                   "qc_reasons": r["qc_reasons"]} for r in by_dice],
    }


def format_summary(summary: dict) -> str:
    """The summary as a small text table."""
    lines = [f"{'metric':<10}{'mean':>9}{'sd':>9}{'median':>9}{'min':>9}{'max':>9}{'n':>6}"]
    for name, s in summary["metrics"].items():
        if s["n"]:
            stats = "".join(f"{s[k]:>9.4f}" for k in ("mean", "sd", "median", "min", "max"))
            lines.append(f"{name:<10}{stats}{s['n']:>6}")
        else:
            lines.append(f"{name:<10}{'(no values)':>45}")
    lines.append(f"micro dice (pixels pooled over images): {summary['micro_dice']:.4f}")
    if summary["worst"]:
        lines.append(f"worst {len(summary['worst'])} by dice:")
        for w in summary["worst"]:
            hd95 = w["hd95"] if w["hd95"] is not None else float("nan")
            qc = f"  QC: {', '.join(w['qc_reasons'])}" if w["qc_reasons"] else ""
            lines.append(f"  {w['image_id']:<32} dice {w['dice']:.4f}  iou {w['iou']:.4f}  "
                         f"hd95 {hd95:.1f} px{qc}")
    if summary["errors"]:
        lines.append(f"{len(summary['errors'])} images could not be scored:")
        lines += [f"  {e['image_id']}: {e['error']}" for e in summary["errors"][:10]]
    return "\n".join(lines)


def write_outputs(rows: list[dict], summary: dict, out: str) -> list[str]:
    """per_image.parquet, per_image.csv, summary.json under `out`; returns their URIs."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysegment.evaluation.metrics import json_safe
    from raysegment.io import storage

    columns = ["image_id", "split", "status", "error", *REPORT_METRICS, "tp", "fp", "fn", "height", "width",
               "lung_fraction", "mean_confidence", "quality_score", "qc_flag", "qc_reasons", "image_uri", "truth_uri"]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    csv = frame.assign(  # lists do not fit in a CSV cell
        qc_reasons=frame["qc_reasons"].map(lambda v: "|".join(v) if isinstance(v, list) else ""))
    uris = [storage.join(out, name) for name in ("per_image.parquet", "per_image.csv", "summary.json")]
    storage.write_bytes(uris[0], buf.getvalue())
    storage.write_text(uris[1], csv.to_csv(index=False))
    storage.write_text(uris[2], json.dumps(json_safe(summary), indent=2) + "\n")
    if "qc" in summary:
        from raysegment.evaluation.qc_report import scatter_png

        uris.append(storage.join(out, "qc_scatter.png"))
        storage.write_bytes(uris[-1], scatter_png([r.get("dice") for r in rows], [r.get("quality_score") for r in rows],
                                                  [r.get("qc_flag") for r in rows], summary["qc"]["threshold"]))
    return uris



def evaluate(checkpoint: str, data: str | None = None, split: str = "test", out: str | None = None,
             batch_size: int = 8, threshold: float | None = None, progress: bool = False,
             quality_threshold: float | None = None) -> Evaluation:
    """Evaluate `checkpoint` on `split` of `data` (see the module docstring); writes to `out` when given."""
    from raysegment.infer.postprocess import PostprocessConfig
    from raysegment.infer.quality import load_calibration
    from raysegment.io import storage
    from raysegment.model.checkpoint import load_model

    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    loaded = load_model(checkpoint)
    calibration = load_calibration(checkpoint, loaded.model_id)  # quality_score exactly as infer computes it
    post = PostprocessConfig(min_quality_score=quality_threshold)
    if data is None:
        data = default_manifest(checkpoint)
        if not storage.exists(data):
            raise FileNotFoundError(f"no --data given and no {MANIFEST_NAME} beside the checkpoint ({data}); "
                                    "pass the dataset (folder, s3:// prefix or manifest) with --data")
    pairs, data, warning = select_pairs(data, split, loaded.config.get("split_digest"))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if not pairs:
        raise ValueError(f"the '{split}' split of {data} is empty")
    t0 = time.perf_counter()
    rows = evaluate_pairs(loaded, pairs, batch_size, post, threshold=threshold, progress=progress,
                          calibration=calibration)
    wall = time.perf_counter() - t0
    for row in rows:
        row["split"] = split
    summary = {"checkpoint": checkpoint, "model_id": loaded.model_id, "data": data, "split": split,
               "threshold": loaded.spec.threshold if threshold is None else threshold,
               "split_warning": warning, **summarize_rows(rows), "wall_s": round(wall, 3)}
    if calibration:
        from raysegment.evaluation.qc_report import qc_report

        ok = [r for r in rows if r["status"] == "ok"]
        summary["calibration_id"] = calibration.calibration_id
        summary["qc"] = qc_report([r["dice"] for r in ok], [r["quality_score"] for r in ok],
                                  [r["qc_flag"] for r in ok],
                                  calibration.threshold if quality_threshold is None else quality_threshold)
    if out:
        write_outputs(rows, summary, out)
    return Evaluation(rows, summary, out)


def add_parser(subparsers) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint on a labelled split (metrics at original resolution)")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (local or s3://), e.g. RUN_DIR/best")
    p.add_argument("--data", default=None,
                   help="dataset folder / s3:// prefix / manifest, or a run folder or its split_manifest.csv "
                        "(default: the split_manifest.csv next to the checkpoint)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test")
    p.add_argument("--out", default=None,
                   help="output folder (local or s3://); default CHECKPOINT/../evaluate_SPLIT")
    p.add_argument("--batch-size", type=int, default=8, help="images decoded and run per step")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the checkpoint's)")
    p.add_argument("--quality-threshold", type=float, default=None, metavar="Q",
                   help="QC: flag quality_score below Q (default: the checkpoint calibration's threshold)")
    add_s3_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raysegment.io import storage

    apply_s3_arguments(args)
    out = args.out or storage.join(storage.parent(args.checkpoint), f"evaluate_{args.split}")
    try:
        result = evaluate(args.checkpoint, args.data, args.split, out, max(1, args.batch_size),
                          args.threshold, progress=True, quality_threshold=args.quality_threshold)
    except (FileNotFoundError, ValueError) as e:
        print(f"raysegment evaluate: {e}", file=sys.stderr)
        return 1
    s = result.summary
    print(f"evaluated {s['checkpoint']} (model {s['model_id']}) on the '{s['split']}' split of {s['data']}: "
          f"{s['scored']} of {s['images']} images scored in {s['wall_s']:.1f}s, {s['qc_flagged']} QC-flagged")
    print(format_summary(s))
    if "qc" in s:
        from raysegment.evaluation.qc_report import format_qc_report

        print(format_qc_report(s["qc"]))
    print(f"wrote {storage.join(out, 'per_image.parquet')}, per_image.csv, summary.json"
          + (", qc_scatter.png" if "qc" in s else ""))
    return 0
