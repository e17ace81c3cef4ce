"""raysegment: distributed lung segmentation of chest X-rays on Ray.

Stages: storage -> decode/preprocess -> model -> postprocess -> outputs. See docs/architecture.md.
Public names are imported lazily so that `raysegment --help` does not pay for importing torch or Ray.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raysegment")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"

# public name -> module that defines it
_EXPORTS = {
    "UNet": "raysegment.model.unet",
    "UNetConfig": "raysegment.model.unet",
    "load_model": "raysegment.model.checkpoint",
    "LoadedModel": "raysegment.model.checkpoint",
    "read_results": "raysegment.outputs.results",
    "predict": "raysegment.infer.predict",
    "decode_image": "raysegment.io.decode",
}

__all__ = [
    "LoadedModel", "UNet", "UNetConfig", "__version__", "decode_image", "load_model", "predict",
    "read_results",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'raysegment' has no attribute {name!r}")
