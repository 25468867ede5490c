"""Downstream tasks on scfm embeddings, with honest baselines.

* :mod:`~scfm.tasks.base` — the fine-tuning framework: a head (small torch module) + a data module,
  one plain-torch training loop, self-describing head checkpoints;
* :mod:`~scfm.tasks.tune` — Ray Tune sweeps (ASHA, MLflow parent/child runs, best head registered);
* :mod:`~scfm.tasks.annotation` — the cell-type annotation head (MLP on cell embeddings, or on the
  last encoder layers fine-tuned);
* :mod:`~scfm.tasks.baselines` — LR on PCA, LR on all genes (CellTypist-style), kNN, scVI + LR;
* :mod:`~scfm.tasks.evaluate` — ``scfm evaluate annotation``: every method on one split, tables,
  plots and an MLflow run; :mod:`~scfm.tasks.finetune` — ``scfm finetune annotation``;
* :mod:`~scfm.tasks.embedding_eval` — ``scfm evaluate embedding`` / :func:`evaluate_embedding`:
  zero-shot embeddings vs HVG/PCA and scVI, scored with the scIB metrics (:mod:`~scfm.tasks.scib`);
* :mod:`~scfm.tasks.gene_modules` — gene modules from context gene embeddings, gene-set enrichment;
* :mod:`~scfm.tasks.labelled`, :mod:`~scfm.tasks.metrics`, :mod:`~scfm.tasks.models`,
  :mod:`~scfm.tasks.normalized`, :mod:`~scfm.tasks.plots` — shared pieces.

Ray, MLflow and scikit-learn are imported inside functions: importing a module here is cheap.
``scfm.tasks.evaluate_embedding`` loads its module on first use.
"""

from __future__ import annotations

from scfm import _lazy

_lazy.install(__name__, {"evaluate_embedding": "scfm.tasks.embedding_eval"})
