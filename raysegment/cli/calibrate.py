"""`raysegment calibrate`: fit a checkpoint's quality_score calibration on its validation split
(flags -> evaluation.calibrate.calibrate)."""

from __future__ import annotations

import argparse
import sys

from raysegment.cli import common

DESCRIPTION = (
    "Predict the validation images and shifted copies of them, fit the regression from quality features to "
    "the real dice, choose the QC flag threshold, and store all of it as CHECKPOINT/calibration.json. "
    "`raysegment infer` and `evaluate` then fill quality_score and flag low_quality_score. Test images are "
    "never used.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `calibrate` subcommand."""
    from raysegment.evaluation.calibrate import DEFAULT_COPIES

    p: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate", description=DESCRIPTION,
        help="fit the quality_score (predicted dice) of a checkpoint on its validation split")
    common.add_checkpoint_argument(p)
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="write a copy of the checkpoint with the new calibration.json here instead of "
                        "beside the checkpoint (required for the shipped reference model)")
    p.add_argument("--data", default=None, metavar="URI",
                   help="labelled dataset, or a run folder / its split_manifest.csv (default: the "
                   "split_manifest.csv next to the checkpoint)")
    p.add_argument("--split", default="val", choices=("val", "train", "all"),
                   help="labelled images to fit on (default val; never test)")
    p.add_argument("--copies", type=int, default=DEFAULT_COPIES, metavar="N",
                   help=f"randomly shifted copies per image (default {DEFAULT_COPIES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random shifts")
    p.add_argument("--quality-threshold", type=float, default=None, metavar="Q",
                   help="store this flag threshold instead of the one chosen on the fit")
    common.add_s3_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    common.apply_s3_arguments(args)
    from raysegment.evaluation.calibrate import calibrate
    from raysegment.model.reference import require_out

    require_out(args.checkpoint, args.out, "calibrate")
    common.announce_checkpoint(args.checkpoint)
    if args.copies < 0:
        print("raysegment calibrate: error: --copies must be >= 0", file=sys.stderr)
        return 2
    try:
        calibrate(args.checkpoint, args.data, args.split, args.copies, args.seed, args.quality_threshold,
                  progress=True, out=args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"raysegment calibrate: error: {e}", file=sys.stderr)
        return 2
    return 0
