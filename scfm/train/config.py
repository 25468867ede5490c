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

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from scfm.model.config import ModelConfig
from scfm.model.rda import RDAConfig
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

    corpus: str = ""  # corpus directory / URI (a manifest.json beside the shards)
    micro_batch_size: int = 8  # cells per worker per forward
    max_train_cells: int | None = None  # cap the train split (smoke tests, scaling runs)
    val_cells: int = 256  # validation cells evaluated at each validation
    shuffle_seed: int = 0
    rda: RDAConfig = field(default_factory=RDAConfig)


@dataclass
class TrainArgs:
    """Optimization and bookkeeping; the official recipe is AdamW 1e-4, no decay, clip 1."""

    max_steps: int = 1000  # optimizer steps
    global_batch_size: int = 64  # cells per optimizer step over all workers (accumulation)
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: Precision = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model
    # FAVOR+ projection redrawn every N training forwards (micro-batches) of the decoder, as the
    # official Performer (feature_redraw_interval 1000); 0 = never
    redraw_every: int = 1000
    seed: int = 0
    log_every: int = 10
    val_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 2


@dataclass
class ScaleArgs:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # fractional is fine: leave CPUs for Ray Data tasks
    strategy: Strategy = "ddp"  # "fsdp" shards parameters for the large presets


@dataclass
class TrackingArgs:
    """MLflow conventions for the run."""

    experiment: str = "pretrain"
    run_name: str | None = None
    register_as: str | None = "scfm-pretrained"  # model registry name; None = don't register


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs, serializable to YAML."""

    model: str = "tiny"  # preset name (tiny, 3m, 10m, 100m)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    scale: ScaleArgs = field(default_factory=ScaleArgs)
    tracking: TrackingArgs = field(default_factory=TrackingArgs)
    # Ray Train run name, a directory under storage_path. None: "pretrain-<model>-<time>".
    # Re-using the name of an existing run continues that run from its last checkpoint.
    name: str | None = None
    storage_path: str = "results/ray"  # local path or cloud URI for checkpoints

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
        cls, path: str | Path | None = None, overrides: list[str] | None = None
    ) -> PretrainConfig:
        """Defaults ← YAML file ← ``section.key=value`` overrides (values parsed as YAML)."""
        d: dict[str, Any] = {}
        if path is not None:
            d = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(d, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form section.key=value")
            node = d
            *parents, leaf = key.strip().split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(raw)
        cfg = cls.from_dict(d)
        cfg.model_config()  # fail early on unknown presets / fields
        return cfg


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
