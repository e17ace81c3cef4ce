"""The checkpoint name `reference` (model/reference.py): resolved from the installed package, a user's own
folder called `reference` wins with a note, and a package without a shipped model says so in one line."""

import pytest
import torch

from raysegment.errors import CheckpointError
from raysegment.model import reference
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    config = UNetConfig(base_channels=4, depth=2)
    return save_checkpoint(str(path), UNet.from_config(config), ModelSpec(model=config))


def test_the_name_loads_the_packaged_model_and_a_local_folder_of_that_name_wins(tmp_path, monkeypatch):
    shipped = _checkpoint(tmp_path / "site-packages" / "reference_model", seed=1)
    monkeypatch.setattr(reference, "shipped_dir", lambda: str(tmp_path / "site-packages" / "reference_model"))
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_model("reference").model_id == shipped
    assert reference.resolve("s3://b/ck") == ("s3://b/ck", None)  # any other URI passes through
    mine = _checkpoint(elsewhere / "reference", seed=2)
    uri, note = reference.resolve("reference")
    assert uri == str(elsewhere / "reference") and "using it, not the shipped reference model" in note
    assert load_model("reference").model_id == mine != shipped


def test_without_a_shipped_model_the_name_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "shipped_dir", lambda: str(tmp_path / "nothing"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="^this installation of raysegment ships no reference model"):
        load_model("reference")


def test_an_actor_whose_package_holds_another_reference_model_fails_clearly(tmp_path, monkeypatch):
    """The driver's model id travels to the actors; the name is resolved on each node from its own package."""
    from raysegment.infer.stages import InferActor
    from raysegment.io.storage import S3Options

    _checkpoint(tmp_path / "reference_model", seed=3)
    monkeypatch.setattr(reference, "shipped_dir", lambda: str(tmp_path / "reference_model"))
    monkeypatch.chdir(tmp_path / "reference_model")
    with pytest.raises(RuntimeError, match="^this node's raysegment ships reference model [0-9a-f]{16}, the "
                                           "driver's 0123456789abcdef: install the same raysegment version"):
        InferActor("reference", "0123456789abcdef", use_gpu=False, threads=1, micro_batch=1, s3=S3Options())
