"""End to end with a multi-structure model: train on two partly labelled sources (a Montgomery-like set with
lungs only, a JSRT-like set with lungs, heart and clavicles), then evaluate and infer --ground-truth score
every structure and the CTR with the one scoring path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from raysegment.io.rle import decode_rle
from raysegment.outputs.results import read_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURES = ["lungs", "heart", "clavicles"]


@pytest.fixture(scope="module")
def anatomy(ray_local, tmp_path_factory):
    from raysegment.data.synth import write_dataset
    from raysegment.train.config import load_config
    from raysegment.train.driver import train

    root = tmp_path_factory.mktemp("anatomy")
    write_dataset(str(root / "mont"), n=12, size=64, seed=11, layout="montgomery")  # lungs only
    write_dataset(str(root / "scr"), n=20, size=64, seed=12, layout="structures")  # all three
    config = load_config(os.path.join(ROOT, "configs", "train-small.yaml"), {
        "structures": STRUCTURES, "model.out_channels": 3, "optim.epochs": 2,
        "data.sources": [{"name": "mont", "path": str(root / "mont")},
                         {"name": "scr", "path": str(root / "scr")}],
        "run.storage_path": str(root / "runs"), "run.name": "anat"})
    return root, train(config)


def test_training_on_partly_labelled_sources(anatomy):
    root, result = anatomy
    run_dir = Path(result.run_dir)
    # Per-structure validation: a column per structure; heart and clavicles scored on the scr images only.
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("val_dice_")] == [f"val_dice_{s}" for s in STRUCTURES]
    row = result.history[-1]
    assert row["val_dice"] == pytest.approx(sum(row[f"val_dice_{s}"] for s in STRUCTURES) / 3)
    # The checkpoint records its structures; the split manifest its sources, each split on its own.
    best = json.loads((run_dir / "best" / "config.json").read_text())
    assert best["structures"] == STRUCTURES and best["model"]["out_channels"] == 3
    from raysegment.data.datasets import load_split_dataset

    manifest = load_split_dataset(str(run_dir / "split_manifest.csv"))
    alone = load_split_dataset(str(root / "scr"))
    assert {p.image_id: manifest.splits[p.image_id] for p in manifest.discovery.pairs if p.source == "scr"} \
        == alone.splits
    assert {p.source: sorted(p.masks()) for p in manifest.discovery.pairs} == {
        "mont": ["lungs"], "scr": ["clavicles", "heart", "lungs"]}
    # The test evaluation: lung dice on both sources, heart and clavicles (and the CTR) on scr's only.
    test = json.loads((run_dir / "test_metrics.json").read_text())
    scr_test = [r for r in test["per_image"] if r["source"] == "scr"]
    mont_test = [r for r in test["per_image"] if r["source"] == "mont"]
    assert scr_test and mont_test
    assert all(r["heart_dice"] is not None and r["truth_ctr"] is not None for r in scr_test)
    assert all(r["heart_dice"] is None and r["dice"] is not None for r in mont_test)
    assert test["structure_dice"]["heart"]["n"] == len(scr_test)
    assert test["ctr_agreement"]["abs_diff"]["n"] == sum(r["ctr"] is not None for r in scr_test)


def test_infer_with_ground_truth_matches_evaluate_per_structure(anatomy, tmp_path, capsys):
    from raysegment.cli import main

    root, result = anatomy
    best = os.path.join(result.run_dir, "best")
    assert main(["evaluate", "--checkpoint", best, "--data", str(root / "scr"), "--split", "all",
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "dice per structure" in printed and "CTR:" in printed
    from raysegment.evaluation.evaluate import flat_row  # heart_dice, heart_area_px, ... from `structures`

    evaluated = {r["image_id"]: flat_row(r) for r in _read_rows(tmp_path / "eval" / "per_image.parquet")}
    assert main(["infer", "--input", str(root / "scr" / "cxr"), "--checkpoint", best, "--output",
                 str(tmp_path / "infer"), "--ground-truth", str(root / "scr")]) == 0
    rows = read_results(str(tmp_path / "infer")).to_pylist()
    assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        e = evaluated[r["image_id"]]
        parts = {p["name"]: p for p in r["structures"]}
        assert sorted(parts) == ["clavicles", "heart"]
        assert r["dice"] == pytest.approx(e["dice"], abs=1e-9)
        for name in ("heart", "clavicles"):
            assert parts[name]["dice"] == pytest.approx(e[f"{name}_dice"], abs=1e-9)
            mask = decode_rle(parts[name]["mask_rle"], r["height"], r["width"])
            assert parts[name]["area_px"] == e[f"{name}_area_px"] == mask.sum()
        assert (r["ctr"] is None) == (e["ctr"] is None)
        if r["ctr"] is not None:
            assert r["ctr"] == pytest.approx(e["ctr"]) and r["thoracic_row"] == e["thoracic_row"]
            assert r["ctr"] == pytest.approx(r["heart_width_px"] / r["thoracic_width_px"])
        else:
            assert "ctr_not_measurable" in r["qc_notes"]
    # The Python API (predict) gives the pipeline's masks and CTR pixel for pixel.
    from raysegment.infer.predict import predict
    from raysegment.model.checkpoint import load_model

    loaded = load_model(best)
    for r in rows[:3]:
        single = predict(loaded, Path(r["image_uri"]).read_bytes(), r["image_uri"])
        for part in r["structures"]:
            assert np.array_equal(single.structures[part["name"]],
                                  decode_rle(part["mask_rle"], r["height"], r["width"]))
        assert (single.ctr.ctr if single.ctr else None) == r["ctr"]
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert summary["structure_dice"]["heart"]["n"] == 20


def _read_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_dicom_input_gets_a_seg_with_a_segment_per_structure(anatomy, tmp_path):
    """A DICOM film through a multi-structure model: area in cm2 from its pixel spacing, and a DICOM SEG whose
    Heart and Clavicles segments are exactly the row's masks."""
    import cv2

    from raysegment.cli import main
    from raysegment.outputs.dicom_seg import read_seg_segments
    from raysegment.testing.dicom import make_dicom_bytes, with_study

    root, result = anatomy
    image = cv2.imread(str(root / "scr" / "cxr" / "SYN_0001_1.png"), cv2.IMREAD_GRAYSCALE)
    (tmp_path / "in").mkdir()
    film = make_dicom_bytes(image.astype(np.uint16) * 16, pixel_spacing=(0.5, 0.5))
    (tmp_path / "in" / "film.dcm").write_bytes(with_study(film))
    best = os.path.join(result.run_dir, "best")
    assert main(["infer", "--input", str(tmp_path / "in"), "--checkpoint", best,
                 "--output", str(tmp_path / "out"), "--dicom-seg-out", str(tmp_path / "seg")]) == 0
    [row] = read_results(str(tmp_path / "out")).to_pylist()
    assert row["status"] == "ok" and row["dicom_seg_uri"]
    segments = read_seg_segments(Path(row["dicom_seg_uri"]).read_bytes())
    assert list(segments) == ["Lung", "Heart", "Clavicles"]
    for part in row["structures"]:
        mask = decode_rle(part["mask_rle"], row["height"], row["width"])
        assert np.array_equal(segments[part["name"].capitalize()], mask)
        assert part["area_cm2"] == pytest.approx(mask.sum() * 0.25 / 100)
