"""Training configuration: typed dataclasses, YAML load/save, `key.path=value` overrides, validation.

Precedence: dataclass defaults < YAML file (`--config`) < `--set key.path=value` < explicit CLI flags.
Every problem names its key: unknown keys ("optim.lrr: unknown key; known: ..."), wrong types
("optim.epochs: expected int, got str 'ten'") and bad values ("optim.loss: must be one of ...").
The effective config is saved as `config.yaml` in the run directory; loading it gives an equal object.

Schema (defaults in the dataclasses below; `configs/train-small.yaml` is a tiny CPU example):
    structures: what the model segments, one output channel each (data/structures.py), lungs first
    data:       path (one source) or sources (a list of {name, path, structures}), split [train, val, test
                fractions], split_seed, object_store_budget_mb, max_pixels (100 MP: larger images are
                dropped, never decoded)
    model:      UNetConfig (in_channels, out_channels, base_channels, depth)
    preprocess: PreprocessConfig (size, resize, normalize, low_percentile, high_percentile)
    augment:    AugmentConfig (enabled, rotation_deg, scale, shift, brightness, contrast, gamma, noise_std)
    optim:      epochs, batch_size (per worker), lr, weight_decay, loss, lr_factor, lr_patience, min_lr,
                early_stopping_patience
    scaling:    num_workers, use_gpu (null = auto), cpus_per_worker (null = auto), data_cpus, torch_threads,
                device (null = auto, cpu, cuda)
    run:        name (null = train-<timestamp>), storage_path (local or s3://), seed, max_failures,
                checkpoints_to_keep, prefetch_batches, evaluate_test
    cluster:    cluster.capacity.ClusterOptions, as for `raysegment infer`: address (null = $RAY_ADDRESS or
                a local Ray), wait_for_capacity (seconds; null = 900 when joining a cluster, else 0), no_wait.
                Not compared on resume: a run may go on on another cluster
    debug:      kill_worker_at_epoch (fault-injection for tests)
    threshold:  probability threshold of the predicted mask
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from raysegment.cluster.capacity import ClusterOptions
from raysegment.data.augment import AugmentConfig
from raysegment.data.preprocess import PreprocessConfig
from raysegment.data.structures import LUNGS, check_structures
from raysegment.errors import ConfigError
from raysegment.io import storage
from raysegment.io.decode import DEFAULT_MAX_PIXELS
from raysegment.model.unet import UNetConfig
from raysegment.train.losses import LOSSES


@dataclass(frozen=True)
class SourceSection:
    """One labelled data set of a multi-source run; its loss is masked for the structures it lacks."""

    path: str = ""  # dataset folder, s3:// prefix or manifest
    name: str | None = None  # None: the folder's name
    structures: tuple[str, ...] | None = None  # what to learn from it; None: every run structure it labels


@dataclass(frozen=True)
class DataSection:
    path: str = ""  # dataset folder, s3:// prefix or manifest .csv/.parquet (or sources: one is required)
    sources: tuple[SourceSection, ...] = ()  # several data sets, each split on its own (partial labels)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test fractions
    split_seed: int = 42  # the seed's split seed
    # Train + val preprocessed arrays up to this size are materialized in Ray's object store (fastest);
    # above it they are written once to a Parquet cache in the run dir and streamed each epoch, so the
    # object store never holds the whole split. ~0.5 MB per 512 px example: 2 GB ~ 4k examples.
    object_store_budget_mb: float = 2048.0
    # Images with more pixels (width x height, read from the header) are never decoded (a decompression-bomb
    # guard; infer's --max-pixels): such a pair is dropped with a warning naming this key. 100 MP.
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class OptimSection:
    epochs: int = 50
    batch_size: int = 8  # per worker: the global batch is batch_size * num_workers
    lr: float = 1e-4  # Adam, as the seed
    weight_decay: float = 0.0
    loss: str = "dice"  # dice | bce | bce_dice
    lr_factor: float = 0.1  # ReduceLROnPlateau on val loss, the seed's values
    lr_patience: int = 5
    min_lr: float = 1e-7
    early_stopping_patience: int = 10  # epochs without a better val dice; 0 = never stop early


@dataclass(frozen=True)
class ScalingSection:
    num_workers: int = 2
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float | None = None  # None: share the CPUs left after data_cpus
    data_cpus: float = 1.0  # CPUs kept free for Ray Data tasks
    torch_threads: int | None = None  # None: the worker's whole-CPU share (at least 1)
    # Where workers run the model: None = Ray Train's device (cuda on GPU workers); "cpu" keeps a GPU plan
    # (workers hold GPUs, bf16 autocast, channels_last) but computes on the CPU (checks without a GPU).
    device: str | None = None


@dataclass(frozen=True)
class RunSection:
    name: str | None = None  # None: train-YYYYmmdd-HHMMSS; the same name resumes that run
    storage_path: str = "runs"  # local folder or s3:// prefix; run dir = storage_path/name
    seed: int = 0  # model init, augmentation and shuffling
    max_failures: int = 1  # worker deaths to recover from (from the latest checkpoint); -1 = always
    checkpoints_to_keep: int = 1  # best by val_dice; Ray always keeps the latest as well
    prefetch_batches: int = 2
    evaluate_test: bool = True  # evaluate the best checkpoint on the test split at the end
    calibrate: bool = True  # fit best/calibration.json (QC quality_score) on the val split at the end
    # A fresh run starts from these weights (a checkpoint folder or s3:// URI, or "reference": the shipped
    # model); same width and depth, structures may differ (model/finetune.py). Ignored on resume.
    init_from: str | None = None


@dataclass(frozen=True)
class DebugSection:
    kill_worker_at_epoch: int | None = None  # rank 1 (or 0 alone) exits at this epoch's start, once


@dataclass(frozen=True)
class TrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: UNetConfig = field(default_factory=UNetConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    debug: DebugSection = field(default_factory=DebugSection)
    threshold: float = 0.5  # on the sigmoid probability
    structures: tuple[str, ...] = ("lungs",)  # model output channels, in order; model.out_channels = count

    def source_list(self) -> list[tuple[str, str, tuple[str, ...] | None]]:
        """(name, path, structures) of each source: data.sources, or data.path as the one source."""
        if not self.data.sources:
            return [(storage.basename(self.data.path.rstrip("/")) or "data", self.data.path, None)]
        return [(s.name or storage.basename(s.path.rstrip("/")), s.path, s.structures)
                for s in self.data.sources]

    def to_dict(self) -> dict:
        """Plain dict of YAML/JSON types (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Build and validate; raises ConfigError naming the offending key."""
        config = _build(cls, data, "")
        validate(config)
        return config

    def replace(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted-key overrides applied, e.g. {"optim.epochs": 3}; validated."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return TrainConfig.from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type hint; returns it converted (int -> float, list -> tuple)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)  # only Optional[X] is used
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False)))
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        # PyYAML reads `1e-4` (no dot) as a string, a classic trap: accept numeric strings for floats.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking keys and types recursively."""
    section = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key in {section}; known keys: {', '.join(names)}")
    kwargs = {name: _coerce(data[name], hints[name], prefix + name) for name in names if name in data}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the foundation dataclasses validate in __post_init__
        raise ConfigError(f"{section}: {e}") from None


def _check(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(config: TrainConfig) -> None:
    """Value checks the types cannot express. data.path is checked when training starts."""
    d, o, s, r = config.data, config.optim, config.scaling, config.run
    _check(all(f >= 0 for f in d.split) and abs(sum(d.split) - 1) < 1e-6, "data.split",
           "must be three non-negative fractions (train, val, test) summing to 1", list(d.split))
    _check(d.split[0] > 0 and d.split[1] > 0, "data.split", "train and val fractions must be > 0",
           list(d.split))
    _check(d.object_store_budget_mb >= 0, "data.object_store_budget_mb", "must be >= 0 (0: always stream)",
           d.object_store_budget_mb)
    _check(d.max_pixels >= 1, "data.max_pixels", "must be >= 1 (pixels: width x height)", d.max_pixels)
    _check(config.model.in_channels == 1, "model.in_channels",
           "must be 1 (the data pipeline feeds grayscale)",
           config.model.in_channels)
    try:
        check_structures(config.structures)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check(config.structures[0] == LUNGS, "structures", "must start with lungs (the lung columns, QC and the "
           "CTR are built on the lung channel)", list(config.structures))
    _check(config.model.out_channels == len(config.structures), "model.out_channels",
           f"must equal the number of structures ({len(config.structures)}: {', '.join(config.structures)})",
           config.model.out_channels)
    _check(not (d.path and d.sources), "data.sources", "give data.path or data.sources, not both",
           [s.path for s in d.sources])
    for i, src in enumerate(d.sources):
        _check(bool(src.path), f"data.sources[{i}].path", "required", src.path)
        if src.structures is not None:
            try:
                check_structures(src.structures, f"data.sources[{i}].structures")
            except ValueError as e:
                raise ConfigError(str(e)) from None
            extra = [n for n in src.structures if n not in config.structures]
            _check(not extra, f"data.sources[{i}].structures", f"{extra} not among the model's structures "
                   f"{list(config.structures)}", list(src.structures))
    names_ = [n for n, _, _ in config.source_list()]
    _check(len(set(names_)) == len(names_), "data.sources", "source names must differ (set name:)", names_)
    _check(o.epochs >= 1, "optim.epochs", "must be >= 1", o.epochs)
    _check(o.batch_size >= 1, "optim.batch_size", "must be >= 1", o.batch_size)
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(o.loss in LOSSES, "optim.loss", f"must be one of {', '.join(LOSSES)}", o.loss)
    _check(0 < o.lr_factor < 1, "optim.lr_factor", "must be in (0, 1)", o.lr_factor)
    _check(o.lr_patience >= 0, "optim.lr_patience", "must be >= 0", o.lr_patience)
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", "must be in [0, optim.lr]", o.min_lr)
    _check(o.early_stopping_patience >= 0, "optim.early_stopping_patience", "must be >= 0 (0 = off)",
           o.early_stopping_patience)
    _check(s.num_workers >= 1, "scaling.num_workers", "must be >= 1", s.num_workers)
    _check(s.cpus_per_worker is None or s.cpus_per_worker > 0, "scaling.cpus_per_worker",
           "must be > 0 or null (auto)", s.cpus_per_worker)
    _check(s.data_cpus >= 0, "scaling.data_cpus", "must be >= 0", s.data_cpus)
    _check(s.device in (None, "cpu", "cuda"), "scaling.device", "must be cpu, cuda or null (auto)", s.device)
    _check(not (s.device == "cuda" and s.use_gpu is False), "scaling.device",
           "cuda needs GPU workers (scaling.use_gpu is false)", s.device)
    _check(s.torch_threads is None or s.torch_threads >= 1, "scaling.torch_threads", "must be >= 1 or null",
           s.torch_threads)
    _check(r.name is None or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.name) is not None, "run.name",
           "must be letters, digits, '.', '_' or '-' (it becomes a folder name)", r.name)
    _check(bool(r.storage_path), "run.storage_path", "must be a local folder or s3:// URI", r.storage_path)
    _check(r.max_failures >= -1, "run.max_failures", "must be >= 0, or -1 for unlimited", r.max_failures)
    _check(r.checkpoints_to_keep >= 1, "run.checkpoints_to_keep", "must be >= 1", r.checkpoints_to_keep)
    _check(r.prefetch_batches >= 0, "run.prefetch_batches", "must be >= 0", r.prefetch_batches)
    k = config.debug.kill_worker_at_epoch
    _check(k is None or k >= 1, "debug.kill_worker_at_epoch", "must be >= 1 or null", k)
    _check(0 < config.threshold < 1, "threshold", "must be in (0, 1)", config.threshold)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section (in override {key!r})")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'model.base_channels=8' -> ('model.base_channels', 8); values are parsed as YAML (8, 1.5, true,
    null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w.]*", key.strip()):
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. optim.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key.strip()}: cannot parse value {raw!r}: {e}") from None
    return key.strip(), value


def load_config(uri: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at `uri` (local or s3) if given, then dotted-key overrides."""
    data: dict = {}
    if uri:
        try:
            data = yaml.safe_load(storage.read_text(uri)) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {uri}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{uri}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{uri}: expected a mapping of sections at the top level")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return TrainConfig.from_dict(data)


def save_config(config: TrainConfig, uri: str) -> None:
    """Write the config as YAML (local or s3)."""
    storage.write_text(uri, yaml.safe_dump(config.to_dict(), sort_keys=False))
