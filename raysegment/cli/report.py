"""`raysegment report`: one self-contained HTML page about a results folder (viz/report.py).

    raysegment report RESULTS [--out report.html] [--queue N] [--no-thumbnails] [--redact-names]
"""

from __future__ import annotations

import argparse

from raysegment.cli import common


def add_parser(subparsers) -> None:
    """Register the `report` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="one self-contained HTML page about a results folder: the run, the review queue as "
        "pictures, errors, distributions, per-folder table",
        description="Write ONE self-contained HTML file (inline CSS, embedded images, nothing loaded from "
        "the network) about the results of `raysegment infer`: every run in the folder, the latest row per "
        "input. The page holds films and file names (patient data): --no-thumbnails --redact-names make one "
        "to share.")
    p.add_argument("results", metavar="RESULTS", help="output folder of `raysegment infer` (local or s3://)")
    p.add_argument("--out", metavar="URI", help="the HTML file to write, local or s3:// (default "
                   "RESULTS/report.html)")
    p.add_argument("--queue", type=int, default=24, metavar="N",
                   help="films in the review queue (default 24; QC-flagged first, then the lowest "
                   "quality_score)")
    p.add_argument("--no-thumbnails", action="store_true", help="no films on the page: the queue as a table")
    p.add_argument("--redact-names", action="store_true",
                   help="no file names or paths on the page: films named by a digest of their URI")
    common.add_s3_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raysegment.errors import UserError

    common.apply_s3_arguments(args)
    from raysegment.viz.report import MAX_QUEUE, build_report

    if not 0 <= args.queue <= MAX_QUEUE:
        raise UserError(f"--queue must be between 0 and {MAX_QUEUE}, got {args.queue}")
    result = build_report(args.results, args.out, args.queue, thumbnails=not args.no_thumbnails,
                          redact_names=args.redact_names)
    print(f"report: {result.path} ({result.images} images, {result.queue} in the review queue, "
          f"{result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
