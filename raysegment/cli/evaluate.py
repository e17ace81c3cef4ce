"""`raysegment evaluate`: a checkpoint on one split of a labelled data set, scored at the original
resolution (evaluation/evaluate.py). No Ray."""

from __future__ import annotations

import argparse

from raysegment.cli import common

SPLIT_CHOICES = ("test", "val", "train", "all")


def add_parser(subparsers) -> None:
    """Register the `evaluate` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint on a labelled split (metrics at original resolution)")
    data = p.add_argument_group("data and output")
    data.add_argument("--data", default=None,
                      help="dataset folder / s3:// prefix / manifest, or a run folder or its "
                           "split_manifest.csv (default: the split_manifest.csv next to the checkpoint)")
    data.add_argument("--split", choices=SPLIT_CHOICES, default="test")
    data.add_argument("--out", default=None,
                      help="output folder (local or s3://); default CHECKPOINT/../evaluate_SPLIT")
    model = p.add_argument_group("model")
    common.add_checkpoint_argument(model)
    model.add_argument("--batch-size", type=int, default=8, help="images decoded and run per step")
    common.add_threshold_argument(model)
    common.add_quality_threshold_argument(p.add_argument_group(common.QC_GROUP))
    common.add_s3_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    common.apply_s3_arguments(args)
    from raysegment import logs
    from raysegment.evaluation.evaluate import evaluate
    from raysegment.io import preflight, storage
    from raysegment.model.reference import require_out
    from raysegment.outputs.report import format_summary

    require_out(args.checkpoint, args.out, "evaluate")
    common.announce_checkpoint(args.checkpoint)
    preflight.check_reachable(args.checkpoint, args.data, args.out)
    out = args.out or storage.join(storage.parent(args.checkpoint), f"evaluate_{args.split}")
    result = evaluate(args.checkpoint, args.data, args.split, out, max(1, args.batch_size), args.threshold,
                      progress=True, quality_threshold=args.quality_threshold)
    logs.set_destination(out)
    s = result.summary
    print(f"evaluated {s['checkpoint']} (model {s['model_id']}) on the '{s['split']}' split of {s['data']} "
          f"in {s['wall_s']:.1f}s:")
    print(format_summary(s, s["worst"]))
    if "qc" in s:
        from raysegment.evaluation.qc_report import format_qc_report

        print(format_qc_report(s["qc"]))
    print(f"wrote {storage.join(out, 'per_image.parquet')}, per_image.csv, summary.json"
          + (", qc_scatter.png" if "qc" in s else ""))
    return 0
