"""The GPU path, exercised on CPU (issue #14): no test machine has a GPU, so every GPU-only branch that
torch can run on a CPU runs here, and cannot rot unnoticed.

- The GPU forward recipe (bf16 autocast + channels_last) on CPU: engaged, close to fp32, and the GPU
  micro-batch path (fixed-size zero-padded chunks) independent of batch composition.
- The device override (`--device cpu` of infer and train): flags reach the configs; impossible combinations
  fail before any Ray work.
- bench/gpu_check.py --device cpu --quick end to end (slow): Ray starts with a FAKE GPU, so the inference
  actors and the training worker ask for and get a GPU (the plan says "1 GPU", the actor/worker says which
  GPU it holds) while the model runs on the CPU by the user-facing override.

What only a real GPU can check (CUDA kernels, bf16 tensor-core speed, NCCL, memory): docs/operations.md,
"GPU check".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from raysegment.cluster.plan import ClusterResources, NodeResources
from raysegment.data.preprocess import to_tensor
from raysegment.errors import ConfigError, PlanError
from raysegment.model.forward import GPU_MICRO_BATCH, forward_probabilities, gpu_recipe
from raysegment.model.unet import UNet
from raysegment.testing.models import untrained_unet
from raysegment.train.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def phantom_inputs(n: int, size: int = 64) -> np.ndarray:
    from raysegment.data.preprocess import PreprocessConfig, preprocess_image
    from raysegment.data.synth import make_phantom

    return np.stack([preprocess_image(make_phantom(9, i, 128).image.astype(np.float32) / 255,
                                      PreprocessConfig(size=size))[0] for i in range(n)])


def structured_model() -> UNet:
    """An untrained tiny UNet, eval mode, whose masks are not trivial: BatchNorm statistics randomized and the
    head bias set so that a quarter of the pixels of phantoms are "lung" (many pixels near the threshold)."""
    from raysegment.data.preprocess import to_tensor

    model = untrained_unet()
    with torch.no_grad():
        model.head.bias -= torch.quantile(model(to_tensor(phantom_inputs(2))).flatten(), 0.75)
    return model


def test_gpu_recipe_engages_bf16_and_channels_last_on_cpu():
    model = structured_model().to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 32, 32)
    y, precision = gpu_recipe(x, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), precision:
        assert model(y).dtype == torch.bfloat16  # autocast really ran the convs in bf16
    y, precision = gpu_recipe(x, False)
    with torch.no_grad(), precision:
        assert y is x and model(y).dtype == torch.float32


def test_bf16_forward_on_cpu_is_close_to_fp32():
    model = structured_model()
    images = phantom_inputs(4)
    fp32 = forward_probabilities(model, images)  # the CPU default: fp32, micro-batch 1
    with torch.no_grad():  # the model input is preprocess.to_tensor's, whatever the device it is made on
        reference = (torch.sigmoid(model(to_tensor(images[:1])))[0, 0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(fp32[0], reference)
    assert forward_probabilities(model, images, bf16=False).tobytes() == fp32.tobytes()
    model = model.to(memory_format=torch.channels_last)
    bf16 = forward_probabilities(model, images, micro_batch=4, bf16=True)
    diff = np.abs(bf16.astype(int) - fp32.astype(int))
    assert diff.mean() < 2.0, diff.mean()  # in probability x 255 levels
    agree = ((bf16 > 127) == (fp32 > 127)).mean()
    assert agree > 0.97, agree
    assert not np.array_equal(bf16, fp32)  # bf16 really differs: the recipe was not silently skipped


def test_gpu_micro_batch_path_is_independent_of_batch_composition():
    """On GPU actors the forward runs fixed chunks of micro_batch images, the last zero-padded: an image's
    result must not depend on its neighbours or on the padding (same shape, same kernels)."""
    model = structured_model().to(memory_format=torch.channels_last)
    images = phantom_inputs(6)
    together = forward_probabilities(model, images, micro_batch=4, bf16=True)  # chunks of 4 + 2 padded
    first_three = forward_probabilities(model, images[:3], micro_batch=4, bf16=True)  # 3 + 1 padding
    assert np.array_equal(together[:3], first_three)
    shifted = forward_probabilities(model, images[2:], micro_batch=4, bf16=True)  # other neighbours
    assert np.abs(shifted[:2].astype(int) - together[2:4].astype(int)).max() <= 1


def test_train_autocast_runs_bf16_on_cpu_when_asked():
    from raysegment.train.loop import _autocast

    model = structured_model().train()
    x = torch.rand(2, 1, 32, 32)
    with _autocast(torch.device("cpu"), True):
        assert model(x).dtype == torch.bfloat16
    with _autocast(torch.device("cpu"), False):
        assert model(x).dtype == torch.float32


# --- the device override ---------------------------------------------------------------------------

def test_infer_device_flag_reaches_the_config(monkeypatch, tmp_path):
    from raysegment.cli import main
    from raysegment.infer import pipeline

    seen = {}

    def fake_run(config):
        seen["config"] = config
        return {"missing": 0, "dry_run": True}  # the CLI then prints no run summary

    monkeypatch.setattr(pipeline, "run_inference", fake_run)
    assert main(["infer", "--input", str(tmp_path), "--checkpoint", "c", "--output", "o",
                 "--device", "cpu"]) == 0
    assert seen["config"].scaling.device == "cpu" and seen["config"].scaling.use_gpu is None
    with pytest.raises(SystemExit):
        main(["infer", "--input", str(tmp_path), "--checkpoint", "c", "--output", "o", "--device", "gpu"])


def test_infer_plan_with_a_device_override():
    from raysegment.infer.config import ScalingSection
    from raysegment.infer.sizing import plan

    gpu_node = ClusterResources((NodeResources(2, 1),))
    p = plan(ScalingSection(device="cpu"), gpu_node)
    assert p.use_gpu and p.num_actors == 1  # the GPU plan stays: actors ask for the GPU
    with pytest.raises(PlanError, match="--device cuda needs GPU actors"):
        plan(ScalingSection(device="cuda"), ClusterResources((NodeResources(2, 0),)))
    with pytest.raises(PlanError, match="drop --no-gpu"):
        plan(ScalingSection(device="cuda", use_gpu=False), gpu_node)


def test_train_device_flag_and_validation(capsys):
    from raysegment.cli import main

    assert main(["train", "--config", os.path.join(ROOT, "configs", "montgomery-gpu.yaml"), "--device", "cpu",
                 "--print-config"]) == 0
    assert "device: cpu" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="scaling.device"):
        load_config(None, {"scaling.device": "gpu"})
    with pytest.raises(ConfigError, match="cuda needs GPU workers"):
        load_config(None, {"scaling.device": "cuda", "scaling.use_gpu": False})


# --- the prepared device check, on CPU ---------------------------------------------------------------

def _gpu_check(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--device", "cpu", "--quick",
               "--work", str(tmp_path / "work"), "--out", str(tmp_path / "gpu_check.json"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
                          check=False)


def test_gpu_check_part_cut_short_still_reports(tmp_path):
    """A part that runs out of its time limit is recorded as such, the JSON is written, the run goes on."""
    proc = _gpu_check(tmp_path, "--parts", "forward", "--limit-scale", "0.001")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    forward = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["forward"]
    assert forward["status"] == "timeout" and "time limit" in forward["error"]
    assert "GPU check on" in proc.stdout  # the table is still printed


@pytest.mark.slow
def test_gpu_check_quick_runs_end_to_end_on_cpu_with_a_fake_gpu(tmp_path):
    proc = _gpu_check(tmp_path, "--cpus", "2")
    out = tmp_path / "gpu_check.json"
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    report = json.loads(out.read_text())
    assert report["ray_resources"]["GPU"] == 1
    parts = report["parts"]
    assert {k: v["status"] for k, v in parts.items()} == {
        "forward": "ok", "pipeline_png512": "ok", "pipeline_originals": "ok", "train": "ok"}
    forward = parts["forward"]["result"]
    assert forward["flops_per_image"] > 0 and all(r["images_per_s"] > 0 for r in forward["sweep"])
    for key in ("pipeline_png512", "pipeline_originals"):
        r = parts[key]["result"]
        assert r["ok"] == r["images"] > 0 and r["errors"] == 0
        assert "1 GPU" in r["plan"]  # the actors asked for a GPU ...
        assert r["batch_size"] == GPU_MICRO_BATCH  # ... and ran the GPU micro-batch path (default size)
    assert set(parts["pipeline_originals"]["result"]["stage_costs_single_cpu"]) == {"png", "jpg", "dcm"}
    train = parts["train"]["result"]
    assert train["images_per_s_last_epoch"] > 0
    assert train["train_flops_per_image"] > forward["flops_per_image"]
    # ... and got one, while the model ran on the CPU (the override says so once per actor / run)
    assert "inference actor holds GPU(s) [0] but runs the model on cpu" in log
    assert "worker 0 holds GPU(s) [0] but runs the model on cpu" in log
    assert "GPU check on" in log  # the printed table
