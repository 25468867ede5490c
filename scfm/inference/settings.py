"""How inputs become model inputs: named presets, explicit overrides, and what gets recorded.

Two presets:

``scfm``
    The cell's own depth as the target (T = S), totals over every input gene (as the corpus
    and pretraining use them), bf16 autocast on CUDA and fp32 on CPU.
``official``
    What the official scFoundation ``get_embedding.py`` does by default: T = 4 (``t4``), totals
    over the vocabulary genes only (the official script reindexes to the 19,264 genes before
    summing), fp32 everywhere.

``settings="auto"`` (the default) picks ``official`` for a model read from an official
``models.ckpt`` and ``scfm`` otherwise, and says so in the log. Any setting given explicitly
overrides the preset. Every resolved setting is recorded in ``adata.uns["scfm"][key]``.

Gene matching: ``standard`` (symbols case-insensitively, Ensembl ids, HGNC aliases; the default of
both presets) or ``exact`` (case-sensitive vocabulary names only, the official column selection).
The record says how many input genes the standard rules map beyond the exact names.

Input modes (``pre_normalized``; only raw counts may go undeclared):

``None`` / ``"F"``
    Raw counts; the model input is ``log1p(x / total · 1e4)``, S = log10(total).
``"T"``
    Already ``log1p``-normalized values, used as given; S = log10 of the row sum of the given
    values (the official script's rule, a sum of log values).
``"A"``
    Normalized values plus each cell's total count from an ``obs`` column (the official ``A``
    mode appends it as a last column; GEARS uses it); S = log10(total).
``"bulk"``
    Bulk RNA-seq (counts or TPM, any non-negative values): normalized to the median total
    across samples, ``log1p``, and T = S = log10 of the row sum of those values (the official
    ``--input_type bulk``); the target depth does not apply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scfm.data.prepared import DepthTotal, GeneMatching, InputMode, check_input_mode
from scfm.runtime import Precision

log = logging.getLogger(__name__)

SettingsPreset = Literal["auto", "scfm", "official"]
PoolPart = Literal["S", "T", "max", "mean", "max_all"]
POOL_PARTS: tuple[PoolPart, ...] = ("S", "T", "max", "mean")  # the official pool_type="all"
_KNOWN_PARTS: tuple[PoolPart, ...] = (*POOL_PARTS, "max_all")
AUTO = "auto"


PRESETS: dict[str, dict[str, Any]] = {
    "scfm": {
        "target_depth": None,
        "depth_total": "all_genes",
        "precision": "auto",
        "gene_matching": "standard",
    },
    "official": {
        "target_depth": "t4",
        "depth_total": "vocab_genes",
        "precision": "fp32",
        "gene_matching": "standard",
    },
}


@dataclass(frozen=True)
class InferenceSettings:
    """Resolved settings of one inference call (what :func:`resolve_settings` returns)."""

    preset: str
    target_depth: Any  # None (T = S), a log10 depth, 't4' / 'f10' / 'a1', or a per-cell array
    depth_total: DepthTotal
    precision: Precision
    gene_matching: GeneMatching
    pre_normalized: InputMode

    def record(self) -> dict[str, Any]:
        """Plain-type description for ``uns["scfm"]`` and MLflow params."""
        out = asdict(self)
        depth = self.target_depth
        if self.pre_normalized == "bulk":
            out["target_depth"] = "S (bulk)"
        elif depth is None:
            out["target_depth"] = "S"
        elif hasattr(depth, "shape") and getattr(depth, "ndim", 0) > 0:
            out["target_depth"] = f"per-cell ({len(depth)} values)"
        else:
            out["target_depth"] = str(depth)
        return out


def resolve_settings(
    settings: SettingsPreset = "auto",
    *,
    official_model: bool,
    target_depth: Any = AUTO,
    depth_total: DepthTotal | str = AUTO,
    precision: Precision | str = AUTO,
    gene_matching: GeneMatching | str = AUTO,
    pre_normalized: Any = None,
) -> InferenceSettings:
    """Fill every setting left at ``"auto"`` from the preset and check the rest.

    Parameters
    ----------
    settings
        ``auto`` (``official`` for an official checkpoint, else ``scfm``), ``scfm`` or
        ``official``.
    official_model
        Whether the model was read from an official scFoundation checkpoint.
    """
    if settings not in ("auto", "scfm", "official"):
        raise ValueError(f"settings must be 'auto', 'scfm' or 'official', got {settings!r}")
    preset = settings
    if preset == "auto":
        preset = "official" if official_model else "scfm"
        if official_model:
            log.info(
                "official scFoundation checkpoint: settings='official' (T = t4, totals over "
                "vocabulary genes, fp32), as the official get_embedding.py; pass settings='scfm' "
                "or explicit arguments to change"
            )
    base = PRESETS[preset]
    mode = check_input_mode(pre_normalized)
    depth_given = not (isinstance(target_depth, str) and target_depth == AUTO)
    if mode == "bulk" and depth_given and target_depth is not None:
        raise ValueError(
            "pre_normalized='bulk': T = S for bulk samples (as the official code); drop "
            "target_depth"
        )

    def pick(name: str, value: Any) -> Any:
        return base[name] if isinstance(value, str) and value == AUTO else value

    resolved = InferenceSettings(
        preset=preset,
        target_depth=None if mode == "bulk" else pick("target_depth", target_depth),
        depth_total=pick("depth_total", depth_total),
        precision=pick("precision", precision),  # scfm's "auto": bf16 on CUDA, fp32 on CPU
        gene_matching=pick("gene_matching", gene_matching),
        pre_normalized=mode,
    )
    for name, allowed in (
        ("depth_total", ("all_genes", "vocab_genes")),
        ("gene_matching", ("standard", "exact")),
        ("precision", ("auto", "fp32", "bf16")),
    ):
        if getattr(resolved, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(resolved, name)!r}")
    return resolved


def check_pool(pool: Sequence[str] | str) -> tuple[PoolPart, ...]:
    """Validate the pooled parts (order kept); a single string is one part."""
    parts = (pool,) if isinstance(pool, str) else tuple(pool)
    bad = [p for p in parts if p not in _KNOWN_PARTS]
    if not parts or bad or len(set(parts)) != len(parts):
        raise ValueError(
            f"pool must be a non-empty selection of {_KNOWN_PARTS} without repeats, got {pool!r}"
        )
    return parts  # type: ignore[return-value]
