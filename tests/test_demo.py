"""`raysegment demo` end to end with a small setting: every output it promises exists and is consistent."""

import os

import pyarrow.parquet  # noqa: F401  (read_results needs it)


def test_demo_small_end_to_end(ray_local, tmp_path, capsys):
    from raysegment import read_results
    from raysegment.demo import DemoSettings, run_demo

    out = tmp_path / "demo"
    result = run_demo(DemoSettings(out=str(out), n=30, image_size=128, model_size=64, epochs=2,
                                   batch_size=4, show_worst=3))
    printed = capsys.readouterr().out

    table = read_results(result.results)
    held_out = result.summary["inputs_seen"]
    assert held_out >= 1 and table.num_rows == held_out and result.summary["missing"] == 0
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert all(d is not None for d in table.column("dice").to_pylist())  # ground truth was used
    assert result.test_dice is not None and 0.0 <= result.test_dice <= 1.0

    pictures = os.listdir(result.pictures)
    assert "contact_sheet.png" in pictures and "training_curves.png" in pictures
    assert sum(p.endswith(".png") for p in pictures) >= 3
    assert os.path.exists(os.path.join(result.run_dir, "metrics.csv"))
    assert os.path.isdir(out / "masks") and os.listdir(out / "masks")

    for stage in ("data", "train", "infer", "pictures"):
        assert stage in result.timings
    assert "TEST DICE" in printed and "results Parquet" in printed and "stage times" in printed
