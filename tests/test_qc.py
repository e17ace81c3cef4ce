"""QC: quality_score (predicted dice) from a calibration stored with the checkpoint, reason severities,
the calibration in the resume identity, and evaluate's QC report."""

import json
import os

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from worklist_helpers import skipped

from raysegment.cli import main
from raysegment.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask, to_tensor
from raysegment.data.synth import make_phantom, write_dataset
from raysegment.evaluation.qc_report import qc_report
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.forward import torch_threads
from raysegment.model.unet import UNet, UNetConfig
from raysegment.outputs.results import SCHEMA, SCHEMA_VERSION, read_results, summarize_results
from raysegment.postprocess.masks import PostprocessConfig, Segmentation, qc_reasons, severity, split_reasons
from raysegment.postprocess.quality import CALIBRATION_FILE, References, load_calibration
from raysegment.train.losses import loss_function

# --- fixtures: a tiny model that really segments phantoms, and its calibration ----------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    """40 phantoms (generic layout): the calibration's val split and the infer/evaluate inputs."""
    out = str(tmp_path_factory.mktemp("qc_data"))
    write_dataset(out, n=40, size=128, seed=11, layout="generic")
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny UNet (32 px) trained in-process for ~3 s on other phantoms: dice ~0.96 on phantoms."""
    torch.manual_seed(0)
    spec = ModelSpec(UNetConfig(base_channels=8, depth=2), PreprocessConfig(size=32), threshold=0.5)
    phantoms = [make_phantom(3, i, 128) for i in range(48)]
    x = to_tensor(np.stack([preprocess_image(p.image.astype(np.float32) / 255, spec.preprocess)[0]
                            for p in phantoms]))
    y = torch.from_numpy(np.stack([preprocess_mask(p.mask, spec.preprocess)
                                   for p in phantoms])).float()[:, None]
    model = UNet.from_config(spec.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = loss_function("bce_dice")
    rng = np.random.default_rng(0)
    model.train()
    with torch_threads(1):  # two threads on a busy 2-core box are 5x slower than one
        for _ in range(200):
            idx = torch.from_numpy(rng.choice(len(x), 8, replace=False))
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    uri = str(tmp_path_factory.mktemp("qc_ckpt") / "best")
    save_checkpoint(uri, model, spec)
    return uri


@pytest.fixture(scope="module")
def calibrated(checkpoint, labelled) -> dict:
    assert main(["calibrate", "--checkpoint", checkpoint, "--data", labelled, "--copies", "8"]) == 0
    with open(os.path.join(checkpoint, CALIBRATION_FILE)) as f:
        return json.load(f)


def _hand(size: int = 128) -> np.ndarray:
    """A synthetic hand radiograph: bright bones of a palm and five fingers on a dark background."""
    img = np.full((size, size), 30, np.uint8)
    s = size / 128
    cv2.ellipse(img, (int(64 * s), int(90 * s)), (int(26 * s), int(30 * s)), 0, 0, 360, 140, -1)
    for k, (x, angle) in enumerate(((36, -35), (50, -10), (64, 0), (78, 10), (92, 30))):
        length = (30 if k in (0, 4) else 45) * s
        dx, dy = np.sin(np.radians(angle)) * length, -np.cos(np.radians(angle)) * length
        start = (int(x * s), int(70 * s))
        cv2.line(img, start, (int(start[0] + dx), int(start[1] + dy)), 200, max(2, int(7 * s)))
    return img


@pytest.fixture(scope="module")
def inputs(labelled, tmp_path_factory) -> str:
    """12 phantoms + a blank film, a noise image and a hand."""
    folder = tmp_path_factory.mktemp("qc_inputs")
    names = sorted(os.listdir(os.path.join(labelled, "cxr")))[:12]
    for name in names:
        os.link(os.path.join(labelled, "cxr", name), folder / name)
    cv2.imwrite(str(folder / "blank.png"), np.zeros((128, 128), np.uint8))
    cv2.imwrite(str(folder / "noise.png"),
                np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8))
    cv2.imwrite(str(folder / "hand.png"), _hand())
    return str(folder)


# --- fast units ----------------------------------------------------------------------------------

def test_severity_registry_flags_set_qc_flag_notes_never_do():
    assert severity("low_quality_score") == "flag" and severity("no_lung") == "flag"
    assert severity("a_reason_added_later") == "note"  # unregistered reasons cannot raise the flag rate
    assert split_reasons(["no_lung", "inversion_corrected", "low_quality_score"]) == (
        ["no_lung", "low_quality_score"], ["inversion_corrected"])


def test_low_quality_score_reason_uses_calibration_threshold_unless_overridden():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 4:18] = mask[5:35, 22:36] = True
    seg = Segmentation(mask, 420, 420, 2, 0.95)
    assert qc_reasons(seg) == []
    assert qc_reasons(seg, PostprocessConfig(), 0.80, 0.85) == ["low_quality_score"]
    assert qc_reasons(seg, PostprocessConfig(), 0.90, 0.85) == []
    assert qc_reasons(seg, PostprocessConfig(min_quality_score=0.95), 0.90, 0.85) == ["low_quality_score"]
    assert qc_reasons(seg, PostprocessConfig(), None, 0.85) == []  # no calibration: no score, no reason


def test_resume_redoes_rows_of_another_calibration_or_schema():
    row = {"model_id": "m", "calibration_id": "c1", "schema_version": SCHEMA_VERSION, "input_size": 5,
           "input_mtime_ns": 7, "input_etag": None, "truth_uri": None}
    assert skipped(row, "m", 5, 7, None, None, "c1")
    assert not skipped(row, "m", 5, 7, None, None, "c2")  # re-calibrated: scores and flags change
    assert not skipped(row, "m", 5, 7, None, None, None)  # calibration removed
    assert not skipped({**row, "schema_version": 1}, "m", 5, 7, None, None, "c1")  # older schema
    assert not skipped({**row, "calibration_id": None}, "m", 5, 7, None, None, "c1")


def test_summary_counts_quality_flags_and_notes():
    base = {name: None for name in SCHEMA.names}
    rows = [{**base, "image_uri": f"{i}.png", "status": "ok", "qc_flag": i < 2, "lung_fraction": 0.3,
             "mean_confidence": 0.9, "quality_score": q, "qc_reasons": r, "qc_notes": n}
            for i, (q, r, n) in enumerate([(0.4, ["low_quality_score"], []),
                                           (0.5, ["no_lung", "low_quality_score"], ["inversion_corrected"]),
                                           (0.97, [], ["inversion_corrected"])])]
    summary = summarize_results(pa.Table.from_pylist(rows, schema=SCHEMA))
    assert summary["qc_flagged"] == 2 and summary["quality_flagged"] == 2 and summary["quality_scored"] == 3
    assert summary["qc_reasons"] == {"low_quality_score": 2, "no_lung": 1}
    assert summary["qc_notes"] == {"inversion_corrected": 2}
    assert summary["quality_score"]["min"] == 0.4


def test_qc_report_correlation_and_flag_table():
    dice = [0.5, 0.8, 0.88, 0.96, 0.97, 0.98]
    quality = [0.3, 0.7, 0.95, 0.93, 0.96, 0.99]
    flagged = [True, True, False, True, False, False]
    r = qc_report(dice, quality, flagged, 0.94)
    assert r["spearman"] == pytest.approx(0.9428571) and r["n_quality"] == 6
    assert r["mae"] == pytest.approx(np.mean(np.abs(np.subtract(quality, dice))))
    below85, below90 = r["flag_table"]
    assert (below85["images"], below85["found_qc_flag"], below85["found_quality_score"]) == (2, 1.0, 1.0)
    assert (below90["images"], below90["found_qc_flag"], below90["found_quality_score"]) == (3, 2 / 3, 2 / 3)
    assert r["good"]["images"] == 3 and r["good"]["flagged_qc_flag"] == pytest.approx(1 / 3)


# --- the calibration with the checkpoint ------------------------------------------------------------

def test_calibration_round_trips_and_refuses_other_weights_or_edits(checkpoint, calibrated, tmp_path):
    from raysegment.model.checkpoint import load_model

    model_id = load_model(checkpoint).model_id
    cal = load_calibration(checkpoint, model_id)
    assert cal.calibration_id == calibrated["calibration_id"] and len(cal.calibration_id) == 16
    assert cal.fitted_on["split"] == "val" and cal.fitted_on["samples"] == cal.fitted_on["images"] * 9
    assert cal.threshold == calibrated["threshold"] and isinstance(cal.refs, References)
    with pytest.raises(ValueError, match="fitted for model"):
        load_calibration(checkpoint, "0" * 16)
    edited = tmp_path / "edited"
    edited.mkdir()
    calibrated_copy = {**calibrated, "threshold": 0.01}
    (edited / CALIBRATION_FILE).write_text(json.dumps(calibrated_copy))
    with pytest.raises(ValueError, match="changed after it was written"):
        load_calibration(str(edited), model_id)
    assert load_calibration(str(tmp_path), model_id) is None  # no calibration: no score


def test_calibrate_never_fits_on_test(checkpoint, labelled, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--checkpoint", checkpoint, "--data", labelled, "--split", "test"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_infer_and_evaluate_score_alike_flag_bad_inputs_and_resume_on_recalibration(
        ray_local, checkpoint, calibrated, labelled, inputs, tmp_path):
    from raysegment.evaluation.evaluate import evaluate

    out = str(tmp_path / "results")
    args = ["infer", "--input", inputs, "--checkpoint", checkpoint, "--output", out, "--batch-size", "4"]
    assert main(args) == 0
    rows = {os.path.basename(r["image_uri"]): r for r in read_results(out).to_pylist()}
    assert len(rows) == 15 and all(r["status"] == "ok" for r in rows.values())
    for r in rows.values():
        assert r["calibration_id"] == calibrated["calibration_id"]
        assert r["qc_flag"] == bool(r["qc_reasons"]) and r["qc_notes"] == []
        if r["qc_reasons"] != ["no_lung"]:  # an empty mask is only "no_lung" (and scores 0)
            assert ("low_quality_score" in r["qc_reasons"]) == (r["quality_score"] < calibrated["threshold"])
    for bad in ("blank.png", "noise.png", "hand.png"):
        assert rows[bad]["qc_flag"], rows[bad]
    phantoms = [r for name, r in rows.items() if name.startswith("SYN")]
    assert np.median([r["quality_score"] for r in phantoms]) > max(rows[b]["quality_score"] for b in
                                                                    ("blank.png", "noise.png", "hand.png"))
    assert sum(r["qc_flag"] for r in phantoms) <= 3
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["calibration_id"] == calibrated["calibration_id"] and summary["quality_scored"] == 15
    assert summary["quality_flagged"] == sum("low_quality_score" in r["qc_reasons"] for r in rows.values())
    assert summary["qc_flagged"] == sum(r["qc_flag"] for r in rows.values())

    # evaluate uses the same calibration: the same scores and flags for the same images
    result = evaluate(checkpoint, labelled, "all", str(tmp_path / "eval"))
    by_id = {r["image_id"]: r for r in result.rows}
    for r in phantoms:
        assert by_id[r["image_id"]]["quality_score"] == r["quality_score"]
        assert by_id[r["image_id"]]["qc_reasons"] == r["qc_reasons"]
    qc = result.summary["qc"]
    assert result.summary["calibration_id"] == calibrated["calibration_id"] and qc["n_quality"] == 40
    assert qc["threshold"] == calibrated["threshold"] and qc["spearman"] is not None
    assert os.path.getsize(tmp_path / "eval" / "qc_scatter.png") > 1000

    # same calibration: resume skips everything; a new calibration: everything is redone
    assert main(args) == 0
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["processed"] == 0
    assert main(["calibrate", "--checkpoint", checkpoint, "--data", labelled, "--copies", "8",
                 "--seed", "1"]) == 0
    assert main([*args, "--quality-threshold", "0.99"]) == 0
    with open(os.path.join(out, "summary.json")) as f:
        again = json.load(f)
    assert again["processed"] == 15 and again["calibration_id"] != calibrated["calibration_id"]
    rows = read_results(out).to_pylist()
    assert all("low_quality_score" in r["qc_reasons"] for r in rows
               if r["quality_score"] < 0.99 and r["qc_reasons"] != ["no_lung"])


def test_show_qc_flagged_orders_by_quality_score():
    from raysegment.viz.show import select_rows

    table = pa.Table.from_pylist([
        {"image_uri": "a.png", "status": "ok", "qc_flag": True, "quality_score": 0.80,
         "mean_confidence": 0.5},
        {"image_uri": "b.png", "status": "ok", "qc_flag": True, "quality_score": 0.30,
         "mean_confidence": 0.9},
        {"image_uri": "c.png", "status": "ok", "qc_flag": True, "quality_score": None,
         "mean_confidence": 0.2},
        {"image_uri": "d.png", "status": "ok", "qc_flag": False, "quality_score": 0.10,
         "mean_confidence": 0.9},
    ])
    rows, _ = select_rows(table, qc_flagged=True)
    assert [r["image_uri"] for r in rows] == ["b.png", "a.png", "c.png"]  # lowest predicted dice first
