import json
import os
import subprocess
import sys

import pytest
import torch

from raysegment import UNet, load_model
from raysegment.data.preprocess import PreprocessConfig
from raysegment.io import storage
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.unet import UNetConfig


def test_local_storage_round_trip(tmp_path):
    uri = str(tmp_path / "a" / "b" / "file.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello" and storage.exists(uri)
    entries = storage.list_files(str(tmp_path))
    assert [e.uri for e in entries] == [uri] and entries[0].size == 5 and entries[0].mtime_ns
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.list_files(str(tmp_path / "nope"))


def test_s3_options_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    resolved = storage.S3Options().resolved()
    assert resolved.endpoint_url == "http://127.0.0.1:9" and resolved.region == "us-east-1"
    fs, path = storage.filesystem("s3://bucket/key/x.png")
    assert path == "bucket/key/x.png" and type(fs).__name__ == "S3FileSystem"


def test_redact_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-that-is-long")
    text = ("aws_secret_access_key=abc123 failed with AKIAABCDEFGHIJKLMNOP and "
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY s3cr3t-value-that-is-long")
    clean = storage.redact(text)
    for secret in ("abc123", "AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                   "s3cr3t-value-that-is-long"):
        assert secret not in clean
    # ...and nothing else is lost: the message stays readable (an empty string would pass the loop above).
    assert clean == "aws_secret_access_key=*** failed with *** and *** ***"
    assert storage.redact("token: 'xyz', retry 3 of 5") == "token: '***', retry 3 of 5"
    ordinary = "s3://bucket/scans/IM0001.dcm: connection refused after 5 attempts"
    assert storage.redact(ordinary) == ordinary


def test_checkpoint_round_trip_without_ray(tmp_path):
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32, resize="letterbox"), 0.4)
    model_id = save_checkpoint(str(tmp_path / "ckpt"), model, spec,
                               {"epoch": 3, "metrics": {"val_dice": 0.5}})
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["epoch"] == 3 and config["preprocess"]["resize"] == "letterbox"
    assert "torch" in config["versions"]

    loaded = load_model(str(tmp_path / "ckpt"))
    assert loaded.spec == spec and loaded.model_id == model_id and not loaded.model.training
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.eval()(x))
    # Loading must not need Ray.
    code = f"import sys; import raysegment; raysegment.load_model({str(tmp_path / 'ckpt')!r}); " \
           "assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_cli_help_and_version():
    def run(*a):
        return subprocess.run([sys.executable, "-m", "raysegment", *a], check=False, capture_output=True,
                              text=True, timeout=60)

    import raysegment

    assert run("--version").stdout == f"raysegment {raysegment.__version__}\n"
    out = run("--help")
    assert out.returncode == 0 and "synth" in out.stdout
    assert run("synth", "--help").returncode == 0
