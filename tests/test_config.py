"""Training config parsing units (no Ray): types, every validation rule at its boundary, overrides, YAML
files.
Every error names its key (the message is part of the contract: users fix their file from it)."""

from __future__ import annotations

import pytest

from raysegment.train.config import (
    ConfigError,
    TrainConfig,
    load_config,
    parse_override,
    save_config,
)


def _load(**overrides):
    return load_config(None, overrides)


def test_defaults_and_plain_dict():
    config = _load()
    assert config == TrainConfig()
    d = config.to_dict()
    assert d["data"]["split"] == [0.8, 0.1, 0.1] and isinstance(d["data"]["split"], list)
    assert d["optim"] == {"epochs": 50, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.0, "loss": "dice",
                          "lr_factor": 0.1, "lr_patience": 5, "min_lr": 1e-7, "early_stopping_patience": 10}
    assert d["threshold"] == 0.5 and d["scaling"]["use_gpu"] is None and d["run"]["name"] is None
    assert TrainConfig.from_dict(d) == config
    assert TrainConfig.from_dict({}) == config and TrainConfig.from_dict({"optim": None}) == config


def test_types_are_coerced_or_named():
    config = load_config(None, {"optim.lr": "1e-3", "optim.weight_decay": 1, "scaling.cpus_per_worker": 2,
                                "data.split": [0.5, 0.25, 0.25], "scaling.use_gpu": None})
    assert config.optim.lr == 1e-3 and type(config.optim.lr) is float  # YAML's "1e-3" string trap
    assert config.optim.weight_decay == 1.0 and type(config.optim.weight_decay) is float
    assert config.scaling.cpus_per_worker == 2.0 and type(config.scaling.cpus_per_worker) is float
    assert config.data.split == (0.5, 0.25, 0.25) and type(config.data.split) is tuple
    assert config.scaling.use_gpu is None
    assert _load(**{"scaling.use_gpu": True}).scaling.use_gpu is True
    assert _load(**{"scaling.torch_threads": 3}).scaling.torch_threads == 3
    for key, value, message in [
        ("optim.epochs", True, "optim.epochs: expected int, got bool True"),
        ("optim.epochs", 2.5, "optim.epochs: expected int, got float 2.5"),
        ("optim.lr", "fast", "optim.lr: expected float, got str 'fast'"),
        ("optim.lr", False, "optim.lr: expected float, got bool False"),
        ("optim.loss", 3, "optim.loss: expected str, got int 3"),
        ("scaling.use_gpu", 1, "scaling.use_gpu: expected bool, got int 1"),
        ("scaling.torch_threads", "two", "scaling.torch_threads: expected int, got str 'two'"),
        ("data.split", "0.8,0.1,0.1", "data.split: expected a list of 3 values, got '0.8,0.1,0.1'"),
        ("data.split", "0.8", "data.split: expected a list of 3 values, got '0.8'"),  # 3 characters
        ("data.split", [0.8, 0.2], "data.split: expected a list of 3 values, got [0.8, 0.2]"),
        ("data.split", [0.8, 0.1, "x"], "data.split[2]: expected float, got str 'x'"),
        ("run.name", 7, "run.name: expected str, got int 7"),
    ]:
        with pytest.raises(ConfigError) as err:
            _load(**{key: value})
        assert str(err.value) == message


def test_unknown_keys_and_sections_list_what_is_known():
    with pytest.raises(ConfigError) as err:
        _load(**{"optim.lrr": 1})
    assert str(err.value) == ("optim.lrr: unknown key in optim; known keys: epochs, batch_size, lr, "
                              "weight_decay, loss, lr_factor, lr_patience, min_lr, early_stopping_patience")
    with pytest.raises(ConfigError,
                       match=r"^nope: unknown key in config; known keys: data, model, preprocess"):
        _load(nope=1)
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"zeta": 1, "alpha": 2})
    assert str(err.value).startswith("alpha: unknown key in config")  # sorted: the first one alphabetically
    with pytest.raises(ConfigError, match=r"^optim: expected a mapping of keys, got int 3$"):
        TrainConfig.from_dict({"optim": 3})
    with pytest.raises(ConfigError, match=r"^config: expected a mapping of keys, got list \[1\]$"):
        TrainConfig.from_dict([1])
    # Nested foundation dataclasses validate themselves; the section is named.
    with pytest.raises(ConfigError, match=r"^model: UNetConfig.depth must be a positive integer, got 0$"):
        _load(**{"model.depth": 0})
    with pytest.raises(ConfigError, match=r"^preprocess: size must be an integer >= 16, got 8$"):
        _load(**{"preprocess.size": 8})
    with pytest.raises(ConfigError, match=r"^augment.rotation_deg: expected float, got str 'a lot'$"):
        _load(**{"augment.rotation_deg": "a lot"})


