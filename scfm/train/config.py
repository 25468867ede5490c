"""Run options for pretraining, apart from the model config (litgpt-style).

A :class:`PretrainConfig` is built from defaults, an optional YAML file and ``key=value``
overrides with dotted names::

    cfg = PretrainConfig.load("configs/pretrain_3m.yaml", overrides=["train.lr=3e-4"])

The YAML mirrors the dataclasses::

    model: 3m                 # a preset name ...
    model_overrides: {dec_attention: sdpa}
    data: {corpus: /data/corpus, micro_batch_size: 16}
    train: {max_steps: 20000, lr: 1.0e-4, warmup_steps: 1000}
    scale: {num_workers: 8, use_gpu: true, strategy: fsdp}
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scfm.cli_options import option
from scfm.model.config import ModelConfig, RDAConfig
from scfm.runtime import Precision

# A few steps of the tiny model: `--smoke-test` of `scfm pretrain` and workflows/pretrain.py.
SMOKE_TEST_OVERRIDES: tuple[str, ...] = (
    "model=tiny",
    "train.max_steps=4",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.global_batch_size=4",
    "data.micro_batch_size=2",
    "data.val_cells=8",
    "scale.num_workers=1",
)

Strategy = Literal["ddp", "fsdp"]


@dataclass
class DataArgs:
    """Where the cells come from and how they are batched."""

    corpus: str = option("", "Corpus directory / URI (a manifests/ folder beside the shards).")
    micro_batch_size: int = option(8, "Cells per worker per forward pass.")
    max_train_cells: int | None = option(None, "Cap on training cells (smoke tests, scaling).")
    val_cells: int = option(256, "Validation cells evaluated at each validation.")
    shuffle_seed: int = option(0, "Seed of the data order.")
    buffer_cells: int = option(
        65_536,
        "Shuffle window per worker: each batch is drawn from this many cells' row groups "
        "(~12 kB of memory per cell); larger mixes more data sets per batch.",
    )
    reader_threads: int = option(2, "Threads per worker decoding row groups ahead of need.")
    cache: bool = option(
        True,
        "Keep decoded row groups in a node-local training cache (memory-mapped Arrow IPC, "
        "~10 kB of disk per cell), so epochs after the first skip parquet decoding "
        "(~2 µs instead of ~30 µs per cell).",
    )
    cache_lz4: bool = option(
        False, "Compress the training cache with LZ4: about half the disk, 4× the read cost."
    )
    cache_dir: str = option(
        "", "Training cache directory ('' = $SCFM_CACHE_DIR/corpus, else ~/.cache/scfm/corpus)."
    )
    rda: RDAConfig = field(default_factory=RDAConfig)


@dataclass
class TrainArgs:
    """Optimization and bookkeeping; the official recipe is AdamW 1e-4, no decay, clip 1."""

    max_steps: int = option(1000, "Optimizer steps.")
    global_batch_size: int = option(
        64, "Cells per optimizer step over all workers (reached by gradient accumulation)."
    )
    lr: float = option(1e-4, "Peak learning rate.")
    min_lr_ratio: float = option(0.1, "The cosine decays to lr × this.")
    warmup_steps: int = option(100, "Linear warm-up steps.")
    weight_decay: float = option(0.0, "AdamW weight decay (never on norms, biases, tables).")
    betas: tuple[float, float] = option(
        (0.9, 0.95),
        "AdamW betas, 'b1,b2'.",
        cli_type=str,
        parse=lambda text: tuple(float(b) for b in str(text).split(",")),
    )
    grad_clip: float = option(1.0, "Gradient norm clip (0 = off).")
    precision: Precision = option("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16.")
    compile: bool = option(False, "torch.compile the model.")
    compile_attention: bool = option(
        False,
        "torch.compile only the decoder's FAVOR+ attention cores (fuses the feature map's "
        "element-wise work over 19,266 positions; 2.2x faster forward + backward on CPU).",
    )
    redraw_every: int = option(
        1000,
        "FAVOR+ projections redrawn every N training forwards (official 1,000; 0 = never).",
    )
    seed: int = option(0, "Seed of initialisation and the RDA randomness.")
    log_every: int = option(10, "Log throughput and lr every N steps.")
    val_every: int = option(100, "Validate every N steps.")
    checkpoint_every: int = option(200, "Checkpoint every N steps.")
    keep_checkpoints: int = option(2, "Checkpoints kept per run.")


@dataclass
class ScaleArgs:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = option(1, "Ray Train workers.")
    use_gpu: bool = option(False, "One GPU per worker.")
    cpus_per_worker: float = option(1.0, "CPUs per worker (fractions leave CPUs to Ray Data).")
    strategy: Strategy = option("ddp", "ddp, or fsdp (shards parameters; GPUs only).")


@dataclass
class TrackingArgs:
    """MLflow conventions for the run."""

    experiment: str = option("pretrain", "MLflow experiment.")
    run_name: str | None = option(None, "MLflow run name (default: the Ray Train run name).")
    register_as: str | None = option(
        "scfm-pretrained", "Model registry name for the final model (null: don't register)."
    )


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs, serializable to YAML."""

    model: str = option("tiny", "Model preset: tiny, 3m, 10m, 100m.")
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    scale: ScaleArgs = field(default_factory=ScaleArgs)
    tracking: TrackingArgs = field(default_factory=TrackingArgs)
    name: str | None = option(
        None,
        "Ray Train run name (a folder under storage_path; default pretrain-<model>-<time>); "
        "re-using an existing run's name continues it.",
    )
    storage_path: str = option("results/ray", "Local path or URI for checkpoints.")

    def with_run_name(self) -> PretrainConfig:
        """This config with ``name`` filled in (a fresh, time-stamped run unless one is set)."""
        if self.name:
            return self
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return dataclasses.replace(self, name=f"pretrain-{self.model}-{stamp}")

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_name(self.model, **self.model_overrides)

    @property
    def grad_accum_steps(self) -> int:
        per_step = self.data.micro_batch_size * self.scale.num_workers
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.train.global_batch_size} is not a multiple of "
                f"micro_batch_size × num_workers = {per_step}"
            )
        return self.train.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        d = self.to_dict()
        d["train"]["betas"] = list(d["train"]["betas"])
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        return _build(cls, d, "")

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: list[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> PretrainConfig:
        """Defaults ← YAML file ← ``options`` (a nested dict, e.g. from command-line options)
        ← ``section.key=value`` overrides (values parsed as YAML)."""
        d: dict[str, Any] = {}
        if path is not None:
            d = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(d, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
        _merge(d, options or {})
        _merge(d, parse_overrides(overrides or []))
        cfg = cls.from_dict(d)
        cfg.model_config()  # fail early on unknown presets / fields
        return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", …]`` → ``{"train": {"lr": 3e-4}}`` (values parsed as YAML)."""
    d: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        node = d
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return d


def merge_options(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in (nested dicts merged key by key); a new dict."""
    out = copy.deepcopy(base)
    _merge(out, extra)
    return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    """Recursively build nested dataclasses, refusing unknown keys with their dotted path."""
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields_by_name)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(where + k for k in unknown)}; "
            f"valid keys here: {sorted(fields_by_name)}"
        )
    kwargs = {}
    defaults = cls()
    for name, value in d.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _build(type(current), value, f"{where}{name}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        else:
            value = _coerce(current, value, where + name)
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(default: Any, value: Any, key: str) -> Any:
    """Numbers written like ``3e-4`` are strings to YAML 1.1: convert to the field's type."""
    if isinstance(default, bool) or default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int | str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config key {key}: expected a number, got {value!r}") from None
    if isinstance(default, int) and isinstance(value, str):
        try:
            return int(float(value)) if float(value).is_integer() else value
        except ValueError:
            raise ValueError(f"config key {key}: expected an integer, got {value!r}") from None
    return value
