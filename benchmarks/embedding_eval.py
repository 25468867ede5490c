"""Zero-shot embeddings: scIB metrics of scfm vs HVG/PCA (and scVI) on the bundled PBMC sets.

Data sets (every representation is scored on the same cells):

* Kang 2018 PBMC, ``--batch-key condition`` (control vs IFN-β-stimulated as the batch effect to
  remove), labels ``cell_type``: bio conservation, batch correction and the scIB total;
* pbmc68k_reduced (counts), labels ``bulk_labels``, no batch: bio conservation only.

Representations: PCA(50) of 2,000 HVGs (scaled), PCA(50) of all log-normalized genes, scVI
latent (when scvi-tools is installed), the tiny scfm preset briefly pretrained in this process
with the RDA objective on the cells of both data sets (labels never used; or the models given
with ``--model``), and a random-init model of the same architecture. No pretrained scfm weights
exist on a CPU machine: read the scfm rows as a check of the machinery, not of the foundation
model.

    python benchmarks/embedding_eval.py                      # ~10 min on 2 shared CPU cores
    python benchmarks/embedding_eval.py --model models:/scfm-pretrained/3
    python benchmarks/embedding_eval.py --pretrain-steps 20  # quick look

Prints one table per data set and the winner; writes CSV, Markdown and figures to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from scfm import datasets  # noqa: E402

DATASETS = {
    "kang2018 (batch: condition)": ("kang2018", "cell_type", "condition"),
    "pbmc68k (no batch)": ("pbmc68k_counts", "bulk_labels", None),
}
REFERENCE = "PCA(50) of HVGs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="scfm model spec (repeatable)")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--cells-per-batch", type=int, default=2000)
    parser.add_argument("--scvi-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks/embedding_eval")
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from scfm.tasks.embedding_eval import (
        EmbeddingEvalConfig,
        markdown_table,
        run_embedding_evaluation,
    )

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/embedding_eval.py " + " ".join(argv or sys.argv[1:])
    md = [f"measured {started}: `{command.strip()}`", ""]
    tables = []
    with threadpool_limits(limits=args.threads):
        backbones = []
        if not args.model:
            from benchmarks.annotation import pretrain_on_both

            trained, pretrain_s = pretrain_on_both(
                args.pretrain_steps, args.pretrain_batch, args.seed
            )
            line = (
                f"pretrained {trained.label} in {pretrain_s:.0f} s (masked MSE "
                f"{trained.metadata['first_loss']:.3f} → {trained.metadata['last_loss']:.3f})"
            )
            print(line, flush=True)
            md += [line, ""]
            backbones = [trained]
        for name, (resource, label_key, batch_key) in DATASETS.items():
            cfg = EmbeddingEvalConfig(
                label_key=label_key,
                batch_key=batch_key,
                models=list(args.model),
                cells_per_batch=args.cells_per_batch,
                scvi_epochs=args.scvi_epochs,
                seed=args.seed,
                dataset=name,
                output_dir=str(out / resource),
                mlflow=False,
                device="cpu",
            )
            start = time.perf_counter()
            result = run_embedding_evaluation(
                str(datasets.fetch(resource)), cfg, backbones=backbones
            )
            seconds = time.perf_counter() - start
            table = result.table
            tables.append(table)
            c = result.summary["cells"]
            reading = _reading(table, batch_key is not None)
            head = (
                f"## {name}: {c['n_cells_scored']:,} cells, {c['n_labels']} labels"
                + (f", {c['n_batches']} batches" if batch_key else "")
                + f" ({seconds:.0f} s in all)"
            )
            body = markdown_table(table, batch=batch_key is not None)
            print(f"\n{head}\n{body}\n{reading}", flush=True)
            md += [head, "", body, "", reading, ""]
    full = pd.concat(tables, ignore_index=True)
    full.to_csv(out / "embedding_benchmark.csv", index=False)
    (out / "embedding_benchmark.md").write_text("\n".join(md))
    print(f"\nwrote {out / 'embedding_benchmark.csv'} and {out / 'embedding_benchmark.md'}")
    return 0


def _reading(table: pd.DataFrame, batch: bool) -> str:
    """Who wins, by the total and by each half, and scfm's total relative to HVG/PCA."""
    best = {
        col: table.loc[table[col].idxmax(), "representation"]
        for col in (["total", "bio_conservation", "batch_correction"] if batch else ["total"])
    }
    ref = table.set_index("representation")["total"].get(REFERENCE)
    parts = [f"best total: **{best['total']}**"]
    if batch:
        parts += [
            f"best bio conservation: {best['bio_conservation']}",
            f"best batch correction: {best['batch_correction']}",
        ]
    if ref:
        for r in table[table.kind != "baseline"].itertuples():
            parts.append(f"{r.representation}: total {r.total / ref:.2f}× {REFERENCE}")
    return "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
