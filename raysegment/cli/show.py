"""`raysegment show`: pictures of bulk inference results (viz/show.py).

    raysegment show RESULTS [--worst N | --qc-flagged | --uri URI ...] [--ground-truth DATA] --out DIR
"""

from __future__ import annotations

import argparse

from raysegment.cli import common


def add_parser(subparsers) -> None:
    """Register the `show` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "show", help="draw overlays and contact sheets from inference results")
    p.add_argument("results", metavar="RESULTS", help="output folder of `raysegment infer` (local or s3://)")
    pick = p.add_mutually_exclusive_group()  # none: --worst LIMIT with ground truth, else --qc-flagged
    pick.add_argument("--worst", type=int, metavar="N",
                      help="the N images with the lowest dice (needs ground truth)")
    pick.add_argument("--qc-flagged", action="store_true",
                      help="the QC-flagged images (least confident first)")
    pick.add_argument("--uri", nargs="+", metavar="URI", help="these images (their image_uri in the results)")
    p.add_argument("--ground-truth", default=None, metavar="DATA",
                   help="labelled dataset to draw the true masks from (default: the rows' truth_uri, if any)")
    p.add_argument("--out", required=True, help="folder for the PNGs (local or s3://)")
    p.add_argument("--limit", type=int, default=24,
                   help="at most this many images with --qc-flagged, or when no choice is given")
    p.add_argument("--cols", type=int, default=4, help="tiles per row of contact_sheet.png")
    p.add_argument("--tile-height", type=int, default=384, help="height of each panel, pixels")
    common.add_s3_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    common.apply_s3_arguments(args)
    from raysegment.viz.show import show

    result = show(args.results, args.out, args.worst, args.qc_flagged, args.uri, args.ground_truth,
                  args.cols, args.limit, args.tile_height)
    for path in result.pictures:
        print(path + (f"  ({result.notes[path]})" if path in result.notes else ""))
    if result.contact_sheet:
        print(f"{result.contact_sheet} ({result.tiles} tiles)")
    if result.errors:
        print(f"{len(result.errors)} not drawn:")
        for uri, reason in result.errors:
            print(f"  {uri}: {reason}")
    if not result.pictures:
        print("nothing to draw" + (" (no QC-flagged images)" if args.qc_flagged else ""))
    print(f"index: {result.index}")
    return 0
