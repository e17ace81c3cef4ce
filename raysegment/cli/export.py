"""`raysegment export`: a checkpoint as ONNX or TorchScript, verified against PyTorch (model/export.py)."""

from __future__ import annotations

import argparse

from raysegment.cli import common


def add_parser(subparsers) -> None:
    """Register the `export` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript (verified against PyTorch)")
    common.add_checkpoint_argument(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", default=None,
                   help="output file or folder (local or s3://); "
                        "default CHECKPOINT/model.onnx or model.torchscript.pt")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--atol", type=float, default=1e-4, help="max allowed |exported - PyTorch| on the logits")
    common.add_s3_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    common.apply_s3_arguments(args)
    from raysegment.model.export import export_model
    from raysegment.model.reference import require_out

    require_out(args.checkpoint, args.out, "export")
    common.announce_checkpoint(args.checkpoint)
    result = export_model(args.checkpoint, args.format, args.out, args.opset, args.atol)
    print(f"wrote {result.path} ({result.format}, {result.size_bytes / 1e6:.1f} MB) and {result.sidecar}")
    print(f"verified on 2 synthetic phantoms: max |{result.format} - pytorch| = {result.max_abs_diff:.2e} "
          f"(atol {args.atol:g})")
    return 0
