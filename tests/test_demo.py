"""`raysegment demo` end to end with a small setting: every output it promises exists and is consistent."""

import os

import pandas as pd
import pyarrow.parquet  # noqa: F401  (read_results needs it)
import pytest


def test_demo_small_end_to_end(ray_local, tmp_path, capsys):
    from raysegment import read_results
    from raysegment.demo import DemoSettings, run_demo

    out = tmp_path / "demo"
    result = run_demo(DemoSettings(out=str(out), n=30, image_size=128, model_size=64, epochs=2,
                                   batch_size=4, show_worst=3))
    printed = capsys.readouterr().out

    table = read_results(result.results)
    # The held-out images are exactly the test split the run recorded (read independently of the demo).
    split = pd.read_csv(os.path.join(result.run_dir, "split_manifest.csv"), dtype=str)
    test_ids = sorted(split.loc[split["split"] == "test", "image_id"])
    held_out = result.summary["inputs_seen"]
    assert test_ids and held_out == len(test_ids) == table.num_rows and result.summary["missing"] == 0
    assert sorted(table.column("image_id").to_pylist()) == test_ids
    assert set(table.column("status").to_pylist()) == {"ok"}
    dice = table.column("dice").to_pylist()
    assert all(d is not None for d in dice)  # ground truth was used
    # The reported test dice is the mean of the per-image dice in the results, and it is what is printed.
    assert result.test_dice == pytest.approx(sum(dice) / len(dice), abs=1e-12)
    assert f"TEST DICE (held-out, {held_out} images): {result.test_dice:.4f}" in printed

    pictures = os.listdir(result.pictures)
    assert "contact_sheet.png" in pictures and "training_curves.png" in pictures
    assert sum(p.endswith(".png") for p in pictures) >= 3
    assert os.path.exists(os.path.join(result.run_dir, "metrics.csv"))
    assert os.path.isdir(out / "masks") and os.listdir(out / "masks")

    for stage in ("data", "train", "infer", "pictures"):
        assert stage in result.timings
    assert "TEST DICE" in printed and "results Parquet" in printed and "stage times" in printed
