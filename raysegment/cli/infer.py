"""`raysegment infer` (also `python jobs/infer.py`): bulk inference over an X-ray archive on Ray Data
(flags -> InferConfig -> infer/pipeline.run_inference)."""

from __future__ import annotations

import argparse

from raysegment.cli import common

# Constants only (no numpy/cv2 import): `raysegment --help` stays fast.
DEFAULT_MAX_PIXELS = 100_000_000  # = io.decode.DEFAULT_MAX_PIXELS (tests/test_cli_errors.py checks it)
RADIOGRAPH_MODALITIES = ("CR", "DX", "OT")  # = io.decode.RADIOGRAPH_MODALITIES (checked the same way)


def max_pixels(text: str) -> int:
    """--max-pixels N (digits, "_" allowed: 300_000_000); ConfigError (exit 2, one line) naming the flag."""
    from raysegment.errors import ConfigError

    try:
        value = int(str(text).replace("_", ""))
    except ValueError:
        raise ConfigError(f"--max-pixels: expected a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--max-pixels: must be at least 1, got {value}")
    return value


def modalities(text: str) -> tuple[str, ...] | None:
    """--modalities 'CR,DX,OT' -> ("CR", "DX", "OT"); 'all' -> None (every modality); ConfigError else."""
    from raysegment.errors import ConfigError

    if text.strip().lower() in ("all", "*", "any"):
        return None
    values = tuple(dict.fromkeys(v.strip().upper() for v in text.split(",") if v.strip()))
    if not values or not all(v.replace("_", "").isalnum() for v in values):
        raise ConfigError(f"--modalities: expected DICOM Modality codes such as CR,DX,OT (or 'all'), "
                          f"got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `infer` subcommand: its flags in groups (input and output, model and postprocessing,
    QC, scaling and cluster, object storage)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "infer",
        help="bulk inference over an X-ray archive on Ray Data",
        description="Segment every image under a folder, s3:// prefix or manifest into Parquet (one row per "
        "input, errors included). Rerunning the same command resumes: images done with the same model and "
        "unchanged are skipped, errors are retried. Schema: docs/output_schema.md.",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="list, apply resume and plan, print how many inputs would be processed; run nothing")
    _add_io_arguments(p.add_argument_group("input and output"))
    model = p.add_argument_group("model and postprocessing")
    common.add_checkpoint_argument(model)
    common.add_threshold_argument(model)
    common.add_postprocess_arguments(model)
    common.add_quality_threshold_argument(p.add_argument_group(common.QC_GROUP))
    _add_scaling_arguments(p.add_argument_group(common.CLUSTER_GROUP))
    common.add_s3_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_io_arguments(io) -> None:
    """Where the images come from and where the results go (and in which forms)."""
    io.add_argument("--input", required=True, metavar="URI",
                    help="folder or s3:// prefix (listed recursively), or a .csv/.parquet manifest")
    io.add_argument("--output", required=True, metavar="URI", help="results folder or s3:// prefix")
    io.add_argument("--masks-out", metavar="URI",
                    help="also write each mask as PNG here, mirroring input paths")
    io.add_argument("--ground-truth", metavar="URI",
                    help="labelled data set (any layout `raysegment train` reads): adds dice, iou, hd95, ... "
                    "per image, matched by file stem")
    io.add_argument("--manifest-column", metavar="NAME", help="manifest column with the image URIs "
                    "(default: image_uri, image, uri or path)")
    io.add_argument("--limit", type=int, metavar="N", help="only the first N inputs (for a trial)")
    io.add_argument("--pixel-spacing", type=float, metavar="MM",
                    help="pixel spacing (mm) for images that do not carry one (PNG/JPEG): enables cm2 and "
                    "hd95_mm")
    io.add_argument("--no-inversion-check", action="store_true",
                    help="do not detect and correct inverted PNG/JPEG/TIFF exports (white air; see docs)")
    io.add_argument("--max-pixels", default=str(DEFAULT_MAX_PIXELS), metavar="N",
                    help=f"images with more pixels (width x height, from the header) are error rows, never "
                    f"decoded: a decompression-bomb guard (default {DEFAULT_MAX_PIXELS:_} = "
                    f"{DEFAULT_MAX_PIXELS // 1_000_000} MP)")
    io.add_argument("--modalities", default=",".join(RADIOGRAPH_MODALITIES), metavar="LIST",
                    help="DICOM Modality values to segment, comma-separated, or 'all' (default "
                    f"{','.join(RADIOGRAPH_MODALITIES)}); other DICOM images (CT, MR, US, ...) are skipped "
                    "rows, 'not a chest radiograph (Modality CT)'. A DICOM without a Modality is always "
                    "segmented")
    io.add_argument("--no-resume", action="store_true", help="process every input even if done before")
    io.add_argument("--rows-per-file", type=int, default=256, metavar="N",
                    help="minimum rows per Parquet file")
    io.add_argument("--no-mask-png", action="store_true",
                    help="leave mask_png empty: masks only as mask_rle (about 7x smaller in Parquet)")
    io.add_argument("--dicom-seg-out", metavar="URI",
                    help="write a DICOM Segmentation (SEG) per DICOM input here, mirroring input paths")
    io.add_argument("--dicom-seg-sides", action="store_true",
                    help="DICOM SEG with right and left lung as two segments (default: one 'Lung' segment)")
    io.add_argument("--no-report", action="store_true",
                    help="do not write OUTPUT/report.html (the run report: `raysegment report`) at the end")