NAME_RULE = "run.name: must be letters, digits, '.', '_' or '-' (it becomes a folder name), "
SPLIT_RULE = "data.split: must be three non-negative fractions (train, val, test) summing to 1"
# (key, accepted boundary value, rejected value, start of the message)
RULES = [
    ("optim.epochs", 1, 0, "optim.epochs: must be >= 1, got 0"),
    ("optim.batch_size", 1, 0, "optim.batch_size: must be >= 1, got 0"),
    ("optim.lr", 1e-6, 0.0, "optim.lr: must be > 0, got 0.0"),
    ("optim.weight_decay", 0.0, -0.1, "optim.weight_decay: must be >= 0, got -0.1"),
    ("optim.loss", "bce_dice", "focal", "optim.loss: must be one of dice, bce, bce_dice, got 'focal'"),
    ("optim.lr_factor", 0.99, 1.0, "optim.lr_factor: must be in (0, 1), got 1.0"),
    ("optim.lr_factor", 0.01, 0.0, "optim.lr_factor: must be in (0, 1), got 0.0"),
    ("optim.lr_patience", 0, -1, "optim.lr_patience: must be >= 0, got -1"),
    ("optim.min_lr", 1e-4, 2e-4, "optim.min_lr: must be in [0, optim.lr], got 0.0002"),  # lr is 1e-4
    ("optim.min_lr", 0.0, -1e-9, "optim.min_lr: must be in [0, optim.lr], got -1e-09"),
    ("optim.early_stopping_patience", 0, -1, "optim.early_stopping_patience: must be >= 0 (0 = off), got -1"),
    ("scaling.num_workers", 1, 0, "scaling.num_workers: must be >= 1, got 0"),
    ("scaling.cpus_per_worker", 0.1, 0.0, "scaling.cpus_per_worker: must be > 0 or null (auto), got 0.0"),
    ("scaling.data_cpus", 0.0, -1.0, "scaling.data_cpus: must be >= 0, got -1.0"),
    ("scaling.torch_threads", 1, 0, "scaling.torch_threads: must be >= 1 or null, got 0"),
    ("run.name", "a", "-a", NAME_RULE + "got '-a'"),
    ("run.name", "R2.v_1-x", "a b", NAME_RULE + "got 'a b'"),
    ("run.storage_path", "s3://b/runs", "", "run.storage_path: must be a local folder or s3:// URI, got ''"),
    ("run.max_failures", -1, -2, "run.max_failures: must be >= 0, or -1 for unlimited, got -2"),
    ("run.checkpoints_to_keep", 1, 0, "run.checkpoints_to_keep: must be >= 1, got 0"),
    ("run.prefetch_batches", 0, -1, "run.prefetch_batches: must be >= 0, got -1"),
    ("debug.kill_worker_at_epoch", 1, 0, "debug.kill_worker_at_epoch: must be >= 1 or null, got 0"),
    ("threshold", 0.01, 0.0, "threshold: must be in (0, 1), got 0.0"),
    ("threshold", 0.99, 1.0, "threshold: must be in (0, 1), got 1.0"),
    ("model.in_channels", 1, 3, "model.in_channels: must be 1 (the data pipeline feeds grayscale), got 3"),
    ("model.out_channels", 1, 2, "model.out_channels: must equal the number of structures (1: lungs), got 2"),
    ("data.split", [0.5, 0.5, 0.0], [0.5, 0.6, -0.1], SPLIT_RULE + ", got [0.5, 0.6, -0.1]"),
    ("data.split", [0.3, 0.3, 0.4], [0.3, 0.3, 0.3], "data.split: must be three non-negative fractions"),
    ("data.split", [0.9, 0.1, 0.0], [0.0, 0.5, 0.5],
     "data.split: train and val fractions must be > 0, got [0.0"),
    ("data.split", [0.9, 0.1, 0.0], [1.0, 0.0, 0.0], "data.split: train and val fractions must be > 0"),
    ("data.max_pixels", 1, 0, "data.max_pixels: must be >= 1 (pixels: width x height), got 0"),
]


@pytest.mark.parametrize("key, good, bad, message", RULES, ids=[f"{r[0]}={r[2]!r}" for r in RULES])
def test_every_rule_at_its_boundary(key, good, bad, message):
    config = _load(**{key: good})
    section, _, name = key.rpartition(".")
    value = getattr(getattr(config, section), name) if section else getattr(config, name)
    assert value == (tuple(good) if isinstance(good, list) else good)
    with pytest.raises(ConfigError) as err:
        _load(**{key: bad})
    assert str(err.value).startswith(message)


def test_nullable_values_accept_null():
    config = _load(**{"scaling.cpus_per_worker": None, "scaling.torch_threads": None,
                      "debug.kill_worker_at_epoch": None, "run.name": None})
    assert (config.scaling.cpus_per_worker, config.scaling.torch_threads, config.debug.kill_worker_at_epoch,
            config.run.name) == (None, None, None, None)
    with pytest.raises(ConfigError, match="optim.epochs: expected int, got NoneType None"):
        _load(**{"optim.epochs": None})


