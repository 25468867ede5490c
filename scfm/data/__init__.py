"""The input layer every stage uses: read, validate, map genes, pack cells.

* :mod:`~scfm.data.io` — readers for h5ad, 10x MEX and 10x HDF5 (``read_counts``);
* :mod:`~scfm.data.validate` — count validation with errors that name the fix;
* :mod:`~scfm.data.genes` — the 19,264-gene vocabulary and the mapping of any gene list onto it;
* :mod:`~scfm.data.packed` — :class:`PackedCells`, the batch type of loader and model;
* :mod:`~scfm.data.prepared` — :func:`prepare` (validate + map an AnnData once) and the model-input
  blocks of every input mode;
* :mod:`~scfm.data.report` — the mapping / validation report of ``scfm genes map``.

The data layer imports no model, no Ray and no MLflow. Attributes load on first use, so
``import scfm.data`` stays cheap.
"""

from __future__ import annotations

from scfm import _lazy

_lazy.install(
    __name__,
    {
        "read_counts": "scfm.data.io",
        "InputValidationError": "scfm.data.validate",
        "validate_anndata": "scfm.data.validate",
        "GeneVocab": "scfm.data.genes",
        "GeneMapping": "scfm.data.genes",
        "PackedCells": "scfm.data.packed",
        "NormalizedCells": "scfm.data.packed",
        "prepare": "scfm.data.prepared",
        "PreparedInput": "scfm.data.prepared",
    },
)
