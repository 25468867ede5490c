"""One-pass vocabulary mapping of a CSR block (numba): relabel, sort, sum collisions, QC sums.

Per row, each nonzero input gene is relabelled to its vocabulary index through a lookup table,
the row is sorted by a two-pass (8 + 8 bit) radix sort in scratch arrays of one row's size, and
equal labels (two input genes mapped onto one vocabulary gene) are summed. The same pass sums
what QC needs (counts over all input genes, expressed input genes, mitochondrial counts) and
counts the values that are not raw counts (negative, fractional, NaN or infinite). Linear
in nnz, output written once as the corpus dtypes (int16 indices, float32 counts); measured 4×
faster than the scipy sparse product + ``sort_indices`` it replaced (``docs/corpus.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

MAX_LABELS = 1 << 15  # int16 output indices; two 8-bit radix digits


@dataclass(frozen=True)
class RelabelledRows:
    """Rows on the new labels (CSR arrays, sorted, collisions summed) and per-row sums."""

    indptr: np.ndarray  # int64, n_rows + 1
    indices: np.ndarray  # int16 labels, sorted within each row
    data: np.ndarray  # float32
    total_counts: np.ndarray  # float64, all input columns
    n_nonzero_input: np.ndarray  # int64, nonzero input columns
    mito_counts: np.ndarray  # float64, input columns flagged mitochondrial
    n_invalid: int = 0  # values that are negative, fractional, NaN or infinite

    @property
    def n_labels_per_row(self) -> np.ndarray:
        return np.diff(self.indptr)

    def take_rows(self, keep: np.ndarray) -> RelabelledRows:
        """The rows where boolean ``keep`` is true."""
        if keep.all():
            return self
        lengths = self.n_labels_per_row
        per_value = np.repeat(keep, lengths)
        indptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=indptr[1:])
        return RelabelledRows(
            indptr,
            self.indices[per_value],
            self.data[per_value],
            self.total_counts[keep],
            self.n_nonzero_input[keep],
            self.mito_counts[keep],
            self.n_invalid,
        )

    def to_csr(self, n_labels: int) -> sp.csr_matrix:
        return sp.csr_matrix(
            (self.data, self.indices.astype(np.int32), self.indptr),
            shape=(len(self.indptr) - 1, n_labels),
        )


@numba.njit(cache=True, nogil=True)
def _relabel(indptr, indices, data, lut, mito):  # pragma: no cover - compiled
    n = indptr.shape[0] - 1
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    out_idx = np.empty(indices.shape[0], dtype=np.int16)
    out_val = np.empty(indices.shape[0], dtype=np.float32)
    total = np.zeros(n, dtype=np.float64)
    n_in = np.zeros(n, dtype=np.int64)
    mito_sum = np.zeros(n, dtype=np.float64)
    widest = 1
    for r in range(n):
        widest = max(widest, indptr[r + 1] - indptr[r])
    key = np.empty(widest, dtype=np.int32)
    val = np.empty(widest, dtype=np.float64)
    key2 = np.empty(widest, dtype=np.int32)
    val2 = np.empty(widest, dtype=np.float64)
    low = np.empty(256, dtype=np.int64)
    high = np.empty(256, dtype=np.int64)
    pos = 0
    invalid = 0
    for r in range(n):
        m = 0
        t = 0.0
        mt = 0.0
        nz = 0
        low[:] = 0
        high[:] = 0
        for j in range(indptr[r], indptr[r + 1]):
            v = np.float64(data[j])
            c = indices[j]
            invalid += (v < 0) | (v != np.floor(v)) | (v - v != 0)  # NaN and inf included
            t += v
            nz += v != 0
            mt += v * mito[c]
            label = lut[c]
            key[m] = label
            val[m] = v
            if label >= 0 and v != 0:
                low[label & 255] += 1
                high[label >> 8] += 1
                m += 1
        total[r] = t
        n_in[r] = nz
        mito_sum[r] = mt
        s_low = 0
        s_high = 0
        for b in range(256):
            x = low[b]
            low[b] = s_low
            s_low += x
            x = high[b]
            high[b] = s_high
            s_high += x
        for i in range(m):  # stable scatter by the low byte into key2/val2 ...
            k = key[i]
            d = low[k & 255]
            low[k & 255] = d + 1
            key2[d] = k
            val2[d] = val[i]
        for i in range(m):  # ... then by the high byte back into key/val: sorted
            k = key2[i]
            d = high[k >> 8]
            high[k >> 8] = d + 1
            key[d] = k
            val[d] = val2[i]
        i = 0
        while i < m:
            label = key[i]
            s = val[i]
            i += 1
            while i < m and key[i] == label:  # collision: counts summed
                s += val[i]
                i += 1
            out_idx[pos] = label
            out_val[pos] = s
            pos += 1
        out_ptr[r + 1] = pos
    return out_ptr, out_idx[:pos], out_val[:pos], total, n_in, mito_sum, invalid


def relabel_rows(X: sp.csr_matrix, lut: np.ndarray, mito: np.ndarray) -> RelabelledRows:
    """Map the columns of CSR ``X`` through ``lut`` (``-1`` drops a column).

    ``lut`` holds labels below :data:`MAX_LABELS`; ``mito`` flags the input columns whose counts
    are mitochondrial. Explicit zeros are ignored. Column order within input rows is irrelevant.
    Values that are not raw counts are counted in ``n_invalid``, not rejected: callers decide.
    """
    if lut.shape[0] != X.shape[1] or mito.shape[0] != X.shape[1]:
        raise ValueError(
            f"lookup tables cover {lut.shape[0]} / {mito.shape[0]} columns, X has {X.shape[1]}"
        )
    if lut.size and int(lut.max()) >= MAX_LABELS:
        raise ValueError(f"labels must be below {MAX_LABELS}, got {int(lut.max())}")
    if lut.size and int(lut.min()) < -1:
        raise ValueError("lut holds labels >= 0 or -1 for dropped columns")
    *arrays, invalid = _relabel(
        np.asarray(X.indptr),
        np.asarray(X.indices),
        np.asarray(X.data),
        np.ascontiguousarray(lut, dtype=np.int32),
        np.ascontiguousarray(mito, dtype=np.float64),
    )
    return RelabelledRows(*arrays, n_invalid=int(invalid))
