"""`raysegment demo` (`make demo`): the whole flow end to end on a laptop (demo.py)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    """Register the `demo` subcommand. Unset flags keep demo.DemoSettings' defaults (shown in the help), and
    demo.py is imported only when the demo runs: it pulls in torch and Ray."""
    p = subparsers.add_parser(
        "demo", help="the whole flow end to end: data -> Ray Train -> Ray Data inference -> pictures",
        description="Synthetic (or your) labelled X-rays -> 2-worker training on Ray Train -> bulk "
        "inference over the held-out test split on Ray Data, with ground truth -> pictures. Everything lands "
        "under --out: data/, runs/<run>/, results/, masks/, pictures/ and raysegment.log.")
    p.add_argument("--out", help="folder for every output (default demo_out)")
    p.add_argument("--data", help="a labelled dataset (any layout) instead of synthetic phantoms, "
                                  "e.g. ../shared/data/montgomery_512")
    p.add_argument("--n", type=int, help="synthetic images (default 120)")
    p.add_argument("--image-size", type=int, help="synthetic image side, px (default 256)")
    p.add_argument("--model-size", type=int, help="model input side, px (default 96)")
    p.add_argument("--base-channels", type=int, help="UNet width (default 8)")
    p.add_argument("--depth", type=int, help="UNet depth (default 3)")
    p.add_argument("--epochs", type=int, help="default 8")
    p.add_argument("--batch-size", type=int, help="per worker (default 4)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default 2)")
    p.add_argument("--show-worst", type=int, help="side-by-side pictures of the worst cases (default 6)")
    p.add_argument("--s3", action="store_true", default=None,
                   help="run through a local S3 endpoint (moto) on 127.0.0.1")
    p.set_defaults(func=run)


SETTINGS = ("out", "data", "n", "image_size", "model_size", "base_channels", "depth", "epochs", "batch_size",
            "num_workers", "show_worst", "s3")


def run(args: argparse.Namespace) -> int:
    from raysegment.demo import DemoSettings, run_demo
    from raysegment.io import preflight

    if args.data:
        preflight.require_exists(args.data, "--data")
    settings = DemoSettings(**{k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None})
    result = run_demo(settings)
    return 0 if result.summary.get("missing", 0) == 0 else 1
