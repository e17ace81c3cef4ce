"""The reference model shipped inside the package, named by the checkpoint name `reference`.

`resolve(uri)` turns the name into the folder of the installed package that holds it
(`raysegment/reference_model/`: model.safetensors, config.json, calibration.json); any other URI passes
through unchanged. Every process resolves the name from ITS OWN installed package: a Ray worker is given
the name, never the driver's path, so a cluster whose nodes have another raysegment version fails with
one clear error (the model ids differ) instead of silently mixing models. An existing path called
`reference` (a folder of the user's) wins over the name, with a note saying so.

The weights' terms differ from the code's (docs/model_card.md, LICENSE-WEIGHTS): non-commercial research
and education only, because the films they were trained on were released for research use.
"""

from __future__ import annotations

import json
import os
from importlib import resources

from raysegment.errors import CheckpointError, UserError

NAME = "reference"
PACKAGE_FOLDER = "reference_model"
TERMS = "weights for non-commercial research and education only (LICENSE-WEIGHTS, docs/model_card.md)"


def shipped_dir() -> str:
    """The installed package's reference model folder (it may be absent from a source tree)."""
    return str(resources.files("raysegment") / PACKAGE_FOLDER)


def is_shipped() -> bool:
    return os.path.isfile(os.path.join(shipped_dir(), "model.safetensors"))


def resolve(uri: str) -> tuple[str, str | None]:
    """(the checkpoint folder to load, a one-line note or None) for a checkpoint URI or the name."""
    if uri != NAME:
        return uri, None
    if os.path.exists(NAME):
        return os.path.abspath(NAME), (f"a path called '{NAME}' exists in {os.getcwd()}: using it, not the "
                                       "shipped reference model")
    if not is_shipped():
        raise CheckpointError(f"this installation of raysegment ships no reference model ({shipped_dir()} "
                              "has no model.safetensors)",
                              hint="reinstall raysegment, or pass your own --checkpoint")
    return shipped_dir(), None


def names_shipped(uri: str) -> bool:
    """Whether `uri` names the shipped model (the name, and no path of the user's called so)."""
    return uri == NAME and not os.path.exists(NAME)


def notice(uri: str) -> str | None:
    """The one console line for a checkpoint URI: which model the name chose (model_id, the weights'
    terms), or that a path of the user's won over the name; None for any other URI."""
    folder, note = resolve(uri)
    if note or uri != NAME:
        return note
    with open(os.path.join(folder, "config.json")) as f:
        model_id = json.load(f).get("model_id", "?")
    return f"using the shipped reference model (model_id {model_id}): {TERMS}"


def require_out(uri: str, out: str | None, command: str) -> None:
    """Commands that write next to the checkpoint by default must not write into the installed package."""
    if out is None and names_shipped(uri):
        raise UserError(f"{command} would write into the installed package's reference model folder",
                        hint="pass --out FOLDER (a folder of yours)")
