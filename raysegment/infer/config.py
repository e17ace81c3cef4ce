"""`InferConfig`: everything `raysegment infer` does, in sections that mirror the flags' groups
(`raysegment infer --help`; TrainConfig is sectioned the same way).

    io:       where the images come from and where the results go (and in which forms)
    model:    the checkpoint, its probability threshold and the post-processing (QC threshold included)
    scaling:  actors, batch, GPU/CPU, device, torch threads
    cluster:  the Ray cluster and how long to wait for it to grow (cluster.capacity.ClusterOptions)
    s3:       object storage options (io.storage.S3Options)
    dry_run:  list, resume and plan, print; run nothing

    InferConfig(IOSection(input="xrays/", output="results/"), ModelSection(checkpoint="runs/r1/best"),
                ScalingSection(num_actors=4))
"""


from __future__ import annotations

from dataclasses import dataclass, field

from raysegment.cluster.capacity import ClusterOptions
from raysegment.data.model_input import InputOptions
from raysegment.io import storage
from raysegment.io.decode import DEFAULT_MAX_PIXELS, RADIOGRAPH_MODALITIES
from raysegment.postprocess.masks import PostprocessConfig


@dataclass(frozen=True)
class IOSection:
    """Inputs, outputs and how inputs are read (flags of the "input and output" group)."""

    input: str  # folder, s3:// prefix, or .csv/.parquet manifest
    output: str  # results folder or prefix
    masks_out: str | None = None  # also write each mask as PNG here
    ground_truth: str | None = None  # any layout datasets.discover finds
    manifest_column: str | None = None  # manifest column with the URIs (default: auto)
    limit: int | None = None  # only the first N inputs (trials)
    resume: bool = True  # skip inputs already done ok with this model
    rows_per_file: int = 256  # at least this many rows per Parquet file (fewer for the last)
    pixel_spacing_mm: float | None = None  # assumed spacing where the file has none (PNG/JPEG)
    correct_inversion: bool = True  # invert inverted PNG/JPEG/TIFF exports back (data/inversion.py)
    mask_png: bool = True  # False: leave the mask_png column empty (mask_rle holds the mask)
    dicom_seg_out: str | None = None  # write a DICOM SEG per DICOM input here (outputs/dicom_seg.py)
    dicom_seg_sides: bool = False  # SEG with right and left lung as two segments instead of one "Lung"
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are error rows (a decompression bomb)
    modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES  # DICOM Modality values segmented; None: all

    def input_options(self) -> InputOptions:
        """How the decode tasks read the inputs (data/model_input.InputOptions)."""
        return InputOptions(correct_inversion=self.correct_inversion, max_pixels=self.max_pixels,
                            modalities=self.modalities)


@dataclass(frozen=True)
class ModelSection:
    """The model and what turns its probabilities into masks (groups "model and postprocessing", QC)."""

    checkpoint: str  # checkpoint folder (local or s3://)
    threshold: float | None = None  # default: the checkpoint's
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # incl. the QC threshold


@dataclass(frozen=True)
class ScalingSection:
    """How the run is sized (group "scaling and cluster"; infer/sizing.py reads it)."""

    batch_size: int | None = None  # images per actor call (default CPU_BATCH on CPU, GPU_MICRO_BATCH on GPU)
    num_actors: int | None = None  # default: one per GPU, or one per CPU minus the decode share
    min_actors: int | None = None  # autoscaling pool: start with (and wait for) this many (default 1)
    max_actors: int | None = None  # ... and grow up to this many as nodes join (default: what can exist)
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    device: str | None = None  # where actors run the model: None = cuda on GPU actors; "cpu" forces the CPU
    torch_threads: int | None = None  # intra-op threads per CPU actor (default 1; see predict.py)


@dataclass(frozen=True)
class InferConfig:
    """Everything `raysegment infer` does; see `raysegment infer --help` for each option."""

    io: IOSection
    model: ModelSection
    scaling: ScalingSection = field(default_factory=ScalingSection)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    s3: storage.S3Options = field(default_factory=storage.S3Options)
    dry_run: bool = False  # list, resume, plan and print; run nothing
