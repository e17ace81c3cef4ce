"""`raysegment export`: ONNX and TorchScript reproduce the PyTorch logits within 1e-4 and carry the config."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raysegment.cli import main
from raysegment.data.preprocess import PreprocessConfig
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.export import export_model, verification_batch
from raysegment.model.unet import UNet, UNetConfig


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> str:
    """An untrained small UNet (random weights, non-trivial BatchNorm statistics) at size 64."""
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2)
    for m in model.modules():  # default running stats (0, 1) would hide a BatchNorm export bug
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=64), threshold=0.45)
    uri = str(tmp_path_factory.mktemp("export") / "ckpt")
    save_checkpoint(uri, model, spec, {"epoch": 1})
    return uri


def _reference(checkpoint: str, x: torch.Tensor) -> np.ndarray:
    from raysegment.model.checkpoint import load_model

    with torch.no_grad():
        return load_model(checkpoint).model(x).numpy()


def test_onnx_export_matches_pytorch(small_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    out = str(tmp_path / "m.onnx")
    args = ["export", "--checkpoint", small_checkpoint, "--format", "onnx", "--out", out, "--opset", "17"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "max |onnx - pytorch|" in printed

    # Independently of the command's own check: a batch of 3 (the batch axis is dynamic), real preprocessing.
    x = verification_batch(PreprocessConfig(size=64), n=3)
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert got.shape == (3, 1, 64, 64)
    assert np.abs(got - _reference(small_checkpoint, x)).max() < 1e-4

    sidecar = json.loads(Path(out + ".json").read_text())
    assert sidecar["preprocess"]["size"] == 64 and sidecar["threshold"] == 0.45
    assert sidecar["export"]["format"] == "onnx" and sidecar["export"]["max_abs_diff"] < 1e-4
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["config.json"])["model_id"] == sidecar["model_id"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export_matches_pytorch(small_checkpoint, tmp_path):
    result = export_model(small_checkpoint, "torchscript")  # default: inside the checkpoint folder
    assert result.path == str(Path(small_checkpoint, "model.torchscript.pt")) and result.max_abs_diff < 1e-4
    in_folder = export_model(small_checkpoint, "torchscript", out=str(tmp_path) + "/")
    assert in_folder.path == str(tmp_path / "model.torchscript.pt") and Path(in_folder.sidecar).exists()

    extra = {"config.json": ""}
    loaded = torch.jit.load(result.path, _extra_files=extra)
    assert json.loads(extra["config.json"])["preprocess"]["size"] == 64
    x = verification_batch(PreprocessConfig(size=64), n=3)
    with torch.no_grad():
        got = loaded(x).numpy()
    assert np.abs(got - _reference(small_checkpoint, x)).max() < 1e-4


def test_export_reports_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--format", "torchscript"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_missing_onnx_gives_an_install_hint(small_checkpoint, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    from raysegment.errors import ExportError

    with pytest.raises(ExportError, match=r"pip install 'raysegment\[export\]'"):
        export_model(small_checkpoint, "onnx", out=str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()
