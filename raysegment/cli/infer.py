"""`raysegment infer`: bulk inference over an X-ray archive on Ray Data (flags -> InferConfig -> infer.run)."""

from __future__ import annotations

import argparse
import sys

from raysegment.cli.s3_args import add_s3_arguments, apply_s3_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `infer` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "infer",
        help="bulk inference over an X-ray archive on Ray Data",
        description="Segment every image under a folder, s3:// prefix or manifest into Parquet (one row per "
        "input, errors included). Rerunning the same command resumes: images done with the same model and "
        "unchanged are skipped, errors are retried. Schema: docs/output_schema.md.",
    )
    p.add_argument("--input", required=True, metavar="URI",
                   help="folder or s3:// prefix (listed recursively), or a .csv/.parquet manifest")
    p.add_argument("--checkpoint", required=True, metavar="URI", help="checkpoint folder (local or s3://)")
    p.add_argument("--output", required=True, metavar="URI", help="results folder or s3:// prefix")
    p.add_argument("--masks-out", metavar="URI", help="also write each mask as PNG here, mirroring input paths")
    p.add_argument("--ground-truth", metavar="URI",
                   help="labelled data set (any layout `raysegment train` reads): adds dice, iou, hd95, ... "
                   "per image, matched by file stem")
    p.add_argument("--manifest-column", metavar="NAME", help="manifest column with the image URIs "
                   "(default: image_uri, image, uri or path)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N inputs (for a trial)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per actor call (default 8 CPU / 32 GPU)")
    p.add_argument("--num-actors", type=int, metavar="N",
                   help="inference actors (default: one per GPU, or one per CPU minus a decode share)")
    p.add_argument("--no-gpu", action="store_true", help="run on CPU even when the cluster has GPUs")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="intra-op threads per CPU actor (default 1; results then match predict() bit for bit)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the checkpoint's)")
    p.add_argument("--keep-largest", type=int, default=2, metavar="K",
                   help="keep the K largest components (default 2: two lungs; 0 keeps all)")
    p.add_argument("--no-fill-holes", action="store_true", help="do not fill holes in the masks")
    p.add_argument("--quality-threshold", type=float, metavar="Q",
                   help="QC: flag masks whose quality_score (predicted dice) is below Q (default: the threshold "
                   "stored with the checkpoint's calibration)")
    p.add_argument("--pixel-spacing", type=float, metavar="MM",
                   help="pixel spacing (mm) for images that do not carry one (PNG/JPEG): enables cm2 and hd95_mm")
    p.add_argument("--no-resume", action="store_true", help="process every input even if done before")
    p.add_argument("--rows-per-file", type=int, default=256, metavar="N", help="minimum rows per Parquet file")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    add_s3_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every input has a row (bad images are rows with status=error, not a failure)."""
    s3 = apply_s3_arguments(args)  # before Ray starts: workers inherit the S3 settings

    from raysegment.infer.pipeline import InferConfig, run_inference
    from raysegment.infer.postprocess import PostprocessConfig

    config = InferConfig(
        input=args.input, checkpoint=args.checkpoint, output=args.output, masks_out=args.masks_out,
        ground_truth=args.ground_truth, manifest_column=args.manifest_column, limit=args.limit,
        batch_size=args.batch_size, num_actors=args.num_actors, use_gpu=False if args.no_gpu else None,
        torch_threads=args.torch_threads, threshold=args.threshold,
        postprocess=PostprocessConfig(keep_largest=args.keep_largest, fill_holes=not args.no_fill_holes,
                                      min_quality_score=args.quality_threshold),
        pixel_spacing_mm=args.pixel_spacing, resume=not args.no_resume, rows_per_file=args.rows_per_file,
        s3=s3, address=args.address,
    )
    summary = run_inference(config)
    return 0 if summary["missing"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (jobs/infer.py): the same flags as `raysegment infer`."""
    parser = argparse.ArgumentParser(prog="infer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["infer", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)
