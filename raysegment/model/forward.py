"""The model's forward pass for inference: uint8 model inputs -> uint8 probabilities per structure.

Why the forward has a fixed shape and a fixed thread count: CPU convolution kernels pick their blocking
and reduction order from the batch size and the number of threads, so the same image gives logits that
differ in the last bit between batch 1 and batch 16, or 1 thread and 2 (measured: ~3e-8). Such a
difference can flip a uint8 probability level or a pixel at the threshold. So the forward always runs
fixed-size micro-batches (1 image on CPU; on GPU the actor batch size, zero-padded) with a fixed number
of intra-op threads (1 on CPU: CPU inference scales by running one single-threaded actor per core).
Same shape + same threads + same kernels = the same bits, by construction. Bulk inference's actors,
`predict`, `evaluate` and calibration all call `forward_structures`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

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
