"""Relative paths (issue #23): `raysegment infer` and `raysegment train` started from another working
directory with relative --input / --output / --masks-out / --ground-truth / --dicom-seg-out (train: --data,
--storage) give the same rows, summary and exit code as with absolute paths; an output written by a run
from before the fix (relative paths not resolved: every row written, a summary of 0 rows and exit 1)
resumes without redoing or duplicating a row."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from raysegment.outputs.results import read_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PNG = 3
TIMING = ("read_ms", "decode_ms", "infer_ms", "postprocess_ms", "total_ms")


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory):
    """data/ (3 synthetic films with masks, plus one DICOM film with patient and study), a tiny checkpoint."""
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.data.synth import write_dataset
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig
    from raysegment.testing.dicom import make_dicom_bytes, with_study

    root = tmp_path_factory.mktemp("relative")
    write_dataset(str(root / "data"), n=N_PNG, size=48, seed=7, layout="generic")
    film = cv2.imread(str(root / "data" / "cxr" / min(os.listdir(root / "data" / "cxr"))), 0)
    dicom = with_study(make_dicom_bytes(film.astype(np.uint16) * 16))
    (root / "data" / "cxr" / "film.dcm").write_bytes(dicom)
    torch.manual_seed(0)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32), threshold=0.5)
    save_checkpoint(str(root / "ck"), UNet(base_channels=4, depth=2), spec)
    return root


def _infer(world, *args: str) -> int:
    from raysegment.cli import main

    return main(["infer", *args, "--checkpoint", str(world / "ck"), "--num-actors", "1", "--batch-size", "4"])


def _summary(output) -> dict:
    with open(os.path.join(output, "summary.json")) as f:
        return json.load(f)


def _comparable(row: dict, masks: str, segs: str) -> dict:
    """A row without what differs between two runs by design: run id, timings, and where the outputs went
    (mask and SEG paths are compared relative to their folders)."""
    out = {k: v for k, v in row.items() if k not in ("run_id", "mask_uri", "dicom_seg_uri", *TIMING)}
    for k, root in (("mask_uri", masks), ("dicom_seg_uri", segs)):
        out[k] = os.path.relpath(row[k], root) if row[k] else None
    return out


def test_relative_paths_give_the_absolute_run_and_an_old_relative_output_resumes(world, monkeypatch, capsys):
    from raysegment.infer import pipeline

    monkeypatch.chdir(world)
    n = N_PNG + 1
    # 1. As before the fix (nothing resolved): every row is written, but the summary finds none of them.
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "resolve_paths", lambda config: config)
        assert _infer(world, "--input", "data/cxr", "--output", "old") == 1
    assert "inputs have no row" in capsys.readouterr().out
    assert _summary("old")["rows_written"] == 0 and _summary("old")["missing"] == n  # the bug, reproduced
    before = read_results("old", all_rows=True)
    assert before.num_rows == n and all(os.path.isabs(u) for u in before.column("image_uri").to_pylist())
    # 2. The same command now resumes that output: nothing to do, nothing duplicated, a true summary.
    assert _infer(world, "--input", "data/cxr", "--output", "old") == 0
    summary = _summary("old")
    assert (summary["inputs_seen"], summary["skipped_resume"], summary["processed"]) == (n, n, 0)
    assert (summary["ok"], summary["missing"]) == (n, 0)
    assert read_results("old", all_rows=True).num_rows == n

    # 3. Every path relative vs every path absolute, from the same directory: same rows, summary, exit 0.
    relative = ["--input", "data/cxr", "--output", "rel", "--masks-out", "rel_masks",
                "--ground-truth", "data", "--dicom-seg-out", "rel_segs"]
    absolute = ["--input", str(world / "data/cxr"), "--output", str(world / "abs"), "--masks-out",
                str(world / "abs_masks"), "--ground-truth", str(world / "data"), "--dicom-seg-out",
                str(world / "abs_segs")]
    assert _infer(world, *relative) == 0
    assert _infer(world, *absolute) == 0
    rel, ab = _summary("rel"), _summary(str(world / "abs"))
    assert rel["output"] == str(world / "rel") and rel["rows_written"] == n and rel["missing"] == 0
    varying = ("run_id", "output", "wall_s", "images_per_s", "plan")
    same = {k: v for k, v in ab.items() if k not in varying}
    assert {k: v for k, v in rel.items() if k not in varying} == same
    rows_rel = sorted(read_results("rel").to_pylist(), key=lambda r: r["image_uri"])
    rows_abs = sorted(read_results(str(world / "abs")).to_pylist(), key=lambda r: r["image_uri"])
    assert [_comparable(r, str(world / "rel_masks"), str(world / "rel_segs")) for r in rows_rel] == [
        _comparable(r, str(world / "abs_masks"), str(world / "abs_segs")) for r in rows_abs]
    for row in rows_rel:  # every URI absolute, every file where the row says
        assert row["status"] == "ok" and os.path.isabs(row["image_uri"]) and os.path.isfile(row["mask_uri"])
        assert row["mask_uri"].startswith(str(world / "rel_masks") + os.sep)
    seg = [r for r in rows_rel if r["dicom_seg_uri"]]
    assert len(seg) == 1 and seg[0]["dicom_seg_uri"].startswith(str(world / "rel_segs") + os.sep)
    assert sum(1 for r in rows_rel if r["truth_uri"]) == N_PNG and all(
        os.path.isabs(r["truth_uri"]) for r in rows_rel if r["truth_uri"])
    assert rel["metrics"]["n_scored"] == N_PNG


def test_train_with_a_relative_data_and_storage_path(ray_local, tmp_path, monkeypatch):
    from raysegment.cli import main
    from raysegment.data.synth import write_dataset

    write_dataset(str(tmp_path / "phantoms"), n=12, size=48, seed=3, layout="generic")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", os.path.join(ROOT, "configs", "train-small.yaml"), "--data",
                 "../phantoms", "--storage", "runs", "--name", "rel", "--epochs", "1", "--num-workers", "1",
                 "--size", "32", "--set", "run.evaluate_test=false", "--set", "run.calibrate=false"]) == 0
    run_dir = elsewhere / "runs" / "rel"
    assert (run_dir / "best" / "model.safetensors").is_file() and (run_dir / "metrics.csv").is_file()
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tmp_path / "phantoms")
    assert saved["run"]["storage_path"] == str(elsewhere / "runs")
    images = [line.split(",")[2] for line in (run_dir / "split_manifest.csv").read_text().splitlines()[1:]]
    assert len(images) == 12 and all(os.path.isabs(p) and os.path.isfile(p) for p in images)
