"""The `raysegment` command line: one subcommand per stage, the argparse of each in its own module here.

Each command module (cli/infer.py, cli/train.py, ...) exposes `add_parser(subparsers)` (registering its
flags and `func`) and keeps heavy imports (Ray, torch) inside its run function, so `raysegment --help`
stays fast. Library modules hold no argparse.

Errors: the run functions let exceptions through; `run_command` is the ONE place that turns them into
`raysegment COMMAND: error: <one line>` (+ a hint line), with the exit code of the exception's class
(errors.UserError 2, errors.RetryableError 3, anything else 1) and no traceback unless --debug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

import raysegment
from raysegment.errors import RetryableError, UserError

# name -> module that implements it (module.add_parser registers the subcommand).
COMMANDS = {name: f"raysegment.cli.{name}" for name in (
    "infer", "synth", "train", "export", "evaluate", "calibrate", "show", "report", "demo")}


def _add_common_flags(parser: argparse.ArgumentParser, default) -> None:
    """--debug and -v/--verbose, accepted before or after the command name."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the full Python traceback")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="also show Ray's own log lines (hidden by default; they go to the log file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysegment", description="Distributed lung segmentation of chest X-rays on Ray.")
    parser.add_argument("--version", action="version", version=f"raysegment {raysegment.__version__}")
    _add_common_flags(parser, False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    for sub in subparsers.choices.values():
        _add_common_flags(sub, argparse.SUPPRESS)  # SUPPRESS: do not reset a flag given before the command
    return parser


def error_line(error: BaseException) -> str:
    """The exception as one credential-free line."""
    from raysegment.io.storage import redact

    text = " ".join(str(error).split())
    known = isinstance(error, (UserError, RetryableError))
    if not known or not text:  # an unexpected failure: its type says more than a bare message
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return redact(text)


def report_error(command: str, error: BaseException, debug: bool = False) -> int:
    """Print the error the one way every command does; returns the exit code."""
    if debug:
        traceback.print_exception(error)
    print(f"raysegment {command}: error: {error_line(error)}", file=sys.stderr)
    hint = getattr(error, "hint", None)
    if hint:
        print(f"  {' '.join(hint.split())}", file=sys.stderr)
    elif not debug and not isinstance(error, (UserError, RetryableError)):
        print("  (rerun with --debug for the traceback)", file=sys.stderr)
    return int(getattr(error, "exit_code", 1))


def run_command(command: str, func, args: argparse.Namespace) -> int:
    """Run one subcommand's function with quiet logging and the common error handling."""
    from raysegment import logs

    logs.configure(verbose=getattr(args, "verbose", False))
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"raysegment {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one error formatter of the CLI
        return report_error(command, e, getattr(args, "debug", False))
    finally:
        logs.finish()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
