"""User errors: one line `raysegment CMD: error: ...` (+ at most one hint line), exit 2, no traceback, and
found BEFORE Ray starts or anything is written. `--debug` shows the traceback."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from raysegment.cli import main, run_command
from raysegment.data.preprocess import PreprocessConfig
from raysegment.errors import PlanError, RetryableError
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig


def _error_lines(capsys, command: str) -> tuple[list[str], str]:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Traceback" not in out
    assert 1 <= len(lines) <= 2 and lines[0].startswith(f"raysegment {command}: error: "), err
    return lines, out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli_errors") / "ckpt")
    torch.manual_seed(0)
    save_checkpoint(path, UNet(base_channels=4, depth=2),
                    ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32)))
    return path


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_infer_missing_input(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["infer", "--input", "/nonexistent/xrays", "--checkpoint", checkpoint, "--output", str(out)]
    assert main(args) == 2
    lines, _ = _error_lines(capsys, "infer")
    assert "/nonexistent/xrays" in lines[0] and "no such file or folder" in lines[0]
    assert not out.exists()  # nothing written


def test_infer_bad_checkpoint(synth_generic, tmp_path, capsys):
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    for ckpt in (str(bad), str(tmp_path / "missing")):
        args = ["infer", "--input", synth_generic, "--checkpoint", ckpt, "--output", str(tmp_path / "o")]
        assert main(args) == 2
        lines, _ = _error_lines(capsys, "infer")
        assert ckpt in lines[0] and "checkpoint" in lines[0]
    assert not (tmp_path / "o").exists()


def test_train_bad_config_value(capsys):
    assert main(["train", "--data", "/tmp", "--set", "optim.lr=fast"]) == 2
    lines, _ = _error_lines(capsys, "train")
    assert "optim.lr" in lines[0]


def test_train_missing_data_fails_before_ray(tmp_path, capsys):
    start = time.perf_counter()
    args = ["train", "--data", "/nonexistent", "--storage", str(tmp_path / "runs"), "--epochs", "1"]
    assert main(args) == 2
    assert time.perf_counter() - start < 10
    lines, out = _error_lines(capsys, "train")
    assert "data.path /nonexistent" in lines[0]
    assert "run dir" not in out and not (tmp_path / "runs").exists()  # Ray not started, nothing written


def test_unreachable_s3_fails_in_seconds(checkpoint, tmp_path, capsys, monkeypatch):
    from raysegment.io import storage

    monkeypatch.setattr(storage, "_default_s3", storage.S3Options())
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    rc = main(["infer", "--input", "s3://bucket/xrays", "--checkpoint", checkpoint, "--output", str(tmp_path),
               "--s3-endpoint", endpoint])
    assert rc == 2 and time.perf_counter() - start < 20
    lines, _ = _error_lines(capsys, "infer")
    assert "cannot reach s3://bucket" in lines[0] and endpoint in lines[0]
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)  # the flag exported it; monkeypatch restores the rest


def test_preflight_names_a_missing_bucket(s3_endpoint, monkeypatch):
    from raysegment.errors import InputError
    from raysegment.io import preflight, storage

    monkeypatch.setattr(storage, "_default_s3", storage.S3Options())
    bucket = s3_endpoint.create_bucket("preflight-ok")
    preflight.check_reachable(f"{bucket}/data", None, "/local/path")  # exists: passes
    with pytest.raises(InputError, match="s3://no-such-bucket-x: no such bucket"):
        preflight.check_reachable(f"{bucket}/data", "s3://no-such-bucket-x/out")


def test_unschedulable_plan_and_retryable_errors_use_their_exit_codes(capsys):
    def plan_fails(args):
        raise PlanError("8 worker(s) x (1 GPU, 1 CPU) requested; the cluster has 0 GPU, 2 CPU")

    def capacity_late(args):
        raise RetryableError("the cluster did not grow to 8 GPUs within 600 s",
                             hint="run the same command later")

    assert run_command("train", plan_fails, None) == 2
    lines, _ = _error_lines(capsys, "train")
    assert "0 GPU" in lines[0]
    assert run_command("infer", capacity_late, None) == 3
    lines, _ = _error_lines(capsys, "infer")
    assert lines[1].strip() == "run the same command later"


def test_debug_shows_the_traceback(capsys):
    assert main(["--debug", "evaluate", "--checkpoint", "/nonexistent/ckpt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-2].startswith("raysegment evaluate: error: ")
    assert main(["evaluate", "--checkpoint", "/nonexistent/ckpt", "--debug"]) == 2  # after the command too
    assert "Traceback" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_with_exit_1(capsys):
    def bug(args):
        raise KeyError("oops")

    assert run_command("show", bug, None) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[0] == "raysegment show: error: KeyError: 'oops'"
    assert "--debug" in err
