"""raysegment: distributed lung segmentation of chest X-rays on Ray.

Stages: storage -> decode/preprocess -> model -> postprocess -> outputs. See docs/architecture.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raysegment")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+local"

from raysegment.checkpoint import LoadedModel, load_model  # noqa: E402
from raysegment.model import UNet, UNetConfig  # noqa: E402

__all__ = ["UNet", "UNetConfig", "load_model", "LoadedModel", "__version__"]
