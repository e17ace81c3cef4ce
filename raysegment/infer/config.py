"""`InferConfig`: everything `raysegment infer` does, in sections that mirror the flags' groups.

See `raysegment infer --help` for each option.
"""


from __future__ import annotations

from dataclasses import dataclass, field

from raysegment.io import storage
from raysegment.postprocess.masks import PostprocessConfig


@dataclass(frozen=True)
class InferConfig:
    """Everything `raysegment infer` does; see `raysegment infer --help` for each option."""

    input: str  # folder, s3:// prefix, or .csv/.parquet manifest
    checkpoint: str  # checkpoint folder (local or s3://)
    output: str  # results folder or prefix
    masks_out: str | None = None  # also write each mask as PNG here
    ground_truth: str | None = None  # any layout datasets.discover finds
    manifest_column: str | None = None  # manifest column with the URIs (default: auto)
    limit: int | None = None  # only the first N inputs (trials)
    batch_size: int | None = None  # images per actor call (default CPU_BATCH on CPU, GPU_MICRO_BATCH on GPU)
    num_actors: int | None = None  # default: one per GPU, or one per CPU minus the decode share
    min_actors: int | None = None  # autoscaling pool: start with (and wait for) this many (default 1)
    max_actors: int | None = None  # ... and grow up to this many as nodes join (default: what can exist)
    # seconds to wait for nodes; None: 900 when joining a cluster, else 0
    wait_for_capacity: float | None = None
    no_wait: bool = False  # never wait: fail at once when the plan does not fit what is up
    dry_run: bool = False  # list, resume, plan and print; run nothing
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    device: str | None = None  # where actors run the model: None = cuda on GPU actors; "cpu" forces the CPU
    torch_threads: int | None = None  # intra-op threads per CPU actor (default 1; see predict.py)
    threshold: float | None = None  # default: the checkpoint's
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    pixel_spacing_mm: float | None = None  # assumed spacing where the file has none (PNG/JPEG)
    resume: bool = True  # skip inputs already done ok with this model
    rows_per_file: int = 256  # at least this many rows per Parquet file (fewer for the last)
    s3: storage.S3Options = field(default_factory=storage.S3Options)
    address: str | None = None  # Ray cluster address (default: $RAY_ADDRESS or a local Ray)
    run_id: str | None = None  # default: UTC timestamp + random suffix
    correct_inversion: bool = True  # invert inverted PNG/JPEG/TIFF exports back (data/inversion.py)
    mask_png: bool = True  # False: leave the mask_png column empty (mask_rle holds the mask)
    dicom_seg_out: str | None = None  # write a DICOM SEG per DICOM input here (outputs/dicom_seg.py)
    dicom_seg_sides: bool = False  # SEG with right and left lung as two segments instead of one "Lung"
