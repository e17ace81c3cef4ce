"""`raysegment demo` end to end, as a user runs it (a subprocess with its own Ray, output not a terminal):
every promised output exists, and the console is short, free of Ray's internal noise, with ONE test dice."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pyarrow.parquet  # noqa: F401  (read_results needs it)
import pytest

# Ray internals that used to flood the demo (issue #13); none of them may reach the console.
RAY_NOISE = ("PlacementGroupCleaner", "core_worker.cc", "RayDeprecationWarning", "logging_progress",
             "does not have any available CPUs", "Traceback", "site-packages/ray", "(pid=")
# Ray's own log line formats: Python `2026-01-01 12:00:00,000 WARNING file.py:85 -- ...` and C++
# `[2026-01-01 12:00:00,000 E 1 1] core_worker.cc:1: ...`.
RAY_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ \S+\.py:\d+ --"
                          r"|\[\d{4}-.*\] \S+\.(cc|h):\d+:)")
MAX_LINES = 45


def test_demo_small_end_to_end(tmp_path):
    from raysegment import read_results

    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "raysegment", "demo", "--out", str(out), "--n", "30", "--image-size", "128",
         "--model-size", "64", "--epochs", "2", "--show-worst", "3"],
        capture_output=True, text=True, timeout=900, check=False)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-4000:]
    lines = printed.splitlines()

    assert len(lines) <= MAX_LINES, printed
    assert not [noise for noise in RAY_NOISE if noise in printed], printed
    assert not [line for line in lines if RAY_LOG_LINE.match(line)], printed
    # One test dice: the metrics table of inference on the held-out split (training's val dice aside).
    test_dice = [line for line in lines if re.search(r"\bdice\b", line) and "val dice" not in line
                 and "(predicted dice)" not in line]  # QC's quality_score line (training calibrates)
    assert len(test_dice) == 1 and test_dice[0].split()[0] == "dice", printed
    assert proc.stdout.splitlines()[-1] == f"full log: {out / 'raysegment.log'}"
    log = (out / "raysegment.log").read_text()
    assert "== train" in log and "== infer" in log  # everything printed is in the log too

    summary = json.loads((out / "results" / "summary.json").read_text())
    table = read_results(str(out / "results"))
    # The held-out images are exactly the test split the run recorded (read independently of the demo).
    runs = os.listdir(out / "runs")
    split = pd.read_csv(out / "runs" / runs[0] / "split_manifest.csv", dtype=str)
    test_ids = sorted(split.loc[split["split"] == "test", "image_id"])
    held_out = summary["inputs_seen"]
    assert test_ids and held_out == len(test_ids) == table.num_rows and summary["missing"] == 0
    assert sorted(table.column("image_id").to_pylist()) == test_ids
    assert set(table.column("status").to_pylist()) == {"ok"}
    dice = table.column("dice").to_pylist()
    assert all(d is not None for d in dice)  # ground truth was used
    # The printed test dice is the mean of the per-image dice in the results.
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(sum(dice) / len(dice), abs=1e-12)
    assert float(test_dice[0].split()[1]) == round(summary["metrics"]["dice"]["mean"], 4)

    pictures = os.listdir(out / "pictures")
    assert "contact_sheet.png" in pictures and "training_curves.png" in pictures
    assert sum(p.endswith(".png") for p in pictures) >= 3
    assert len(runs) == 1 and os.path.exists(out / "runs" / runs[0] / "metrics.csv")
    assert os.path.exists(out / "runs" / runs[0] / "test_metrics.json")
    assert os.listdir(out / "masks")
    assert "stage times" in printed and "results Parquet" in printed
    # the run report of the held-out inference, its path printed; its counts are the summary's
    from report_helpers import counts, parse

    assert f"  report           {out / 'report.html'}  (open it in a browser)" in lines
    page = counts(parse((out / "report.html").read_text(encoding="utf-8")))
    assert (page["images"], page["ok"], page["errors"], page["qc_flagged"]) == (
        held_out, summary["ok"], summary["errors"], summary["qc_flagged"])
