"""Model checkpoints: a folder with `model.safetensors` (weights) and `config.json` (everything needed to
use them: architecture, preprocessing, threshold, plus provenance: epoch, metrics, split digest, versions).

`load_model(path_or_uri)` loads one without Ray, from local disk or s3://. Training keeps its optimizer and
scheduler state beside these two files (`train_state.pt`); inference never reads it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from raysegment.data.preprocess import PreprocessConfig
from raysegment.data.structures import DEFAULT_STRUCTURES, check_structures
from raysegment.errors import CheckpointError
from raysegment.io import storage
from raysegment.model import reference
from raysegment.model.unet import UNet, UNetConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """What travels with the weights so that inference preprocesses exactly as training did."""

    model: UNetConfig = field(default_factory=UNetConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    threshold: float = 0.5  # on the sigmoid probability
    structures: tuple[str, ...] = DEFAULT_STRUCTURES  # one per output channel, in order; lungs first

    def __post_init__(self) -> None:
        check_structures(self.structures)
        if len(self.structures) != self.model.out_channels:
            raise ValueError(f"structures {list(self.structures)} do not match the model's "
                             f"{self.model.out_channels} output channel(s)")

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "preprocess": self.preprocess.to_dict(),
                "threshold": self.threshold, "structures": list(self.structures)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        # Checkpoints from before multi-structure models have no "structures": they segment the lungs.
        return cls(UNetConfig(**d["model"]), PreprocessConfig(**d["preprocess"]),
                   float(d.get("threshold", 0.5)), tuple(d.get("structures", DEFAULT_STRUCTURES)))


@dataclass
class LoadedModel:
    model: UNet  # in eval mode, on CPU unless a device was asked for
    spec: ModelSpec
    model_id: str  # sha256 of model.safetensors (first 16 hex digits): identifies the weights
    config: dict  # the whole config.json (provenance included)


def versions() -> dict[str, str]:
    import numpy

    import raysegment

    out = {"raysegment": raysegment.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:  # inference without Ray installed still works
        pass
    return out


def clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without DDP's 'module.' prefix, on CPU, contiguous (safetensors needs that)."""
    model = getattr(model, "module", model)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def weights_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save_checkpoint(uri: str, model: torch.nn.Module, spec: ModelSpec, extra: dict | None = None) -> str:
    """Write model.safetensors + config.json under `uri` (folder, local or s3). Returns the model id."""
    weights = save_safetensors(clean_state_dict(model))
    model_id = weights_digest(weights)
    config = {"format_version": FORMAT_VERSION, **spec.to_dict(), "model_id": model_id,
              "versions": versions()}
    config.update(extra or {})
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), weights)
    storage.write_text(storage.join(uri, CONFIG_FILE), json.dumps(config, indent=2, default=str))
    return model_id


CHECKPOINT_HINT = (f"a checkpoint is a folder with {WEIGHTS_FILE} and {CONFIG_FILE}, e.g. RUN_DIR/best "
                   "written by `raysegment train`")


def read_config(uri: str) -> dict:
    config_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(config_uri):
        raise CheckpointError(f"no {CONFIG_FILE} in checkpoint {uri}", hint=CHECKPOINT_HINT)
    return json.loads(storage.read_text(config_uri))


def load_model(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint folder (local path or s3:// URI), or the shipped model by its name "reference"
    (model/reference.py: resolved from this process's own installed package), into an eval-mode UNet.
    No Ray needed.

    Raises errors.CheckpointError (a UserError) when the folder is missing or does not load.
    """
    uri, _ = reference.resolve(uri)
    config = read_config(uri)
    try:
        spec = ModelSpec.from_dict(config)
        weights = storage.read_bytes(storage.join(uri, WEIGHTS_FILE))
        model = UNet.from_config(spec.model)
        model.load_state_dict(load_safetensors(weights))
    except Exception as e:  # a truncated, foreign or mismatched checkpoint: one user error
        raise CheckpointError(f"checkpoint {uri} does not load: {type(e).__name__}: {e}",
                              hint=CHECKPOINT_HINT) from e
    model.to(device).eval()
    return LoadedModel(model, spec, weights_digest(weights), config)


def copy_checkpoint(uri: str, out: str) -> None:
    """Copy a checkpoint's config and weights (local or s3://, or the name "reference") to the folder `out`,
    so a refitted calibration can be written there instead of beside the original."""
    uri, _ = reference.resolve(uri)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        storage.write_bytes(storage.join(out, name), storage.read_bytes(storage.join(uri, name)))
