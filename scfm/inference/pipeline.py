"""The one inference pipeline behind embed, gene embeddings and enhancement.

    AnnData or PreparedInput ──prepare (validate + map genes, once)──┐
    model spec ──load_model──► ModelInfo (official or scfm)          │
                 resolve_settings(preset, overrides) ────────────────┤
                                                                      ▼
                                InferenceRun: engine + blocks(depth_total) + record()

Each public function (:func:`scfm.embed`, :func:`scfm.gene_embeddings`, :func:`scfm.enhance`)
starts a run, loops over its blocks, and stores :meth:`InferenceRun.record` next to the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scfm import __version__
from scfm.data.prepared import DEFAULT_BLOCK_ROWS, ModelBlock, PreparedInput, prepare
from scfm.data.validate import DEFAULT_MIN_MAPPED_FRACTION
from scfm.inference.engine import InferenceEngine, TargetDepth
from scfm.inference.handle import Model
from scfm.inference.loading import ModelInfo, load_model_with_info, plain_types
from scfm.inference.settings import AUTO, InferenceSettings, resolve_settings
from scfm.model.xtrimogene import XTrimoGene

ModelSpec = XTrimoGene | Model | str | Path


@dataclass
class InferenceRun:
    """A prepared input, a model on its device and the resolved settings of one call."""

    prepared: PreparedInput
    engine: InferenceEngine
    info: ModelInfo
    settings: InferenceSettings

    def blocks(
        self, rows: np.ndarray | None = None, block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[ModelBlock]:
        """Model-input blocks of all cells (or the sorted ``rows``)."""
        return self.prepared.blocks(self.settings.depth_total, rows, block_rows)

    def depth(self, rows: np.ndarray | slice) -> TargetDepth:
        """The target depth for input rows ``rows`` (per-cell arrays are sliced)."""
        spec = self.settings.target_depth
        return spec[rows] if isinstance(spec, np.ndarray) else spec

    def record(self, **call: Any) -> dict[str, Any]:
        """What ``uns["scfm"][key]`` records: model, every setting, input and gene mapping."""
        info = self.info
        return plain_types(
            {
                "scfm_version": __version__,
                "model": {
                    "name": info.name,
                    "source": info.source,
                    "kind": info.kind,
                    "version": info.version,
                    "variant": info.variant,
                    "config": info.config,
                },
                "settings": {
                    **self.settings.record(),
                    "layer": self.prepared.layer or "X",
                    **call,
                    "device": str(self.engine.device),
                    "precision": self.engine.precision,
                },
                **self.prepared.record(),
            }
        )


def start_run(
    data,
    model: ModelSpec,
    *,
    variant: str,
    layer: str | None = None,
    pre_normalized: Any = None,
    total_counts_key: str = "total_counts",
    settings: str = "auto",
    target_depth: Any = AUTO,
    depth_total: str = AUTO,
    precision: str = AUTO,
    gene_matching: str = AUTO,
    device: str | torch.device = "auto",
    min_mapped_fraction: float = DEFAULT_MIN_MAPPED_FRACTION,
) -> InferenceRun:
    """Prepare the input (unless it already is a :class:`PreparedInput`), load the model,
    resolve the settings."""
    if isinstance(data, PreparedInput):
        prepared = data
        if gene_matching not in (AUTO, prepared.gene_matching):
            raise ValueError(
                f"the input was prepared with gene_matching={prepared.gene_matching!r}; "
                f"prepare it again to use {gene_matching!r}"
            )
    else:
        prepared = prepare(
            data,
            layer=layer,
            pre_normalized=pre_normalized,
            gene_matching="standard" if gene_matching == AUTO else gene_matching,  # type: ignore[arg-type]
            total_counts_key=total_counts_key,
            min_mapped_fraction=min_mapped_fraction,
        )
    if isinstance(target_depth, np.ndarray) and target_depth.shape != (prepared.n_obs,):
        raise ValueError(
            f"per-cell target_depth has shape {target_depth.shape}; give one value per cell "
            f"of the input ({prepared.n_obs})"
        )
    net, info = load_model_with_info(model, device=device, variant=variant)
    resolved = resolve_settings(
        settings,  # type: ignore[arg-type]
        official_model=info.kind == "official",
        target_depth=target_depth,
        depth_total=depth_total,
        precision=precision,
        gene_matching=prepared.gene_matching,
        pre_normalized=prepared.mode,
    )
    engine = InferenceEngine(net, device=device, precision=resolved.precision)
    return InferenceRun(prepared, engine, info, resolved)


def store_record(adata, key: str, record: Mapping[str, Any]) -> None:
    """``adata.uns["scfm"][key] = record`` (other keys kept)."""
    current = adata.uns.get("scfm")
    store = dict(current) if isinstance(current, Mapping) else {}
    store[key] = dict(record)
    adata.uns["scfm"] = store
