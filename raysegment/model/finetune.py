"""Start a fresh training run from another model's weights (fine-tuning): `run.init_from` in a training
config (a checkpoint folder, s3:// URI, or the shipped model's name `reference`).

Every weight is copied except the 1x1 head, which has one output channel per structure: a structure both
models segment keeps its trained channel (in the new run's order), a structure only the new run has gets
a freshly initialised channel (said in a note), and the source's other channels are dropped. So the new
run may segment the same structures, a subset, or a superset. The width and depth must be the same (a
clear error otherwise); the input size may differ (the UNet is fully convolutional).
"""

from __future__ import annotations

import torch

from raysegment.errors import ConfigError
from raysegment.model.checkpoint import LoadedModel
from raysegment.model.unet import UNet

HEAD = "head."  # the 1x1 output convolution's parameters: head.weight (C, W, 1, 1), head.bias (C,)


def check_compatible(target: UNet, source: LoadedModel, key: str = "run.init_from") -> None:
    """ConfigError unless `source` has the target's input channels, width and depth."""
    t, s = target.config, source.spec.model
    mine = (t.in_channels, t.base_channels, t.depth)
    theirs = (s.in_channels, s.base_channels, s.depth)
    if mine != theirs:
        raise ConfigError(f"{key}: model {source.model_id} has in_channels {s.in_channels}, base_channels "
                          f"{s.base_channels}, depth {s.depth}; this run has {t.in_channels}, "
                          f"{t.base_channels}, {t.depth}: fine-tuning needs the same architecture (set "
                          "model.base_channels and model.depth to the source's)")


def init_from(target: UNet, structures: tuple[str, ...], source: LoadedModel) -> list[str]:
    """Copy `source`'s weights into `target` (in place; see the module docstring). Returns the notes (one
    per freshly initialised head channel)."""
    check_compatible(target, source)
    theirs = source.model.state_dict()
    mine = target.state_dict()
    for name, value in theirs.items():
        if not name.startswith(HEAD):
            mine[name] = value.detach().clone()
    notes = []
    index = {name: c for c, name in enumerate(source.spec.structures)}
    for c, name in enumerate(structures):
        if name in index:
            mine["head.weight"][c] = theirs["head.weight"][index[name]]
            mine["head.bias"][c] = theirs["head.bias"][index[name]]
        else:
            notes.append(f"init_from {source.model_id}: the head channel of '{name}' is new (freshly "
                         "initialised); the other weights are the source's")
    with torch.no_grad():
        target.load_state_dict(mine)
    return notes
