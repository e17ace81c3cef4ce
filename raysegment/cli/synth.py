"""`raysegment synth`: write synthetic chest X-ray phantoms (data/synth.py) as a labelled data set."""

from __future__ import annotations

import argparse
import time

from raysegment.data.synth import write_dataset


def add_parser(subparsers) -> None:
    """Register the `synth` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "synth", help="write synthetic chest X-ray phantoms",
        description="Write synthetic chest X-ray phantoms with their masks (0/255 PNGs; patient's left = "
                    "image right).",
        epilog="layouts (<name> = SYN_0000_0 ...):\n"
               "  generic     cxr/<name>.png, masks/<name>.png (both lungs)\n"
               "  montgomery  CXR_png/MCUCXR_0000_0.png ..., ManualMask/{leftMask,rightMask}/<same name>\n"
               "  structures  generic + structures/{left_lung,right_lung,heart,left_clavicle,right_clavicle}/"
               "<name>.png,\n"
               "              as in JSRT/SCR: data for lungs + heart + clavicles models",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=["montgomery", "generic", "structures"], default="generic",
                   help="folder layout (default: generic; see below)")
    p.add_argument("--n", type=int, default=20, help="number of phantoms")
    p.add_argument("--size", type=int, default=512, help="image side, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the phantoms and report the rate."""
    t0 = time.perf_counter()
    ids = write_dataset(args.out, args.n, args.size, args.seed, args.layout)
    dt = time.perf_counter() - t0
    rate = len(ids) / max(dt, 1e-9)
    print(f"wrote {len(ids)} phantoms ({args.layout}) to {args.out} in {dt:.1f}s ({rate:.0f} img/s)")
    return 0
