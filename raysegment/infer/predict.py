"""Single-image prediction: decode -> preprocess -> forward -> postprocess.

This is the reference the bulk pipeline (raysegment.infer.pipeline) must match pixel for pixel, and the
function
evaluate/show use for one image. Both run the SAME code for every step: imageio.decode_image,
preprocess.preprocess_image, `forward_probabilities` below, postprocess.postprocess.

Why the forward has a fixed shape and a fixed thread count: CPU convolution kernels pick their blocking
and reduction order from the batch size and the number of threads, so the same image gives logits that
differ in the last bit between batch 1 and batch 16, or 1 thread and 2 (measured: ~3e-8). Such a
difference can flip a uint8 probability level or a pixel at the threshold. So the forward always runs
fixed-size micro-batches (1 image on CPU; on GPU the actor batch size, zero-padded) with a fixed number
of intra-op threads (1 on CPU: CPU inference scales by running one single-threaded actor per core).
Same shape + same threads + same kernels = the same bits, by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from raysegment.data.inversion import correct_inversion
from raysegment.data.preprocess import Geometry, preprocess_image
from raysegment.evaluation.scoring import score
from raysegment.infer.ctr import CTR
from raysegment.infer.postprocess import PostprocessConfig, Segmentation
from raysegment.io.decode import ImageMeta, decode_image
from raysegment.model.checkpoint import LoadedModel

CPU_THREADS = 1  # intra-op threads of a CPU forward (see the module docstring)
GPU_MICRO_BATCH = 32  # images per GPU forward; the pipeline's default GPU batch size


def default_micro_batch(device: torch.device | str) -> int:
    """Images per forward: 1 on CPU (no padding waste, no gain from batching), GPU_MICRO_BATCH on GPU."""
    return GPU_MICRO_BATCH if torch.device(device).type == "cuda" else 1


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: leave torch's setting), then restore it."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def gpu_recipe(x: torch.Tensor, bf16: bool):
    """The GPU forward recipe: channels_last input + bf16 autocast on the tensor's device (CUDA, or the CPU
    when a GPU plan runs its model on the CPU: `--device cpu`, and the CPU tests of this path).
    Returns (input, context manager); with bf16=False the input unchanged and a no-op context."""
    if not bf16:
        return x, contextlib.nullcontext()
    x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.autocast(x.device.type, dtype=torch.bfloat16)


def forward_structures(
    model: torch.nn.Module,
    images: np.ndarray,
    micro_batch: int | None = None,
    threads: int | None = CPU_THREADS,
    bf16: bool | None = None,
) -> np.ndarray:
    """uint8 (N, S, S) model inputs -> uint8 (N, C, S, S) probability x 255 (round half to even), one channel
    per structure of the model (checkpoint spec.structures; channel 0 = the lungs).

    Runs on the model's device in chunks of exactly `micro_batch` images (the last one zero-padded, which
    does not change the other images' results: eval-mode layers never mix images). `bf16` (default: on
    CUDA) selects the GPU recipe, bf16 autocast and channels_last (the model should already be
    channels_last; see InferActor). The probability leaves as uint8: 4x smaller than float32 between Ray
    stages, and 1/255 is far below any decision we make.
    """
    device = model_device(model)
    micro_batch = micro_batch or default_micro_batch(device)
    on_gpu = device.type == "cuda"
    bf16 = on_gpu if bf16 is None else bf16
    out = None
    with torch_threads(None if on_gpu else threads), torch.inference_mode():
        for start in range(0, len(images), micro_batch):
            chunk = images[start : start + micro_batch]
            n = len(chunk)
            if n < micro_batch:
                chunk = np.concatenate([chunk, np.zeros((micro_batch - n, *chunk.shape[1:]), np.uint8)])
            # to_tensor's arithmetic, after the copy: uint8 crosses to the GPU, 4x fewer bytes than float32.
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(device, non_blocking=True)
            x, precision = gpu_recipe(x.unsqueeze(1).float().div_(255.0), bf16)
            with precision:
                logits = model(x)
            prob = torch.sigmoid(logits[:n].float())
            if out is None:
                out = np.empty((len(images), prob.shape[1], *images.shape[1:]), dtype=np.uint8)
            out[start : start + n] = (prob * 255.0).round_().to(torch.uint8).cpu().numpy()
    return out if out is not None else np.empty((0, 1, *images.shape[1:]), dtype=np.uint8)


def forward_probabilities(model: torch.nn.Module, images: np.ndarray, micro_batch: int | None = None,
                          threads: int | None = CPU_THREADS, bf16: bool | None = None) -> np.ndarray:
    """uint8 (N, S, S) model inputs -> uint8 (N, S, S) LUNG probability x 255: forward_structures' channel 0
    (see there), for the callers that only need the lungs."""
    return forward_structures(model, images, micro_batch, threads, bf16)[:, 0]


@dataclass
class Prediction:
    segmentation: Segmentation  # lung mask at the original resolution + measurements
    probability: np.ndarray  # uint8 SxS, model resolution, lung probability x 255
    geometry: Geometry  # how the original image maps into the model input
    meta: ImageMeta | None  # from the decoder; None when an array was given
    structures: dict[str, np.ndarray] = field(default_factory=dict)  # heart, clavicles: bool HxW masks
    ctr: CTR | None = None  # a model with a heart channel: the cardiothoracic ratio and its parts


def predict(
    loaded: LoadedModel,
    image: bytes | np.ndarray,
    name: str = "",
    config: PostprocessConfig | None = None,
    threshold: float | None = None,
    micro_batch: int | None = None,
    threads: int | None = CPU_THREADS,
    fix_inversion: bool = True,
) -> Prediction:
    """Segment one X-ray: encoded bytes (any format imageio reads) or a float32 HxW array in [0, 1].

    `config` defaults to PostprocessConfig(); `threshold` to the checkpoint's. `micro_batch` and `threads`
    must be what the pipeline used for pixel-identical results (the defaults are the pipeline's defaults).
    `fix_inversion`: an inverted PNG/JPEG/TIFF is inverted back first, as bulk inference does
    (data/inversion.py). Raises imageio.DecodeError on undecodable bytes.
    """
    meta = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        decoded = decode_image(bytes(image), name)
        image, meta = decoded.image, decoded.meta
        if fix_inversion:
            image, _ = correct_inversion(image, meta.format)
    model_input, geo = preprocess_image(image, loaded.spec.preprocess)
    probs = forward_structures(loaded.model, model_input[None], micro_batch, threads)[0]
    threshold = loaded.spec.threshold if threshold is None else threshold
    # scoring.score: the one scoring path (lungs, further structures, CTR), here without a truth.
    others = {name: probs[c] for c, name in enumerate(loaded.spec.structures) if c > 0}
    scored = score(probs[0], geo, threshold, config or PostprocessConfig(), others=others)
    return Prediction(scored.segmentation, probs[0], geo, meta,
                      {p.name: p.mask for p in scored.structures}, scored.ctr)
