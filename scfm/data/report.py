"""Mapping and validation reports over inputs: what ``scfm demo`` and ``scfm genes map`` show."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from scfm.data.genes import GeneVocab, MappingReport
from scfm.data.io import CorruptInputError, read_counts
from scfm.data.validate import InputValidationError, ValidationReport, validate_anndata

logger = logging.getLogger(__name__)


@dataclass
class InputSummary:
    """Mapping and validation outcome for one input (``error`` set when it was rejected)."""

    name: str
    path: str
    mapping_report: MappingReport | None = None
    validation_report: ValidationReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def mapping(self) -> dict:
        return self.mapping_report.to_dict() if self.mapping_report else {}

    @property
    def validation(self) -> dict:
        return self.validation_report.to_dict() if self.validation_report else {}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "ok": self.ok,
            "error": self.error,
            "mapping": self.mapping,
            "validation": self.validation,
        }

    def __str__(self) -> str:
        parts = [str(self.mapping_report)] if self.mapping_report else []
        if self.validation_report:
            parts.append(str(self.validation_report))
        parts.append("valid: raw counts, genes mapped" if self.ok else f"invalid: {self.error}")
        return "\n".join(parts)


def summarize_input(
    name: str,
    path: str | Path,
    *,
    layer: str | None = None,
    genome: str | None = None,
    backed: bool = False,
    vocab: GeneVocab | None = None,
    min_mapped_fraction: float | None = None,
) -> InputSummary:
    """Read, validate and map one input; validation errors are recorded, not raised."""
    summary = InputSummary(name=name, path=str(path))
    kwargs = {} if min_mapped_fraction is None else {"min_mapped_fraction": min_mapped_fraction}
    try:
        adata = read_counts(path, layer=layer, genome=genome, backed=backed)
        vocab = vocab or GeneVocab.load()
        # The mapping report is useful even when validation rejects the values.
        summary.mapping_report = vocab.map(adata.var_names).report
        summary.validation_report = validate_anndata(adata, vocab=vocab, **kwargs).report
    except (InputValidationError, CorruptInputError, ValueError, FileNotFoundError) as exc:
        summary.error = f"{type(exc).__name__}: {exc}"
    return summary


def mapping_table(summaries: list[InputSummary]):
    """A rich table with one row per input."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="Inputs mapped onto the 19,264-gene scFoundation vocabulary", box=box.SIMPLE_HEAD
    )
    for col in ("input", "cells", "genes", "direct", "ensembl", "alias", "unmapped", "mapped%"):
        table.add_column(col, justify="left" if col == "input" else "right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for s in summaries:
        m, v = s.mapping, s.validation
        cells = f"{v['n_cells']:,}" if v else "-"
        if m:
            nums = [
                f"{m['n_input']:,}",
                f"{m['n_direct']:,}",
                f"{m['n_ensembl']:,}",
                f"{m['n_alias']:,}",
                f"{m['n_unmapped']:,}",
                f"{100 * m['fraction_mapped']:.1f}",
            ]
        else:
            nums = ["-"] * 6
        status = "[green]ok[/green]" if s.ok else "[red]rejected[/red]"
        table.add_row(s.name, cells, *nums, status)
    return table


def plot_mapping(summaries: list[InputSummary], path: Path) -> Path:
    """Stacked bar chart of how each input's genes were mapped."""
    from scfm.plotting import pyplot

    plt = pyplot()

    rows = [s for s in summaries if s.mapping]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(rows)))
    left = [0.0] * len(rows)
    colors = {"direct": "#3b75af", "ensembl": "#519e3e", "alias": "#ef8636", "unmapped": "#c5c5c5"}
    for rule, color in colors.items():
        fr = [r.mapping[f"n_{rule}"] / max(r.mapping["n_input"], 1) for r in rows]
        ax.barh([r.name for r in rows], fr, left=left, color=color, label=rule)
        left = [a + b for a, b in zip(left, fr, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of input genes")
    ax.invert_yaxis()
    ax.legend(ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(summaries: list[InputSummary], out_dir: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``gene_mapping.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = [s.to_dict() for s in summaries]
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(payload, indent=2))
    lines = [
        "# Gene mapping and validation report",
        "",
        "| input | cells | genes | direct | ensembl | alias | unmapped | mapped % | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        m, v = s.mapping, s.validation
        cells = f"{v['n_cells']:,}" if v else "-"
        nums = (
            [f"{m[k]:,}" for k in ("n_input", "n_direct", "n_ensembl", "n_alias", "n_unmapped")]
            + [f"{100 * m['fraction_mapped']:.1f}"]
            if m
            else ["-"] * 6
        )
        status = "ok" if s.ok else f"rejected: {s.error}"
        lines.append(f"| {s.name} | {cells} | " + " | ".join(nums) + f" | {status} |")
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    png_path = plot_mapping(summaries, out_dir / "gene_mapping.png")
    return {"json": json_path, "markdown": md_path, "plot": png_path}
