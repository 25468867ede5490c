"""``scfm corpus build|refresh``: the corpus job from the command line.

Register in ``scfm/cli.py`` with ``app.add_typer(corpus_app, name="corpus")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from scfm.corpus.manifest import Manifest

corpus_app = typer.Typer(
    help="Build and refresh the training corpus (sparse parquet shards + manifest).",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 140)

CensusVersion = Annotated[str | None, typer.Option(help="Pinned Census release, e.g. 2025-01-30.")]
CensusUri = Annotated[str | None, typer.Option(help="A Census-shaped SOMA store (path/URI).")]
ObsFilter = Annotated[
    str | None,
    typer.Option(help="Extra Census obs value filter, e.g. \"tissue_general == 'blood'\"."),
]
H5ad = Annotated[list[Path] | None, typer.Option("--h5ad", help=".h5ad file (repeatable).")]
TenX = Annotated[
    list[Path] | None, typer.Option("--tenx", help="10x MEX directory or .h5 (repeatable).")
]
Dirs = Annotated[
    list[Path] | None, typer.Option("--dir", help="Directory of .h5ad / 10x inputs (repeatable).")
]


def _sources(census_version, census_uri, obs_filter, h5ad, tenx, dirs):
    from scfm.corpus.sources import CensusSource, DirectorySource, H5ADSource, TenXSource

    sources = []
    if census_version or census_uri:
        sources.append(
            CensusSource(census_version=census_version, uri=census_uri, obs_value_filter=obs_filter)
        )
    if h5ad:
        sources.append(H5ADSource(paths=[str(p) for p in h5ad]))
    if tenx:
        sources.append(TenXSource(paths=[str(p) for p in tenx]))
    for i, d in enumerate(dirs or []):
        sources.append(DirectorySource(root=str(d), name="dir" if i == 0 else f"dir{i}"))
    return sources


def _run(refresh: bool, sources, options: dict) -> None:
    from scfm.cli_options import build_config
    from scfm.corpus.build import BuildConfig, summary_rows
    from scfm.corpus.build_report import build_and_log

    if not sources and refresh:
        sources = _sources_from_last_manifest(options["output"])
    if not sources:
        raise typer.BadParameter(
            "give at least one source: --census-version/--census-uri, --h5ad, --tenx or --dir"
        )
    try:
        cfg = build_config(BuildConfig, options, sources=sources, refresh=refresh)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from scfm.corpus.lease import EXIT_LOCKED, LeaseHeldError

    try:
        result = build_and_log(cfg)
    except LeaseHeldError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=EXIT_LOCKED) from None
    print_summary(result.manifest, summary_rows(result.manifest))
    if not result.committed:
        console.print(
            f"[green]corpus v{result.manifest.corpus_version} is up to date[/green]: the refresh "
            "found nothing to do and committed no new version"
        )
    console.print(
        f"manifest: {result.manifest_path}  ({result.seconds:.1f} s"
        + (
            f", {'' if result.committed else 'built by '}MLflow run {result.mlflow_run_id}"
            if result.mlflow_run_id
            else ""
        )
        + ")"
    )
    if result.mlflow_error:
        console.print(
            f"[yellow]committed; logging to MLflow failed ({result.mlflow_error[:200]}): the "
            "corpus is complete, its MLflow run may be incomplete[/yellow]"
        )
    if result.manifest.failed:
        console.print(
            f"[red]{len(result.manifest.failed)} data set(s) failed for infrastructure reasons "
            "(see 'failed (retry)' rows); the next run retries them[/red]"
        )
    elif result.exit_code:
        console.print("[red]--strict: inputs were quarantined[/red]")
    raise typer.Exit(code=result.exit_code)


def _sources_from_last_manifest(output: str):
    from scfm.corpus.manifest import load_manifest
    from scfm.corpus.shards import resolve
    from scfm.corpus.sources import source_from_config

    fs, root = resolve(output)
    man = load_manifest(fs, root)
    if man is None:
        return []
    return [source_from_config(s.config) for s in man.sources]


def print_summary(manifest: Manifest, rows: list[dict], out: Console | None = None) -> None:
    """The per-data-set summary table of a build (and the change counts vs the last version)."""
    out = out or console
    t = manifest.totals
    table = Table(title=f"corpus v{manifest.corpus_version} ({manifest.kind})")
    for col, just in (
        ("source", "left"),
        ("dataset", "left"),
        ("status", "left"),
        ("in", "right"),
        ("kept", "right"),
        ("dropped", "right"),
        ("genes mapped", "right"),
        ("shards", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        table.add_row(
            r["source"],
            r["dataset"][:40],
            r["status"],
            f"{r['in']:,}",
            f"{r['kept']:,}",
            f"{r['dropped']:,}",
            r["genes_mapped"],
            str(r["shards"]),
            r["note"],
        )
    table.add_section()
    table.add_row(
        "total",
        f"{t['n_datasets']} data sets",
        f"{t['n_quarantined']} quarantined",
        f"{t['n_cells_in']:,}",
        f"{t['n_cells_kept']:,}",
        f"{t['n_cells_in'] - t['n_cells_kept']:,}",
        "",
        str(t["n_shards"]),
        ", ".join(f"{k} {v:,}" for k, v in t["dropped"].items() if v),
    )
    out.print(table)
    ch = manifest.changes
    out.print(", ".join(f"{k}: {len(v)}" for k, v in ch.items()))


def _command(refresh: bool, doc: str):
    """``scfm corpus build`` and ``scfm corpus refresh``: the same options, one flag apart; every
    option but the sources comes from :class:`~scfm.corpus.build.BuildConfig`."""
    from scfm.cli_options import config_command
    from scfm.corpus.build import BuildConfig

    def command(
        options: dict,
        census_version: CensusVersion = None,
        census_uri: CensusUri = None,
        obs_filter: ObsFilter = None,
        h5ad: H5ad = None,
        tenx: TenX = None,
        dirs: Dirs = None,
    ) -> None:
        _run(refresh, _sources(census_version, census_uri, obs_filter, h5ad, tenx, dirs), options)

    return config_command(command, BuildConfig, skip={"sources", "refresh"}, doc=doc)


build = corpus_app.command("build")(
    _command(False, "Build a new corpus version from the given sources.")
)
refresh = corpus_app.command("refresh")(
    _command(
        True,
        """Process only new or changed data sets; retire removed ones; commit a new version.

    Without source options, the sources of the newest manifest are used.
    """,
    )
)
