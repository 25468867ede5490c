"""Cell annotation: macro-F1 and wall time of scfm vs every baseline on the shared data sets.

Data sets and splits (the same split for every method):

* Kang 2018 PBMC: train on control cells, test on IFN-β-stimulated cells (out of distribution);
* pbmc68k_reduced: stratified random split, 30 % test.

Methods: the baselines of ``scfm.tasks.baselines`` (LR on PCA(50) of HVGs, LR on all genes,
kNN on PCA, scVI latent + LR when scvi-tools is installed) and, for every available scfm model,
an MLP head and a linear probe on its frozen cell embeddings. No pretrained scfm weights exist on
a CPU machine, so the models are the tiny preset with random weights (the control) and the tiny
preset briefly pretrained in this process with the RDA objective on the cells of both data sets
(labels never used). Rows are labelled accordingly; read them as a check of the machinery, not
as the foundation model's quality.

    python benchmarks/annotation.py                       # ~10-20 min on 2 shared CPU cores
    python benchmarks/annotation.py --pretrain-steps 20 --scvi-epochs 20   # quick look

Prints one table per data set with macro-F1 / accuracy / seconds and each method's macro-F1
relative to LR on PCA measured in the same run; writes CSV and Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from scfm import datasets  # noqa: E402
from scfm.tasks.labelled import SplitConfig  # noqa: E402

DATASETS = {
    "kang2018 (ctrl→stim)": (
        "kang2018",
        "cell_type",
        SplitConfig(split_key="condition", train_value="control", test_value="stimulated"),
    ),
    "pbmc68k (random 30%)": ("pbmc68k_counts", "bulk_labels", SplitConfig(test_size=0.3)),
}
REFERENCE = "LR on PCA(50) of HVGs"


def pretrain_on_both(steps: int, batch_size: int, seed: int):
    """The tiny preset pretrained on Kang + pbmc68k cells (no labels) in this process."""
    import scipy.sparse as sp

    from scfm.data.genes import GeneVocab
    from scfm.data.io import read_counts
    from scfm.tasks.models import briefly_pretrain

    vocab = GeneVocab.load()
    blocks, totals = [], []
    for resource, _, _ in DATASETS.values():
        adata = read_counts(datasets.fetch(resource))
        blocks.append(vocab.map(adata.var_names).apply(adata.X))
        totals.append(np.asarray(adata.X.sum(axis=1)).ravel())
    start = time.perf_counter()
    backbone = briefly_pretrain(
        sp.vstack(blocks).tocsr(),
        np.concatenate(totals),
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        progress=True,
    )
    return backbone, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--scvi-epochs", type=int, default=100)
    parser.add_argument("--head-epochs", type=int, default=40)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (1 is fastest on a shared 2-core box)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks/annotation")
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from scfm.tasks.evaluate import EvaluateConfig, evaluate_annotation, markdown_table
    from scfm.tasks.models import Backbone, random_init, random_label

    torch.set_num_threads(args.threads)
    os.environ.setdefault(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    with threadpool_limits(limits=args.threads):
        trained, pretrain_s = pretrain_on_both(args.pretrain_steps, args.pretrain_batch, args.seed)
        print(
            f"pretrained {trained.label} in {pretrain_s:.0f} s "
            f"(masked MSE {trained.metadata['first_loss']:.3f} → "
            f"{trained.metadata['last_loss']:.3f})",
            flush=True,
        )
        control = random_init(trained.model.cfg, args.seed)
        backbones = [trained, Backbone(random_label(control.cfg), control, "random:tiny")]
        for name, (resource, label_key, split) in DATASETS.items():
            cfg = EvaluateConfig(
                h5ad=str(datasets.fetch(resource)),
                label_key=label_key,
                split=split,
                control=False,
                scvi_epochs=args.scvi_epochs,
                head={"max_epochs": args.head_epochs},
                dataset=name,
                output_dir=str(out / resource),
                mlflow=False,
                device="cpu",
            )
            start = time.perf_counter()
            result = evaluate_annotation(cfg, backbones=backbones)
            table = result.table.copy()
            ref = table.set_index("method").loc[REFERENCE]
            table["f1_vs_lr_pca"] = table["macro_f1"] / ref["macro_f1"]
            table["time_vs_lr_pca"] = table["seconds"] / ref["seconds"]
            tables.append(table)
            print(
                f"\n## {name} — {result.split.description}; {result.split.train.size} train / "
                f"{result.split.test.size} test cells ({time.perf_counter() - start:.0f} s)"
            )
            print(markdown_table(table))
            print(
                table[["method", "f1_vs_lr_pca", "time_vs_lr_pca"]].to_string(
                    index=False, float_format=lambda v: f"{v:.2f}"
                ),
                flush=True,
            )
    full = pd.concat(tables, ignore_index=True)
    full.to_csv(out / "annotation_benchmark.csv", index=False)
    md = [f"pretraining of {trained.label}: {pretrain_s:.0f} s", ""]
    for name, t in full.groupby("dataset", sort=False):
        md += [f"### {name}", "", markdown_table(t), ""]
    (out / "annotation_benchmark.md").write_text("\n".join(md))
    print(f"\nwrote {out / 'annotation_benchmark.csv'} and {out / 'annotation_benchmark.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