def test_parse_override():
    assert parse_override("model.base_channels=8") == ("model.base_channels", 8)
    assert parse_override(" optim.lr = 1.5 ") == ("optim.lr", 1.5)
    assert parse_override("scaling.use_gpu=true") == ("scaling.use_gpu", True)
    assert parse_override("run.name=null") == ("run.name", None)
    assert parse_override("data.split=[0.7, 0.2, 0.1]") == ("data.split", [0.7, 0.2, 0.1])
    assert parse_override("run.name=a=b") == ("run.name", "a=b")
    assert parse_override("run.name=") == ("run.name", "")
    assert parse_override("_x=1") == ("_x", 1)
    assert parse_override("Optim.LR=2") == ("Optim.LR", 2)  # the key's case is checked later, not here
    for text in ("optim.lr", "=3", " =3", "1abc=2", "a-b=1", "a b=1"):
        with pytest.raises(ConfigError) as err:
            parse_override(text)
        assert str(err.value) == f"override {text!r}: expected KEY.PATH=VALUE, e.g. optim.lr=0.001"
    with pytest.raises(ConfigError, match=r"^optim.lr: cannot parse value '\[1, 2': "):
        parse_override("optim.lr=[1, 2")


def test_replace_and_dotted_keys(tmp_path):
    config = TrainConfig().replace({"optim.epochs": 3, "threshold": 0.3})
    assert config.optim.epochs == 3 and config.threshold == 0.3 and config.optim.batch_size == 8
    with pytest.raises(ConfigError) as err:
        TrainConfig().replace({"threshold.x": 1})
    assert str(err.value) == "threshold: is a value, not a section (in override 'threshold.x')"
    (tmp_path / "c.yaml").write_text("optim:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "c.yaml"), {"optim.epochs.x.y": 1})
    assert str(err.value) == "optim.epochs: is a value, not a section (in override 'optim.epochs.x.y')"
    with pytest.raises(ConfigError, match="threshold: must be in"):
        TrainConfig().replace({"threshold": 2.0})


def test_yaml_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 7\n  lr: 1e-3\nrun:\n  name: exp1\n")
    config = load_config(str(path), {"optim.epochs": 9, "model.depth": 2})
    assert (config.optim.epochs, config.optim.lr, config.run.name, config.model.depth) == (9, 1e-3, "exp1", 2)
    save_config(config, str(tmp_path / "out" / "config.yaml"))
    assert load_config(str(tmp_path / "out" / "config.yaml")) == config
    text = (tmp_path / "out" / "config.yaml").read_text()
    assert text.index("data:") < text.index("augment:") < text.index("threshold:")  # schema order, not sorted
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(str(tmp_path / "empty.yaml")) == TrainConfig()


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "missing.yaml"))
    assert str(err.value) == f"config file not found: {tmp_path / 'missing.yaml'}"
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'bad.yaml'}: not valid YAML: "):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "list.yaml"))
    assert str(err.value) == f"{tmp_path / 'list.yaml'}: expected a mapping of sections at the top level"
    assert issubclass(ConfigError, ValueError)


def test_cluster_section_from_flags_and_overrides_and_older_run_configs(tmp_path, capsys):
    """--address, --wait-for-capacity and --no-wait live in the config's cluster section (as in
    InferConfig.cluster); --set reaches them too, and a config.yaml saved before the section existed still
    loads (a rerun resumes such a run)."""
    import yaml

    from raysegment.cli import main
    from raysegment.cluster.capacity import ClusterOptions

    def printed(*args) -> dict:
        assert main(["train", *args, "--print-config"]) == 0
        return yaml.safe_load(capsys.readouterr().out)["cluster"]

    assert printed() == {"address": None, "wait_for_capacity": None, "no_wait": False}
    assert printed("--address", "ray://head:10001", "--wait-for-capacity", "30") == {
        "address": "ray://head:10001", "wait_for_capacity": 30.0, "no_wait": False}
    assert printed("--set", "cluster.no_wait=true")["no_wait"] is True  # not reset by the flag's absence
    assert printed("--no-wait")["no_wait"] is True
    config = _load(**{"cluster.address": "10.0.0.1:6379", "cluster.wait_for_capacity": 5})
    assert config.cluster == ClusterOptions("10.0.0.1:6379", 5.0) and config.cluster.wait_s() == 5.0
    save_config(config, str(tmp_path / "config.yaml"))
    assert load_config(str(tmp_path / "config.yaml")) == config
    older = TrainConfig().to_dict()
    del older["cluster"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(older))
    assert load_config(str(tmp_path / "old.yaml")) == TrainConfig()
