"""The `raysegment` command line: one subcommand per stage, each implemented in its own module.

Each command module exposes `add_parser(subparsers)` (registering its flags and `func`) and keeps heavy
imports (Ray, torch) inside its run function, so `raysegment --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import raysegment

# name -> module that implements it (module.add_parser registers the subcommand).
COMMANDS = {
    "infer": "raysegment.cli.infer",
    "synth": "raysegment.data.synth",
    "train": "raysegment.cli.train",
    "export": "raysegment.model.export",
    "evaluate": "raysegment.evaluation.evaluate",
    "calibrate": "raysegment.cli.calibrate",
    "show": "raysegment.viz.show",
    "demo": "raysegment.demo",
}
# Subcommands that are planned but not built yet: they say so and exit non-zero.
PENDING: dict[str, str] = {}


def _pending(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"raysegment {name}: not implemented yet in this version", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysegment", description="Distributed lung segmentation of chest X-rays on Ray."
    )
    parser.add_argument("--version", action="version", version=f"raysegment {raysegment.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    for name, help_text in PENDING.items():
        sub = subparsers.add_parser(name, help=f"{help_text} (not implemented yet)")
        sub.set_defaults(func=_pending(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
