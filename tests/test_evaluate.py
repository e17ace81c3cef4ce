"""`raysegment evaluate`: per-image metrics at original resolution equal predict + image_metrics by hand."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raysegment.cli import main
from raysegment.data.datasets import load_pair, load_split_dataset, write_manifest
from raysegment.data.preprocess import PreprocessConfig
from raysegment.evaluation.evaluate import evaluate
from raysegment.infer.predict import predict
from raysegment.io import storage
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig
from raysegment.postprocess.metrics import image_metrics


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_generic) -> str:
    """A run folder as training leaves it: best/ (untrained small UNet) + split_manifest.csv."""
    run = str(tmp_path_factory.mktemp("eval_run"))
    torch.manual_seed(1)
    digest = write_manifest(load_split_dataset(synth_generic), os.path.join(run, "split_manifest.csv"))
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=64), threshold=0.5)
    save_checkpoint(os.path.join(run, "best"), UNet(base_channels=4, depth=2), spec, {"split_digest": digest})
    return run


def test_evaluate_matches_predict_and_metrics(run_dir, synth_generic, tmp_path, capsys):
    checkpoint, out = os.path.join(run_dir, "best"), str(tmp_path / "eval")
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", synth_generic, "--split", "test",
                 "--out", out, "--batch-size", "3"]) == 0
    printed = capsys.readouterr()
    assert "median" in printed.out and "worst" in printed.out
    assert "differs" not in printed.err  # same data, default split: the checkpoint's digest matches

    frame = pd.read_parquet(os.path.join(out, "per_image.parquet"))
    csv = pd.read_csv(os.path.join(out, "per_image.csv"))
    summary = json.loads(Path(out, "summary.json").read_text())
    test_pairs = load_split_dataset(synth_generic).pairs("test")
    assert sorted(frame["image_id"]) == sorted(p.image_id for p in test_pairs) == sorted(csv["image_id"])
    assert (frame["status"] == "ok").all() and (frame["height"] == 128).all()

    # Recompute each image with the single-image reference path at the original resolution.
    loaded = load_model(checkpoint)
    for pair in test_pairs:
        mask = predict(loaded, storage.read_bytes(pair.image_uri), pair.image_uri).segmentation.mask
        expected = image_metrics(mask, load_pair(pair)[1])
        row = frame.set_index("image_id").loc[pair.image_id]
        for name in ("dice", "iou", "precision", "recall", "tp", "fp", "fn"):
            assert row[name] == expected[name], name
        assert row["hd95"] == pytest.approx(expected["hd95"], nan_ok=True)

    dice = frame["dice"].to_numpy()
    s = summary["metrics"]["dice"]
    assert s["n"] == len(dice) and s["mean"] == pytest.approx(dice.mean())
    assert s["median"] == pytest.approx(np.median(dice)) and s["sd"] == pytest.approx(dice.std(ddof=1))
    assert s["min"] == pytest.approx(dice.min()) and s["max"] == pytest.approx(dice.max())
    tp, fp, fn = frame["tp"].sum(), frame["fp"].sum(), frame["fn"].sum()
    assert summary["metrics"]["micro_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    worst = [w["image_id"] for w in summary["worst"]]
    assert worst == list(frame.sort_values("dice", kind="stable")["image_id"][: len(worst)])
    assert summary["metrics"]["hd95_mm"]["n"] == 0  # PNGs have no pixel spacing


def test_default_data_is_the_runs_manifest_and_errors_are_rows(run_dir, synth_generic, tmp_path, capsys):
    checkpoint = os.path.join(run_dir, "best")
    val_ids = {p.image_id for p in load_split_dataset(synth_generic).pairs("val")}
    result = evaluate(checkpoint, split="val")  # no data: RUN_DIR/split_manifest.csv
    assert result.summary["data"].endswith("split_manifest.csv") and result.summary["split_warning"] is None
    assert {r["image_id"] for r in result.rows} == val_ids
    assert {r["image_id"] for r in evaluate(checkpoint, run_dir, split="val").rows} == val_ids  # a run folder

    # A manifest with a corrupt image: one error row with its reason, the others scored. Its split is not
    # the checkpoint's: a warning.
    pairs = load_split_dataset(synth_generic).discovery.pairs[:3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    manifest = tmp_path / "manifest.csv"
    lines = ["image_id,split,image,mask"]
    lines += [f"{p.image_id},test,{p.image_uri},{p.mask_uris[0]}" for p in pairs]
    lines.append(f"broken,test,{bad},{pairs[0].mask_uris[0]}")
    manifest.write_text("\n".join(lines) + "\n")
    result = evaluate(checkpoint, str(manifest), split="test", out=str(tmp_path / "out"))
    assert "may contain training images" in capsys.readouterr().err
    errors = [r for r in result.rows if r["status"] == "error"]
    assert [r["image_id"] for r in errors] == ["broken"] and errors[0]["error_type"] == "DecodeError"
    assert errors[0]["error_stage"] == "decode" and errors[0]["error"].startswith("bad.png: ")  # infer's text
    assert result.summary["ok"] == 3 and result.summary["metrics"]["dice"]["n"] == 3
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["errors"] == 1 and written["errors_by_reason"] == {"decode/DecodeError": 1}
    assert "bad.png" in written["error_examples"][0]


def test_evaluate_without_data_or_manifest_says_what_to_pass(tmp_path, capsys):
    save_checkpoint(str(tmp_path / "ckpt"), UNet(base_channels=4, depth=2),
                    ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32)))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "Traceback" not in err


def test_evaluate_with_an_oracle_model_gives_known_scores(tmp_path, monkeypatch, synth_generic):
    """Expected values that do not come from evaluate's own path: a data set whose X-ray IS its lung mask
    (drawn as a film: dark lungs, so the inversion check leaves it as it is), and a 'model' whose lung
    probability is its input inverted back (no resampling: 128 px images, 128 px model). Images
    with the true mask score dice 1 exactly; images whose truth is the mask shifted by 4 px score the dice
    counted by hand; the summary aggregates those numbers."""
    from raysegment.data.datasets import discover
    from raysegment.evaluation import evaluate as evaluate_module
    from raysegment.io.decode import decode_mask, encode_png

    pairs = discover(synth_generic).pairs[:6]
    (tmp_path / "cxr").mkdir()
    (tmp_path / "masks").mkdir()
    expected = {}
    for i, pair in enumerate(pairs):
        mask = decode_mask(storage.read_bytes(pair.mask_uris[0]))
        truth = np.roll(mask, 4, axis=1) if i % 2 else mask
        (tmp_path / "cxr" / f"{pair.image_id}.png").write_bytes(encode_png((~mask).astype(np.uint8) * 255))
        (tmp_path / "masks" / f"{pair.image_id}.png").write_bytes(encode_png(truth.astype(np.uint8) * 255))
        overlap = int((mask & truth).sum())
        expected[pair.image_id] = (2 * overlap / (mask.sum() + truth.sum()), overlap)
    monkeypatch.setattr(evaluate_module, "forward_structures",  # (N, C=1, S, S): the lung channel only
                        lambda model, images, *a, **k: (255 - images)[:, None])
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=128, normalize="unit"), 0.5)
    save_checkpoint(str(tmp_path / "ckpt"), UNet(base_channels=4, depth=2), spec)
    # keep_largest=0 / no hole filling would not matter for clean masks; the defaults are used.
    result = evaluate(str(tmp_path / "ckpt"), str(tmp_path), split="all", out=str(tmp_path / "out"))
    rows = {r["image_id"]: r for r in result.rows}
    assert set(rows) == set(expected)
    for image_id, (dice, overlap) in expected.items():
        assert rows[image_id]["status"] == "ok"
        assert rows[image_id]["dice"] == pytest.approx(dice, abs=1e-12) and rows[image_id]["tp"] == overlap
    perfect = [d for d, _ in expected.values() if d == 1.0]
    assert len(perfect) == 3 and all(d < 0.97 for d, _ in expected.values() if d != 1.0)
    dice = result.summary["metrics"]["dice"]
    assert dice["n"] == 6 and dice["max"] == 1.0
    assert dice["mean"] == pytest.approx(np.mean([d for d, _ in expected.values()]))
    assert result.summary["worst"][0]["image_id"] == min(expected, key=lambda k: expected[k][0])
