"""The reference model shipped in the package (raysegment/reference_model/, issue #21): it loads from the
installed package, `infer` without --checkpoint uses it (on a local folder as people type it, and over S3)
with a one-line notice, its rows carry every structure, the CTR and quality_score; on JSRT's test split it
keeps its measured lung dice; the wheel carries it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile

import pytest

from raysegment.model import reference
from raysegment.outputs.results import read_results

JSRT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "jsrt_512")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from raysegment.data.synth import write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(str(root), 4, seed=5)
    return root


def _check_rows(rows, n):
    assert len(rows) == n and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    with open(os.path.join(reference.shipped_dir(), "config.json")) as f:
        shipped = json.load(f)
    for r in rows:
        assert r["model_id"] == shipped["model_id"]
        assert sorted(p["name"] for p in r["structures"]) == ["clavicles", "heart"]
        assert all(p["area_px"] > 0 for p in r["structures"]) and r["lung_area_px"] > 0
        assert r["ctr"] is not None and 0 < r["ctr"] < 1  # phantoms: present, not a clinical value
        assert r["quality_score"] is not None  # the shipped calibration travels with the weights


def test_infer_without_a_checkpoint_uses_the_shipped_model(ray_local, phantoms, tmp_path, monkeypatch,
                                                           capsys):
    """As typed: relative paths, run from another folder; the console names the model and its terms."""
    from raysegment.cli import main

    assert reference.is_shipped(), "the package ships no reference model"
    monkeypatch.chdir(phantoms)
    assert main(["infer", "--input", "cxr", "--output", os.path.relpath(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if line.startswith("using the shipped reference model")]
    assert len(notice) == 1 and "non-commercial research and education only" in notice[0]
    _check_rows(read_results(str(tmp_path / "out")).to_pylist(), 4)


def test_infer_over_s3_with_the_shipped_model(ray_local, s3_endpoint, phantoms):
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.io import storage

    root = s3_endpoint.create_bucket(f"ref-{uuid.uuid4().hex[:12]}")
    for name in sorted(os.listdir(phantoms / "cxr"))[:2]:
        storage.write_bytes(f"{root}/in/{name}", (phantoms / "cxr" / name).read_bytes())
    summary = run_inference(InferConfig(IOSection(input=f"{root}/in/", output=f"{root}/out"),
                                        ModelSection(checkpoint="reference"),
                                        ScalingSection(batch_size=2, num_actors=1)))
    assert (summary["ok"], summary["missing"]) == (2, 0)
    _check_rows(read_results(f"{root}/out").to_pylist(), 2)


def test_commands_that_write_beside_the_checkpoint_need_an_out_folder(capsys):
    from raysegment.cli import main

    assert main(["export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "raysegment export: error: export would write into the installed package's reference " \
                     "model folder"
    assert main(["calibrate"]) == 2
    assert "pass --out FOLDER" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(JSRT), reason="needs ../shared/data/jsrt_512")
def test_the_shipped_model_keeps_its_jsrt_test_split_lung_dice():
    """JSRT's own test split (its hash split, seed 42: the films the shipped model never saw)."""
    import numpy as np

    from raysegment.evaluation.evaluate import evaluate

    rows = [r for r in evaluate("reference", JSRT, "test").rows if r["status"] == "ok"]
    assert len(rows) == 24
    assert float(np.mean([r["dice"] for r in rows])) >= 0.97


@pytest.mark.slow
def test_the_wheel_carries_the_weights_and_loads_them_from_outside_the_repo(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", repo, "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    [wheel] = list((tmp_path / "dist").glob("raysegment-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"raysegment/reference_model/model.safetensors", "raysegment/reference_model/config.json",
            "raysegment/reference_model/calibration.json"} <= set(names)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, cwd=tmp_path)
    code = ("import raysegment, json; from raysegment.model.checkpoint import load_model; "
            "m = load_model('reference'); print(json.dumps([raysegment.__file__, m.model_id]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    where, model_id = json.loads(out)
    assert where.startswith(str(tmp_path / "site")) and not where.startswith(repo)
    with open(os.path.join(repo, "raysegment", "reference_model", "config.json")) as f:
        shipped = json.load(f)
    assert model_id == shipped["model_id"]
