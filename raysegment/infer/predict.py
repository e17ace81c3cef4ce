"""Single-image prediction: bytes -> model input -> forward -> postprocess.

This is the reference the bulk pipeline (raysegment.infer.pipeline) must match pixel for pixel, and the
function show uses for one image. Both run the SAME code for every step: data.model_input.prepare_input
(decode, inversion check, preprocess), model.forward.forward_structures (fixed micro-batches and threads:
see there why), postprocess.scoring.score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raysegment.data.model_input import InputOptions, decode_frame, to_model_input
from raysegment.data.preprocess import Geometry
from raysegment.io.decode import ImageMeta
from raysegment.model.checkpoint import LoadedModel
from raysegment.model.forward import CPU_THREADS, forward_structures
from raysegment.postprocess.ctr import CTR
from raysegment.postprocess.masks import PostprocessConfig, Segmentation
from raysegment.postprocess.scoring import score


@dataclass
class Prediction:
    segmentation: Segmentation  # lung mask at the original resolution + measurements
    probability: np.ndarray  # uint8 SxS, model resolution, lung probability x 255
    geometry: Geometry  # how the original image maps into the model input
    meta: ImageMeta | None  # from the decoder; None when an array was given
    structures: dict[str, np.ndarray] = field(default_factory=dict)  # heart, clavicles: bool HxW masks
    ctr: CTR | None = None  # a model with a heart channel: the cardiothoracic ratio and its parts
    inversion_corrected: bool = False  # the bytes were an inverted export, inverted back first
    qc_notes: list[str] = field(default_factory=list)  # the input's notes, then scoring's (as a results row)


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
    """Segment one X-ray: encoded bytes (any format io/decode.py reads) or a float32 HxW array in [0, 1].

    `config` defaults to PostprocessConfig(); `threshold` to the checkpoint's. `micro_batch` and `threads`
    must be what the pipeline used for pixel-identical results (the defaults are the pipeline's defaults).
    `fix_inversion`: an inverted PNG/JPEG/TIFF is inverted back first, as bulk inference does
    (data/inversion.py). Raises errors.DecodeError on undecodable bytes (NotAnImageError: no image at all;
    NotAChestFilmError: a DICOM without an image, or of a Modality other than CR/DX/OT).
    """
    frame = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        frame = decode_frame(bytes(image), name, InputOptions(correct_inversion=fix_inversion))
    model_input, geo = to_model_input(frame if frame is not None else image, loaded.spec.preprocess)
    probs = forward_structures(loaded.model, model_input[None], micro_batch, threads)[0]
    threshold = loaded.spec.threshold if threshold is None else threshold
    # scoring.score: the one scoring path (lungs, further structures, CTR), here without a truth.
    others = {name: probs[c] for c, name in enumerate(loaded.spec.structures) if c > 0}
    scored = score(probs[0], geo, threshold, config or PostprocessConfig(), others=others,
                   frontal=frame.frontal if frame is not None else True)
    notes = [*(frame.qc_notes if frame else ()), *scored.qc_notes]
    return Prediction(scored.segmentation, probs[0], geo, frame.meta if frame else None,
                      {p.name: p.mask for p in scored.structures}, scored.ctr,
                      bool(frame and frame.inversion_corrected), notes)
