"""Labelled AnnData for downstream tasks: counts, labels, and the train / test split.

Every annotation method (scfm heads and baselines) sees the **same** :class:`Split`:

* ``--split-key COL --train-value X [--train-value X2 …] [--test-value Y …]``: train on cells
  whose ``obs[COL]`` is one of the training values, test on the test values (default: every other
  value), e.g. control → stimulated, or some donors → others. This is the out-of-distribution
  setting critics ask for.
* ``--split-key donor --test-groups 3``: a grouped hold-out, as single-cell papers evaluate: 3
  values of the column, drawn with ``seed``, hold the test cells; every other value trains.
* otherwise a stratified random split (``test_size``); classes with a single cell stay in train.

A validation subset of the training cells (stratified, ``val_size``) is held out for the methods
that select a model (early stopping, Ray Tune); methods without model selection fit on all
training cells. Validation cells are never test cells.

Real-world label columns are messy:

* **missing labels** (NaN, empty, ``"nan"``, ``"None"``, ``"NA"``) are dropped and counted;
* **rare classes** (fewer than ``min_class_cells`` training cells) are kept in training, and their
  test cells count towards accuracy, but they are excluded from macro-F1 and flagged ``rare`` in the
  class table: F1 over a handful of cells is noise that would dominate a macro average;
* **unseen classes** (test cells of a class absent from training) count towards accuracy (no
  method can predict them) and are flagged ``unseen``; they are not in macro-F1 either.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

MISSING_LABELS = frozenset({"", "nan", "none", "na", "n/a", "null"})


class LabelError(ValueError):
    """The label or split column cannot be used; the message names the fix."""


@dataclass(frozen=True)
class SplitConfig:
    """How cells are divided into train / validation / test."""

    split_key: str | None = None  # obs column for an out-of-distribution split
    # value(s) of split_key for training cells (a string or a tuple of strings)
    train_value: str | tuple[str, ...] | None = None
    # value(s) for test cells; None = every value but the training values
    test_value: str | tuple[str, ...] | None = None
    test_groups: int | None = None  # grouped hold-out: this many split_key values, seeded, test
    test_size: float = 0.3  # fraction of cells for testing in a random split
    val_size: float = 0.15  # fraction of training cells held out for model selection
    min_class_cells: int = 5  # classes with fewer training cells are "rare"
    seed: int = 0


@dataclass
class Split:
    """Row indices of one split; ``val`` is a subset of ``train``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: str
    config: SplitConfig = field(default_factory=SplitConfig)

    @property
    def train_only(self) -> np.ndarray:
        """Training cells minus the validation cells (what model-selecting methods fit on)."""
        return np.setdiff1d(self.train, self.val, assume_unique=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "n_train": int(self.train.size),
            "n_val": int(self.val.size),
            "n_test": int(self.test.size),
            "config": asdict(self.config),
        }


@dataclass
class LabelledData:
    """Counts, labels and metadata of the cells kept for a task.

    Attributes
    ----------
    counts
        Cells × input genes CSR raw counts (float32), in the file's gene order.
    var_names
        The input gene ids (symbols or Ensembl ids).
    obs
        Metadata of the kept cells (index = cell names).
    labels
        ``(n_cells,)`` string labels.
    n_missing_labels
        Cells dropped because their label was missing.
    source
        Where the data came from (path), for reports.
    """

    counts: sp.csr_matrix
    var_names: np.ndarray
    obs: pd.DataFrame
    labels: np.ndarray
    n_missing_labels: int = 0
    source: str = ""

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    def to_anndata(self):
        """An AnnData of the kept cells (counts in X), for ``scfm.inference.embed``."""
        import anndata as ad

        return ad.AnnData(
            X=self.counts, obs=self.obs.copy(), var=pd.DataFrame(index=self.var_names)
        )


def is_missing(values: pd.Series) -> np.ndarray:
    """True where a label is NaN/None or a conventional missing-value string."""
    text = values.astype("string").str.strip().str.lower()
    return (values.isna() | text.isna() | text.isin(MISSING_LABELS)).to_numpy(dtype=bool)


