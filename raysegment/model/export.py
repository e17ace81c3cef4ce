"""`raysegment export`: a checkpoint as a standalone ONNX or TorchScript model, verified against PyTorch.

The exported model takes what the UNet takes, (N, 1, S, S) float32 in [0, 1] (the output of
data.model_input.to_model_input + to_tensor), and returns (N, C, S, S) logits, one channel per structure of
the checkpoint (config.json "structures": C = 1, the lungs, for a lungs-only model); N is dynamic in ONNX.
S is fixed at the checkpoint's preprocessing size: the model never sees any other size in this project.

Both files carry the checkpoint's config.json (architecture, preprocessing, threshold, model id):
embedded (ONNX metadata_props / TorchScript extra file "config.json") and as a sidecar `<out>.json`,
so a consumer can preprocess exactly as training did without this package.

After exporting, the bytes about to be written are loaded back (onnxruntime / torch.jit.load) and run
on two synthetic phantoms; the export fails unless max |exported - PyTorch| <= --atol (default 1e-4).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from raysegment.data.model_input import to_model_input
from raysegment.data.preprocess import to_tensor
from raysegment.data.synth import make_phantom
from raysegment.errors import ExportError, UserError
from raysegment.io import storage
from raysegment.model.checkpoint import load_model

FORMATS = ("onnx", "torchscript")
DEFAULT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"




@dataclass
class ExportResult:
    path: str  # the exported model (local path or s3:// URI)
    sidecar: str  # `<path>.json`: the checkpoint config plus an "export" section
    format: str
    max_abs_diff: float  # max |exported - PyTorch| over the verification logits
    size_bytes: int


def _require_onnx():
    """Import onnx + onnxruntime lazily: they are the optional `[export]` extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the optional packages onnx and onnxruntime ({e.name} is missing): "
            "pip install 'raysegment[export]'"
        ) from e
    return onnx, onnxruntime


def verification_batch(preprocess_config, n: int = 2):
    """(n, 1, S, S) float32 model input from synthetic phantoms, through the real preprocessing.

    n = 2 while the export traces with batch 1, so the dynamic batch axis is exercised too.
    """
    size = preprocess_config.size
    images = [make_phantom(seed=0, index=i, size=max(2 * size, 64)).image for i in range(n)]
    batch = np.stack([to_model_input(im.astype(np.float32) / 255.0, preprocess_config)[0] for im in images])
    return to_tensor(batch)


def _export_onnx(model, example, opset: int, config: dict) -> bytes:
    onnx, _ = _require_onnx()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy (TorchScript-based) exporter: the torch.export-based one needs onnxscript, which is
        # not a dependency; it warns about deprecation and about the constant-folded padding branch
        # (constant indeed: S is a multiple of 2**depth or the branch is fixed for this S).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "config.json", json.dumps(config)
    proto.doc_string = "raysegment UNet: input (N,1,S,S) float32 in [0,1], output (N,1,S,S) logits"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    _, ort = _require_onnx()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _export_torchscript(model, example, config: dict) -> bytes:
    with warnings.catch_warnings():
        # trace, not script: UNet keeps a dataclass config that TorchScript cannot compile, and at a fixed
        # S the padding branch is a constant. torch.jit is deprecated in favour of torch.export but is
        # still the format that C++/Java/mobile runtimes load.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"config.json": json.dumps(config)})
    return buf.getvalue()


def _run_torchscript(data: bytes, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(x)).numpy()


def export_model(
    checkpoint: str, fmt: str = "onnx", out: str | None = None, opset: int = DEFAULT_OPSET, atol: float = 1e-4
) -> ExportResult:
    """Export a checkpoint (folder, local or s3) to `out` (default: inside the checkpoint), verify, write.

    Nothing is written when the exported model differs from PyTorch by more than `atol`.
    """
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        _require_onnx()  # fail before the slow part
    loaded = load_model(checkpoint)
    size = loaded.spec.preprocess.size
    channels = loaded.spec.model.in_channels
    if channels != 1:
        raise ExportError(f"export supports 1-channel models (grayscale X-rays); this one has {channels}")
    out = out or checkpoint
    if out.endswith("/") or storage.is_dir(out):  # a folder: the default file name inside it
        out = storage.join(out, DEFAULT_FILES[fmt])

    example = torch.zeros(1, 1, size, size)
    config = {**loaded.config, "export": {
        "format": fmt, "source_checkpoint": checkpoint, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_shape": ["N", 1, size, size], "input_range": [0.0, 1.0], "output_kind": "logits",
        "output_shape": ["N", len(loaded.spec.structures), size, size],
        "output_channels": list(loaded.spec.structures),
        **({"opset": opset} if fmt == "onnx" else {}),
    }}
    if fmt == "onnx":
        data = _export_onnx(loaded.model, example, opset, config)
    else:
        data = _export_torchscript(loaded.model, example, config)

    x = verification_batch(loaded.spec.preprocess)
    with torch.no_grad():
        reference = loaded.model(x).numpy()
    got = (_run_onnx if fmt == "onnx" else _run_torchscript)(data, x.numpy())
    if got.shape != reference.shape:
        raise ExportError(f"exported model returned shape {got.shape}, PyTorch {reference.shape}")
    diff = float(np.abs(got - reference).max())
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"exported {fmt} model differs from PyTorch by {diff:.3g} > atol {atol:g}; "
                          "nothing written")

    config["export"]["max_abs_diff"] = diff
    storage.write_bytes(out, data)
    sidecar = out + ".json"
    storage.write_text(sidecar, json.dumps(config, indent=2, default=str))
    return ExportResult(out, sidecar, fmt, diff, len(data))
