"""The cluster-launcher configs (cluster.yaml for AWS, cluster-local.yaml on-prem) pass Ray's own validation.

`ray up` runs `prepare_config` (fill defaults, merge setup commands, per-type min/max workers) and then
`validate_config` (ray/autoscaler/ray-schema.json plus consistency checks) before touching any cloud API;
the tests run exactly those two, offline, then check what this project needs from the configs.
"""

from __future__ import annotations

import copy
import os

import jsonschema
import pytest
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _load(name: str) -> dict:
    with open(os.path.join(ROOT, name)) as f:
        return yaml.safe_load(f)


def _prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            name, sep, version = line.strip().partition("==")
            if sep and not line.startswith("#"):
                pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_config_passes_ray_validation(name):
    config = _prepared(_load(name))
    assert config["cluster_name"].startswith("raysegment")
    # Setup installs this package with the pinned dependencies from the synced project folder.
    setup = " ".join(config["head_setup_commands"] + config["worker_setup_commands"])
    assert "-c " in setup and "constraints.txt" in setup and "-e " in setup
    assert "." in config["file_mounts"].values()  # the project directory is synced to every node
    # Token authentication on every node; the token file is synced, never written into the config.
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd and "ray start" in cmd
    assert "~/.ray/auth_token" in config["file_mounts"].values()
    with open(os.path.join(ROOT, name)) as f:
        text = f.read().lower()
    for secret_word in ("aws_secret_access_key", "aws_access_key_id", "ray_auth_token="):
        assert secret_word not in text


def test_aws_config_node_types():
    raw = _load("cluster.yaml")
    config = _prepared(raw)
    assert config["provider"]["type"] == "aws" and config["idle_timeout_minutes"] > 0
    import ray

    # The image's Ray is the pinned Ray (the cluster and the laptop must run the same version).
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert _pins()["ray"] == ray.__version__
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    train = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 2]
    infer = [v for v in workers.values() if v["resources"].get("GPU", 0) == 1
             and v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert train and infer, "need a multi-GPU training type and a single-GPU spot inference type"
    assert all("InstanceMarketOptions" not in v["node_config"] for v in train)  # training on-demand
    for v in workers.values():
        assert 0 <= v["min_workers"] <= v["max_workers"] <= config["max_workers"]
    assert sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]


def test_local_config_is_placeholders_only():
    raw = _load("cluster-local.yaml")
    assert raw["provider"]["type"] == "local"
    assert "PLACEHOLDER" in raw["provider"]["head_ip"]
    assert raw["provider"]["worker_ips"] and all("PLACEHOLDER" in ip for ip in raw["provider"]["worker_ips"])
    config = _prepared(raw)
    # On-prem: every listed worker is started, none more.
    node_type = config["available_node_types"][config["head_node_type"]]
    assert node_type["min_workers"] == node_type["max_workers"] == len(raw["provider"]["worker_ips"])


def test_validation_really_rejects_broken_configs():
    """Guard against a validation that accepts anything: typos and impossible sizes are refused."""
    typo = _load("cluster.yaml")
    typo["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        _prepared(typo)
    too_small = _load("cluster.yaml")
    too_small["available_node_types"]["infer_1gpu"]["min_workers"] = 20
    with pytest.raises(ValueError, match="max_workers"):
        _prepared(too_small)
    bad_head = _load("cluster.yaml")
    bad_head["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        _prepared(bad_head)