def labelled_data(adata, label_key: str, *, source: str = "") -> LabelledData:
    """Select the labelled cells of an AnnData (counts already in ``X``).

    Raises
    ------
    LabelError
        ``label_key`` is not an obs column (the message lists the columns), or no cell is
        labelled, or only one class remains.
    """
    if label_key not in adata.obs.columns:
        raise LabelError(
            f"label column {label_key!r} is not in obs; obs columns are: "
            f"{', '.join(map(str, adata.obs.columns)) or 'none'}"
        )
    missing = is_missing(adata.obs[label_key])
    keep = np.flatnonzero(~missing)
    if keep.size == 0:
        raise LabelError(f"every cell's {label_key!r} label is missing: nothing to train on")
    labels = adata.obs[label_key].astype(str).str.strip().to_numpy()[keep]
    if np.unique(labels).size < 2:
        raise LabelError(
            f"{label_key!r} has a single class ({labels[0]!r}) among labelled cells: "
            "annotation needs at least two"
        )
    if missing.any():
        logger.warning("dropped %d cells with a missing %r label", int(missing.sum()), label_key)
    X = adata.X
    X = X[keep] if sp.issparse(X) else np.asarray(X)[keep]
    counts = sp.csr_matrix(X, dtype=np.float32)
    counts.sort_indices()
    obs = adata.obs.iloc[keep].copy()
    return LabelledData(
        counts=counts,
        var_names=np.asarray(adata.var_names, dtype=str),
        obs=obs,
        labels=labels,
        n_missing_labels=int(missing.sum()),
        source=source,
    )


def load_labelled_h5ad(
    path: str | Path,
    label_key: str,
    *,
    layer: str | None = None,
    normalized_input: bool = False,
    total_counts_key: str | None = None,
):
    """Read an h5ad, validate its counts and select the labelled cells.

    Parameters
    ----------
    path
        The ``.h5ad`` file (10x inputs carry no labels).
    label_key
        obs column with the cell labels.
    layer
        Layer with raw counts (``"raw"`` = ``adata.raw.X``); default ``X``.
    normalized_input
        Opt-in fallback for files that hold only ``log1p(counts / total · s)`` values: raw counts
        are reconstructed with :func:`scfm.tasks.normalized.reconstruct_counts` (needs
        ``total_counts_key``). Without it such files stop with the validation error.
    total_counts_key
        obs column with each cell's total count (needed by ``normalized_input``).

    Returns
    -------
    data : LabelledData
    validation : ValidatedInput
        The validation report and gene mapping of the kept cells.
    """
    from scfm.data.io import read_counts
    from scfm.data.validate import validate_anndata
    from scfm.tasks.normalized import reconstruct_counts

    adata = read_counts(path, layer=layer)
    if normalized_input:
        if not total_counts_key:
            raise LabelError(
                "normalized_input needs each cell's total count: pass total_counts_key "
                "(e.g. --total-counts-key n_counts), the obs column of UMIs per cell"
            )
        if total_counts_key not in adata.obs.columns:
            raise LabelError(
                f"total counts column {total_counts_key!r} is not in obs; obs columns are: "
                f"{', '.join(map(str, adata.obs.columns))}"
            )
        adata.X, info = reconstruct_counts(
            adata.X, adata.obs[total_counts_key].to_numpy(dtype=np.float64)
        )
        adata.uns["scfm_counts_reconstruction"] = info.to_dict()
        logger.warning("reconstructed counts from normalized input: %s", info)
    data = labelled_data(adata, label_key, source=str(path))
    validation = validate_anndata(data.to_anndata())
    return data, validation


class LabelledTaskConfig(Protocol):
    """The input fields :class:`~scfm.tasks.evaluate.EvaluateConfig` and the fine-tuning config
    share."""

    h5ad: str
    label_key: str
    layer: str | None
    normalized_input: bool
    total_counts_key: str | None
    dataset: str | None
    split: SplitConfig


@dataclass
class LabelledTask:
    """A labelled, validated h5ad with its split and class table."""

    data: LabelledData
    validation: Any  # scfm.data.validate.ValidatedInput
    dataset: str  # name in tables and run tags
    split: Split
    classes: pd.DataFrame

    def __iter__(self):
        """``data, validation, dataset, split, classes = task``."""
        return iter((self.data, self.validation, self.dataset, self.split, self.classes))


def load_labelled_task(cfg: LabelledTaskConfig) -> LabelledTask:
    """Read and validate ``cfg.h5ad``, then split it by ``cfg.split``."""
    data, validation = load_labelled_h5ad(
        cfg.h5ad,
        cfg.label_key,
        layer=cfg.layer,
        normalized_input=cfg.normalized_input,
        total_counts_key=cfg.total_counts_key,
    )
    split = make_split(data, cfg.split)
    return LabelledTask(
        data,
        validation,
        cfg.dataset or Path(cfg.h5ad).stem,
        split,
        class_table(data.labels, split),
    )