def _add_scaling_arguments(scaling) -> None:
    """Actors, batch, GPU/CPU, threads, and the cluster to run on."""
    scaling.add_argument("--batch-size", type=int, metavar="N",
                         help="images per actor call (default 8 CPU / 32 GPU)")
    scaling.add_argument("--num-actors", type=int, metavar="N",
                         help="inference actors (default: one per GPU, or one per CPU minus a decode share)")
    scaling.add_argument("--min-actors", type=int, metavar="N",
                         help="autoscaling pool: start with (and wait for) N actors (default 1)")
    scaling.add_argument("--max-actors", type=int, metavar="N",
                         help="autoscaling pool: grow to N actors as nodes join "
                         "(default: what the cluster can grow to)")
    gpu = scaling.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", action="store_true",
                     help="one GPU per actor, even when no GPU node is up yet (the autoscaler adds them)")
    gpu.add_argument("--no-gpu", action="store_true", help="run on CPU even when the cluster has GPUs")
    scaling.add_argument("--device", choices=["cpu", "cuda"],
                         help="where the actors run the model (default: cuda on GPU actors, else cpu). "
                         "--device cpu keeps the GPU plan (actors ask for GPUs; micro-batches, bf16, "
                         "channels_last) but runs the model on the node's CPU: to check a GPU plan without "
                         "GPUs")
    scaling.add_argument("--torch-threads", type=int, metavar="N",
                         help="intra-op threads per CPU actor (default 1; results then match predict() bit "
                         "for bit)")
    common.add_cluster_arguments(scaling)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every input has a row (bad images are rows with status=error, files that are no chest
    film rows with status=skipped: neither is a failure)."""
    s3 = common.apply_s3_arguments(args)  # before Ray starts: workers inherit the S3 settings

    from raysegment.infer.pipeline import run_inference, summary_header
    from raysegment.outputs.report import format_skipped, format_summary

    config = infer_config(args, s3)  # flag values checked first: a bad one is the only line printed
    common.announce_checkpoint(args.checkpoint)
    summary = run_inference(config)
    if summary.get("dry_run"):
        return 0
    print(summary_header(summary))
    skipped = format_skipped(summary.get("skipped") or {}, summary.get("skipped_by_name_examples") or [])
    if skipped:
        print(skipped)
    print(format_summary(summary))
    if summary.get("duplicates_resolved"):
        print(f"  {summary['duplicates_resolved']} rows written twice (tasks retried after a node loss): "
              "read_results keeps one per input")
    if summary["missing"]:
        print(f"  WARNING: {summary['missing']} inputs have no row; run the same command again to resume")
    print(f"  results: {summary['output']}")
    if not args.no_report:
        write_report(args.output)
    return 0 if summary["missing"] == 0 else 1


def write_report(output: str) -> None:
    """OUTPUT/report.html (viz/report.py) after a run, its path printed; a failure is one printed line, never
    the run's failure (the rows are written)."""
    from raysegment.cli import error_line
    from raysegment.viz.report import build_report

    try:
        result = build_report(output)
    except Exception as e:  # noqa: BLE001 - the run itself succeeded
        print(f"  report not written: {error_line(e)} (`raysegment report {output}` retries)")
        return
    print(f"  report: {result.path} ({result.seconds:.1f} s)")


def infer_config(args: argparse.Namespace, s3):
    """The InferConfig of the parsed flags (section by section, as grouped in --help)."""
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection

    io = IOSection(
        input=args.input, output=args.output, masks_out=args.masks_out, ground_truth=args.ground_truth,
        manifest_column=args.manifest_column, limit=args.limit, resume=not args.no_resume,
        rows_per_file=args.rows_per_file, pixel_spacing_mm=args.pixel_spacing,
        correct_inversion=not args.no_inversion_check, mask_png=not args.no_mask_png,
        dicom_seg_out=args.dicom_seg_out, dicom_seg_sides=args.dicom_seg_sides,
        max_pixels=max_pixels(args.max_pixels), modalities=modalities(args.modalities))
    model = ModelSection(checkpoint=args.checkpoint, threshold=args.threshold,
                         postprocess=common.postprocess_options(args))
    scaling = ScalingSection(
        batch_size=args.batch_size, num_actors=args.num_actors, min_actors=args.min_actors,
        max_actors=args.max_actors, use_gpu=False if args.no_gpu else (True if args.gpu else None),
        device=args.device, torch_threads=args.torch_threads)
    return InferConfig(io, model, scaling, common.cluster_options(args), s3, dry_run=args.dry_run)
