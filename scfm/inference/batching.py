"""Length-sorted batches: cells of similar length go together, so a batch pads little.

Within a block (:mod:`scfm.data.prepared`), cells are sorted by their number of nonzero genes
and cut into batches; results are written back in the original order.
"""

from __future__ import annotations

import numpy as np


def length_sorted_batches(
    lengths: np.ndarray, batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Cut cells into batches of similar length, longest first.

    Parameters
    ----------
    lengths
        ``(n,)`` tokens per cell.
    batch_size
        Most cells per batch.
    max_tokens
        Optional cap on ``cells × longest length`` per batch (padded tokens), so batches of long
        cells get fewer cells; a single cell longer than the cap still forms its own batch.

    Returns
    -------
    list of np.ndarray
        Index arrays into ``lengths``; together a permutation of ``range(n)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    # descending, stable: the first batch is the largest, so memory trouble shows up at once
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    i = 0
    n = order.size
    while i < n:
        j = min(i + batch_size, n)
        if max_tokens is not None:
            longest = max(int(lengths[order[i]]), 1)
            j = min(j, i + max(1, max_tokens // longest))
        batches.append(order[i:j])
        i = j
    return batches
