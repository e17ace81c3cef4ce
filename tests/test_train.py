"""Distributed training on Ray Train (issue #3).

A TorchTrainer.fit costs ~25 s of fixed start-up on the 2-CPU box, so one scenario serves several tests
(module fixture `scenario`), on 60 synthetic 64x64 phantoms (45 train / 8 val / 7 test), 2 CPU workers:

  run A: name "r", epochs=4                                  -> epochs 1..4
  run B: name "r", epochs=8, debug.kill_worker_at_epoch=6    -> resumes at 5 from A's latest checkpoint;
         rank 1 dies at the start of 6; max_failures=1 restarts the group from checkpoint 5; ends at 8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raysegment import load_model
from raysegment.errors import ConfigError, PlanError
from raysegment.train.config import TrainConfig, load_config, parse_override, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data: str, storage_path: str, name: str, **overrides) -> TrainConfig:
    """The tiny CPU setup of configs/train-small.yaml, on our data, with dotted-key overrides."""
    base = {"data.path": data, "run.storage_path": storage_path, "run.name": name, "scaling.num_workers": 2,
            "scaling.use_gpu": False}
    return load_config(os.path.join(ROOT, "configs", "train-small.yaml"), {**base, **overrides})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> str:
    from raysegment.data.synth import write_dataset

    out = str(tmp_path_factory.mktemp("train_phantoms"))
    write_dataset(out, n=60, size=64, seed=3, layout="generic")
    return out


@pytest.fixture(scope="module")
def scenario(ray_local, phantoms, tmp_path_factory):
    from raysegment.train.driver import train

    storage_path = str(tmp_path_factory.mktemp("train_runs"))
    config_a = tiny_config(phantoms, storage_path, "r", **{"optim.epochs": 4})
    config_b = tiny_config(phantoms, storage_path, "r",
                           **{"optim.epochs": 8, "debug.kill_worker_at_epoch": 6})
    first = train(config_a)
    second = train(config_b)
    return SimpleNamespace(first=first, second=second, config=config_b,
                           run_dir=os.path.join(storage_path, "r"))


def read_metrics_csv(run_dir: str) -> list[dict]:
    import csv

    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def checkpoint_state(run_dir: str, epoch: int) -> dict:
    from raysegment.train.loop import load_train_state

    return load_train_state(os.path.join(run_dir, f"checkpoint_epoch_{epoch:04d}"))["state"]


def test_resume_continues_from_the_latest_checkpoint(scenario):
    assert [row["epoch"] for row in scenario.first.history] == [1, 2, 3, 4]
    rows = read_metrics_csv(scenario.run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))  # 1..8, each once
    state = checkpoint_state(scenario.run_dir, 8)  # the latest checkpoint Ray kept
    assert state["epoch"] == 8
    # Where each (re)start began: fresh at 1, run B resumed at 5, the restart after the fault at 6 (the
    # injected fault waits for checkpoint 5 to be committed, so the restart point is deterministic).
    assert state["starts"] == [1, 5, 6]
    # Run A's rows survive untouched in run B's history (restored from the checkpoint, not recomputed).
    assert scenario.second.history[:4] == scenario.first.history


def test_worker_death_restarts_from_the_checkpoint(scenario):
    marker = os.path.join(scenario.run_dir, "debug_worker_killed")
    assert Path(marker).read_text().startswith("rank 1 exited at the start of epoch 6")
    assert [row["epoch"] for row in scenario.second.history] == list(range(1, 9))
    assert 6 in checkpoint_state(scenario.run_dir, 8)["starts"]


def test_training_learns_and_the_best_checkpoint_reloads_without_ray(scenario, phantoms):
    from raysegment.data.datasets import load_split_dataset
    from raysegment.postprocess.metrics import scores_from_counts
    from raysegment.train.data import prepare_pair

    rows = read_metrics_csv(scenario.run_dir)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.1

    # What val dice means for these phantoms: predicting "all lung" scores ~0.41, and the best single
    # intensity threshold chosen WITH the truth (lungs are dark) ~0.60. Beating both by a clear margin
    # needs shape and context, i.e. a network that learned. Typically ~0.9 after 8 epochs.
    split = load_split_dataset(phantoms)
    val_pairs = split.pairs("val")
    prepared = [prepare_pair(p, scenario.config.preprocess) for p in val_pairs]
    images = np.stack([i for i, _, _ in prepared])
    truth = np.stack([m[0] for _, m, _ in prepared]).astype(bool)

    def mean_dice(pred: np.ndarray) -> float:
        c = np.array([(np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)) for p, t in zip(pred, truth,
                                                                                      strict=False)])
        return float(scores_from_counts(c[:, 0], c[:, 1], c[:, 2])["dice"].mean())

    all_lung = mean_dice(np.ones_like(truth))
    best_threshold = max(mean_dice(images < t) for t in range(0, 256, 2))
    best_dice = max(r["val_dice"] for r in scenario.second.history)
    assert best_dice > max(all_lung, best_threshold) + 0.1, (all_lung, best_threshold, rows)

    # The best checkpoint, loaded WITHOUT Ray, reproduces the val dice recorded at training time. Same
    # batches (val order, batch_size) and thread count as the worker: the same bits, so the same masks.
    best_dir = os.path.join(scenario.run_dir, "best")
    info = json.loads(Path(best_dir, "config.json").read_text())
    assert info["metrics"]["val_dice"] == pytest.approx(best_dice, abs=1e-12)
    assert info["split_digest"] == split.digest()
    loaded = load_model(best_dir)
    assert loaded.spec.preprocess == scenario.config.preprocess and loaded.spec.model == scenario.config.model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = model_resolution_dice(best_dir, val_pairs, batch_size=scenario.config.optim.batch_size)
    finally:
        torch.set_num_threads(threads)
    assert again == pytest.approx(info["metrics"]["val_dice"], abs=1e-6)


def model_resolution_dice(checkpoint: str, pairs, batch_size: int) -> float:
    """Mean dice at model resolution without post-processing: what validation during training measures."""
    from raysegment.data.preprocess import to_tensor
    from raysegment.postprocess.metrics import MetricSums, image_metrics
    from raysegment.train.data import prepare_pair
    from raysegment.train.loop import predict_masks

    loaded, sums = load_model(checkpoint), MetricSums()
    for start in range(0, len(pairs), batch_size):
        prepared = [prepare_pair(p, loaded.spec.preprocess) for p in pairs[start : start + batch_size]]
        with torch.no_grad():
            logits = loaded.model(to_tensor(np.stack([image for image, _, _ in prepared])))
        for pred, (_, mask, _) in zip(predict_masks(logits, loaded.spec.threshold)[:, 0].numpy(), prepared,
                                   strict=False):
            sums.add(image_metrics(pred, mask[0].astype(bool)))
    return sums.means()["dice"]


def test_test_metrics_equal_evaluate_and_infer_ground_truth(scenario, phantoms, tmp_path, capsys):
    """ONE scoring path: training's test_metrics.json, `raysegment evaluate` on the same checkpoint and split,
    and `raysegment infer --ground-truth` on the same images agree per image and on the mean."""
    import pandas as pd

    from raysegment import read_results
    from raysegment.cli import main

    run_dir, best = scenario.run_dir, os.path.join(scenario.run_dir, "best")
    test = json.loads(Path(run_dir, "test_metrics.json").read_text())
    trained = {r["image_id"]: r["dice"] for r in test["per_image"]}
    assert len(trained) == 7

    assert main(["evaluate", "--checkpoint", best, "--data", run_dir, "--split", "test",
                 "--out", str(tmp_path / "eval")]) == 0
    evaluated = pd.read_parquet(tmp_path / "eval" / "per_image.parquet").set_index("image_id")["dice"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(test["metrics"]["dice"]["mean"], abs=1e-6)
    for image_id, dice in trained.items():
        assert evaluated[image_id] == pytest.approx(dice, abs=1e-6), image_id

    manifest = tmp_path / "test.csv"
    manifest.write_text("image\n" + "".join(f"{r['image_uri']}\n" for r in _test_split_rows(run_dir)))
    assert main(["infer", "--input", str(manifest), "--checkpoint", best, "--output", str(tmp_path / "infer"),
                 "--ground-truth", phantoms]) == 0
    inferred = {r["image_id"]: r["dice"] for r in read_results(str(tmp_path / "infer")).to_pylist()}
    assert inferred.keys() == trained.keys()
    for image_id, dice in trained.items():
        assert inferred[image_id] == pytest.approx(dice, abs=1e-6), image_id
    printed = capsys.readouterr().out
    assert "Traceback" not in printed and "raysegment.log" in printed  # the log file is named at the end


def _test_split_rows(run_dir: str) -> list[dict]:
    import csv

    with open(os.path.join(run_dir, "split_manifest.csv")) as f:
        return [{"image_uri": r["image"]} for r in csv.DictReader(f) if r["split"] == "test"]


def test_run_directory_outputs(scenario):
    run_dir = scenario.run_dir
    for name in ("metrics.csv", "training_curves.png", "split_manifest.csv", "config.yaml",
                 "test_metrics.json",
                 "best/model.safetensors", "best/config.json"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    header = Path(run_dir, "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "train_loss"] and {"val_dice", "val_iou", "val_precision", "val_recall",
                                                      "lr",
                                                       "images_per_s", "epoch_time_s"} <= set(header)
    assert load_config(os.path.join(run_dir, "config.yaml")) == scenario.config  # the effective config
    test = json.loads(Path(run_dir, "test_metrics.json").read_text())
    assert test["metrics"]["n_scored"] == len(test["per_image"]) == 7
    assert {"dice", "iou", "hd95", "micro_dice"} <= set(test["metrics"])
    assert test["metrics"]["dice"]["mean"] > 0.6
    # Ray keeps the best checkpoint by val_dice plus the latest; best/ is a copy of the best one.
    kept = sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint_epoch_"))
    assert "checkpoint_epoch_0008" in kept and 1 <= len(kept) <= 2
    assert f"checkpoint_epoch_{scenario.second.best_epoch:04d}" in kept


def test_unschedulable_plan_fails_fast(ray_local, phantoms, tmp_path):
    from raysegment.train.driver import train

    config = tiny_config(phantoms, str(tmp_path), "impossible",
                         **{"scaling.num_workers": 8, "scaling.use_gpu": True})
    with pytest.raises(PlanError) as err:
        train(config)
    # Refused before any work: no run folder, no config, no checkpoint (instead of a clock assert).
    assert not os.path.exists(tmp_path / "impossible")
    message = str(err.value)
    assert "8 worker(s) x (1 GPU" in message and "0 GPU" in message and "2 CPU" in message


def test_resuming_with_another_model_is_refused(ray_local, phantoms, tmp_path):
    from raysegment.train.driver import train

    save_config(tiny_config(phantoms, str(tmp_path), "r"), str(tmp_path / "r" / "config.yaml"))
    with pytest.raises(ConfigError, match="already exists with a different model section"):
        train(tiny_config(phantoms, str(tmp_path), "r", **{"model.base_channels": 16}))


def test_augmentation_depends_on_seed_epoch_and_image_only():
    """Whichever worker or batch an image lands in, its augmentation is the same: resumes reproduce."""
    from raysegment.data.augment import AugmentConfig
    from raysegment.train.data import TrainCollate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    masks = (rng.random((4, 32, 32)) > 0.5).astype(np.uint8)
    keys = np.array([11, 22, 33, 44])
    before = images.copy()
    x, y, labelled = TrainCollate(AugmentConfig(), seed=0, epoch=3)({"image": images, "mask": masks,
                                                                     "key": keys})
    assert labelled.shape == (4, 1) and bool(labelled.all())  # rows without the column: all labelled
    assert (images == before).all()  # the caller's arrays are untouched
    order = [2, 0]  # another batch composition and order
    x2, y2, _ = TrainCollate(AugmentConfig(), seed=0, epoch=3)(
        {"image": images[order], "mask": masks[order], "key": keys[order]})
    assert torch.equal(x2, x[order]) and torch.equal(y2, y[order])
    x3, _, _ = TrainCollate(AugmentConfig(), seed=0, epoch=4)({"image": images, "mask": masks, "key": keys})
    assert not torch.equal(x3, x)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}


def test_jobs_train_help():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "train.py"), "--help"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout and "--set KEY=VALUE" in out.stdout


def test_config_yaml_round_trip(tmp_path):
    config = tiny_config("s3://bucket/data", "s3://bucket/runs", "rt", **{
        "data.split": [0.7, 0.2, 0.1], "optim.lr": "1e-3", "scaling.cpus_per_worker": 0.5,
        "augment.enabled": False, "debug.kill_worker_at_epoch": 3})
    path = str(tmp_path / "config.yaml")
    save_config(config, path)
    again = load_config(path)
    assert again == config and again.data.split == (0.7, 0.2, 0.1) and again.optim.lr == 1e-3


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "optim.lrr: unknown key in optim"),
    ("nope.x=1", "nope: unknown key in config"),
    ("optim.epochs=ten", "optim.epochs: expected int, got str 'ten'"),
    ("optim.epochs=0", "optim.epochs: must be >= 1"),
    ("optim.loss=focal", "optim.loss: must be one of dice, bce, bce_dice"),
    ("data.split=[0.5, 0.5]", "data.split: expected a list of 3 values"),
    ("data.split=[0.5, 0.4, 0.4]", "data.split: must be three non-negative fractions"),
    ("model.base_channels=0", "model: UNetConfig.base_channels must be a positive integer"),
    ("preprocess.resize=crop", "preprocess: resize must be one of"),
    ("scaling.use_gpu=maybe", "scaling.use_gpu: expected bool"),
    ("run.name=a/b", "run.name: must be letters"),
    ("optim=3", "optim: expected a mapping"),
])
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, dict([parse_override(override)]))
    assert message in str(err.value)


def test_cli_reports_config_errors(capsys, tmp_path):
    from raysegment.cli import main

    assert main(["train", "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr: unknown key" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  batch_size: -1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "optim.batch_size: must be >= 1" in capsys.readouterr().err
    assert main(["train", "--epochs", "3"]) == 2  # no data
    assert "data.path: required" in capsys.readouterr().err


def test_early_stopping_stops_after_patience_epochs_without_a_better_val_dice(ray_local, phantoms, tmp_path):
    """A model that cannot learn (lr ~ 0) and predicts nothing (threshold 0.999): val dice never improves
    after epoch 1, so with patience 2 the run ends after epoch 3 of 10. The stop epoch is also recomputed
    from the recorded val dice, independently of the loop."""
    from raysegment.train.driver import train

    patience, epochs = 2, 10
    config = tiny_config(phantoms, str(tmp_path), "es", **{
        "optim.epochs": epochs, "optim.early_stopping_patience": patience, "optim.lr": 1e-9,
        "optim.min_lr": 0.0,
        "threshold": 0.999, "augment.enabled": False, "run.evaluate_test": False, "scaling.num_workers": 1})
    result = train(config)
    dice = [row["val_dice"] for row in result.history]
    best, bad, expected = -1.0, 0, epochs
    for epoch, value in enumerate(dice, start=1):
        best, bad = (value, 0) if value > best else (best, bad + 1)
        if bad >= patience:
            expected = epoch
            break
    assert len(dice) == expected < epochs  # stopped early, exactly when the patience ran out
    assert [row["epoch"] for row in read_metrics_csv(result.run_dir)] == list(range(1, expected + 1))


def test_a_fresh_run_starts_from_another_models_weights(ray_local, phantoms, tmp_path, capsys):
    """run.init_from: the workers load the source's weights (lr ~ 0, so the best checkpoint still IS the
    source for every weight but the dropped head channel); another architecture fails before Ray starts."""
    from raysegment.cli import main
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig
    from raysegment.train.driver import train

    torch.manual_seed(5)
    two = UNetConfig(out_channels=2, base_channels=8, depth=3)  # train-small.yaml's width and depth
    source = str(tmp_path / "source")
    save_checkpoint(source, UNet.from_config(two), ModelSpec(model=two, structures=("lungs", "heart")))
    config = tiny_config(phantoms, str(tmp_path), "ft", **{
        "optim.epochs": 1, "optim.lr": 1e-12, "optim.min_lr": 0.0, "augment.enabled": False,
        "run.evaluate_test": False, "scaling.num_workers": 1, "run.init_from": source})
    result = train(config)
    tuned, theirs = load_model(os.path.join(result.run_dir, "best")), load_model(source)
    mine, ref = tuned.model.state_dict(), theirs.model.state_dict()
    assert mine["head.weight"].shape[0] == 1  # lungs only: the heart channel was dropped
    assert torch.allclose(mine["head.weight"][0], ref["head.weight"][0], atol=1e-6)
    learned = [k for k, _ in tuned.model.named_parameters() if not k.startswith("head.")]  # not BN statistics
    assert learned and all(torch.allclose(mine[k], ref[k], atol=1e-6) for k in learned)
    assert f"starting from the weights of {source}" in capsys.readouterr().out

    assert main(["train", "--config", os.path.join(ROOT, "configs", "train-small.yaml"), "--data", phantoms,
                 "--set", f"run.init_from={source}", "--set", "model.base_channels=16",
                 "--set", f"run.storage_path={tmp_path}"]) == 2
    assert "raysegment train: error: run.init_from: model " in capsys.readouterr().err
