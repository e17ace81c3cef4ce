"""Fine-tuning (model/finetune.py, `run.init_from`): every weight copied but the head; the head's channels
follow the structures by name (kept, dropped, or new and freshly initialised); another architecture is a
ConfigError naming the key."""

import pytest
import torch

from raysegment.errors import ConfigError
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.finetune import init_from
from raysegment.model.unet import UNet, UNetConfig


def _source(tmp_path, structures=("lungs", "heart", "clavicles"), base=4, depth=2, seed=0):
    torch.manual_seed(seed)
    config = UNetConfig(out_channels=len(structures), base_channels=base, depth=depth)
    save_checkpoint(str(tmp_path / "src"), UNet.from_config(config), ModelSpec(model=config,
                                                                               structures=structures))
    return load_model(str(tmp_path / "src"))


def _target(structures, base=4, depth=2):
    torch.manual_seed(99)
    return UNet.from_config(UNetConfig(out_channels=len(structures), base_channels=base, depth=depth))


def test_same_structures_give_the_same_model(tmp_path):
    source = _source(tmp_path)
    target = _target(("lungs", "heart", "clavicles"))
    assert init_from(target, ("lungs", "heart", "clavicles"), source) == []
    x = torch.rand(2, 1, 32, 40)  # another input size than training's: the UNet is fully convolutional
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.model(x))


def test_head_channels_follow_the_structures_by_name(tmp_path):
    source = _source(tmp_path)
    fresh = _target(("clavicles", "lungs", "heart"))  # another order
    init_from(fresh, ("clavicles", "lungs", "heart"), source)
    w, s = fresh.state_dict(), source.model.state_dict()
    assert torch.equal(w["head.weight"][0], s["head.weight"][2])
    assert torch.equal(w["head.bias"][1], s["head.bias"][0])
    subset = _target(("lungs",))
    assert init_from(subset, ("lungs",), source) == []
    assert torch.equal(subset.state_dict()["head.weight"][0], s["head.weight"][0])


def test_a_new_structure_gets_a_fresh_channel_and_a_note(tmp_path):
    source = _source(tmp_path, structures=("lungs",))
    target = _target(("lungs", "heart"))
    before = target.state_dict()["head.weight"][1].clone()
    notes = init_from(target, ("lungs", "heart"), source)
    assert notes == [(f"init_from {source.model_id}: the head channel of 'heart' is new (freshly "
                      "initialised); the other weights are the source's")]
    after = target.state_dict()
    assert torch.equal(after["head.weight"][1], before)  # untouched: its own fresh init
    assert torch.equal(after["head.weight"][0], source.model.state_dict()["head.weight"][0])
    theirs = source.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in after.items() if not k.startswith("head."))


@pytest.mark.parametrize("base, depth", [(8, 2), (4, 3)])
def test_another_width_or_depth_is_a_config_error(tmp_path, base, depth):
    source = _source(tmp_path)
    with pytest.raises(ConfigError, match=r"^run.init_from: model [0-9a-f]{16} has in_channels 1, "
                                          rf"base_channels 4, depth 2; this run has 1, {base}, {depth}:"):
        init_from(_target(("lungs",), base, depth), ("lungs",), source)