# ----------------------------------------------------------------------------------- splitting
def make_split(data: LabelledData, cfg: SplitConfig) -> Split:
    """The train / validation / test split of ``data`` (deterministic given ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    n = data.n_cells
    if cfg.split_key is not None:
        train, test, description = _split_by_column(data.obs, cfg)
    else:
        if not 0 < cfg.test_size < 1:
            raise LabelError(f"test_size must be in (0, 1), got {cfg.test_size}")
        train, test = _stratified(np.arange(n), data.labels, cfg.test_size, rng)
        description = f"stratified random, {cfg.test_size:.0%} test (seed {cfg.seed})"
    if train.size == 0 or test.size == 0:
        raise LabelError(f"empty split ({train.size} train / {test.size} test cells)")
    if np.unique(data.labels[train]).size < 2:
        raise LabelError("the training cells hold a single class: choose another split")
    val = np.sort(_stratified(train, data.labels[train], cfg.val_size, rng)[1])
    return Split(
        train=np.sort(train), val=val, test=np.sort(test), description=description, config=cfg
    )


def _as_values(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _split_by_column(obs: pd.DataFrame, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray, str]:
    key = cfg.split_key
    if key not in obs.columns:
        raise LabelError(
            f"split column {key!r} is not in obs; obs columns are: "
            f"{', '.join(map(str, obs.columns))}"
        )
    values = obs[key].astype(str).to_numpy()
    present = sorted(set(values))
    train_values, test_values = _as_values(cfg.train_value), _as_values(cfg.test_value)
    if cfg.test_groups is not None:
        return _grouped_holdout(values, present, cfg, train_values, test_values)
    if not train_values:
        raise LabelError(
            f"split by {key!r} needs a training value (--train-value, repeatable) or a grouped "
            f"hold-out (--test-groups N); values are: {', '.join(present)}"
        )
    for v in train_values + test_values:
        if v not in present:
            raise LabelError(f"{key!r} has no value {v!r}; values are: {', '.join(present)}")
    both = sorted(set(train_values) & set(test_values))
    if both:
        raise LabelError(f"{key!r} values {_quoted(both)} are both training and test values")
    train = np.flatnonzero(np.isin(values, train_values))
    if not test_values:
        test = np.flatnonzero(~np.isin(values, train_values))
        desc = f"{key}: train {_quoted(train_values)}, test every other value"
    else:
        test = np.flatnonzero(np.isin(values, test_values))
        desc = f"{key}: train {_quoted(train_values)} → test {_quoted(test_values)}"
    return train, test, desc


def _grouped_holdout(
    values: np.ndarray,
    present: list[str],
    cfg: SplitConfig,
    train_values: tuple[str, ...],
    test_values: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, str]:
    """``cfg.test_groups`` values of the split column, drawn with ``cfg.seed``, are the test set."""
    key, k = cfg.split_key, cfg.test_groups
    if train_values or test_values:
        raise LabelError(
            "--test-groups draws the test groups itself: drop --train-value / --test-value"
        )
    if not 0 < k < len(present):
        raise LabelError(
            f"--test-groups must be between 1 and {len(present) - 1} ({key!r} has "
            f"{len(present)} values: {', '.join(present)}), got {k}"
        )
    # its own generator, so that the validation draw below is the same as with explicit values
    rng = np.random.default_rng([cfg.seed, len(present), k])
    held_out = sorted(rng.choice(np.asarray(present, dtype=object), size=k, replace=False))
    test_mask = np.isin(values, held_out)
    desc = (
        f"{key}: {k} of {len(present)} groups held out for test (seed {cfg.seed}): "
        f"{_quoted(held_out)}"
    )
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask), desc


def _stratified(
    idx: np.ndarray, labels: np.ndarray, frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` so each class puts ``round(frac · n)`` cells in the second part.

    A class keeps at least one cell in the first part (a class of one stays there).
    """
    first, second = [], []
    for cls in np.unique(labels):
        members = idx[labels == cls]
        members = members[rng.permutation(members.size)]
        k = min(int(round(frac * members.size)), members.size - 1)
        second.append(members[:k])
        first.append(members[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


# --------------------------------------------------------------------------------- class table
def class_table(
    labels: np.ndarray, split: Split, min_class_cells: int | None = None
) -> pd.DataFrame:
    """Per class: cells in train / test and whether the class counts in macro-F1.

    ``status`` is ``ok`` (scored), ``rare`` (fewer than ``min_class_cells`` training cells),
    ``unseen`` (no training cells) or ``not in test``.
    """
    m = split.config.min_class_cells if min_class_cells is None else min_class_cells
    classes = np.unique(labels)
    n_train = pd.Series(labels[split.train]).value_counts()
    n_test = pd.Series(labels[split.test]).value_counts()
    rows = []
    for c in classes:
        tr, te = int(n_train.get(c, 0)), int(n_test.get(c, 0))
        status = "unseen" if tr == 0 else "rare" if tr < m else "not in test" if te == 0 else "ok"
        rows.append({"class": c, "n_train": tr, "n_test": te, "status": status})
    return pd.DataFrame(rows)


def scored_classes(table: pd.DataFrame) -> list[str]:
    """The classes macro-F1 averages over (status ``ok``)."""
    return table.loc[table["status"] == "ok", "class"].tolist()
