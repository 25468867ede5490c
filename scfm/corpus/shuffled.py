"""Corpus-wide shuffled training batches: a direct reader per worker (no Ray Data).

Rank ``r`` of ``world`` owns a fixed share of the version's row groups: a seeded random
permutation of all row groups dealt round-robin, so every share spans the whole corpus (all data
sets) and stays with its node from epoch to epoch (the node-local training cache of
:mod:`scfm.corpus.rowgroups` then holds only the node's share). Epoch ``e`` of rank ``r``:

1. the share's row groups in a seeded random order (``seed, e, r``);
2. a window of W row groups (``buffer_cells`` / mean cells per row group), the cells of each in a
   seeded random order (``seed, e, row group``);
3. each batch takes B cells uniformly without replacement from the window's remaining cells: how
   many from each row group is a multivariate hypergeometric draw; a row group that runs out is
   replaced by the next in the order;
4. every rank yields the same number of batches (the smallest share's ``floor(cells / B)``), so
   DDP ranks finish an epoch together; the few cells beyond it sit out that epoch only.

The plan of an epoch depends on counts only, so :meth:`ShuffledBatches.epoch` skips to batch
``p`` by replaying draws without reading a cell, and the same (seed, epoch, rank, world, p) always
gives the same next cells: a resumed run continues where it stopped. Row groups are decoded by a
small pool of reader threads ahead of need; batches are gathered (vectorized CSR gathers) in a
background thread into a bounded queue (:func:`scfm.data.background.background`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scfm.corpus.loader import Corpus
from scfm.corpus.rowgroups import RowGroup, RowGroupIndex, RowGroupReader, gather
from scfm.data.background import background
from scfm.data.packed import PackedCells

logger = logging.getLogger(__name__)

# A planned batch: (row group id, rows within its training cells, last use of that row group)
Plan = list[tuple[int, np.ndarray, bool]]


@dataclass
class _Slot:
    group: int
    order: np.ndarray  # the row group's cells in this epoch's random order
    taken: int = 0

    @property
    def left(self) -> int:
        return self.order.size - self.taken


class ShuffledBatches:
    """This rank's shuffled training batches (a :class:`~scfm.train.loop.Batches`).

    Parameters
    ----------
    corpus
        The corpus version (pin the version for a whole run: ``open_corpus(uri, version)``).
    batch_size
        Cells per batch (the micro-batch).
    seed
        Seed of the share, the orders and the draws.
    rank, world
        This worker and the number of workers.
    buffer_cells
        Cells in the shuffle window (W row groups); larger mixes more data sets per batch and
        holds ~12 kB per cell in memory.
    max_train_cells
        Use only the first this many training cells (manifest order); None: all.
    reader_threads
        Threads decoding row groups ahead of need.
    prefetch_batches
        Finished batches queued ahead of the consumer.
    cache, cache_dir, with_ids
        See :class:`~scfm.corpus.rowgroups.RowGroupReader`.
    """

    def __init__(
        self,
        corpus: Corpus,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        buffer_cells: int = 32_768,
        max_train_cells: int | None = None,
        reader_threads: int = 2,
        prefetch_batches: int = 4,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        with_ids: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.reader_threads = max(1, reader_threads)
        self.prefetch_batches = max(1, prefetch_batches)
        self.reader = RowGroupReader(corpus, cache=cache, cache_dir=cache_dir, with_ids=with_ids)
        self.index: RowGroupIndex = self.reader.index().limit_train(max_train_cells)
        n = self.index.n_train
        has_cells = np.flatnonzero(n > 0)
        dealt = has_cells[np.random.default_rng([seed, 0x5CF]).permutation(has_cells.size)]
        self.shares = [np.sort(dealt[r::world]) for r in range(world)]
        per_rank = [int(n[s].sum()) for s in self.shares]
        self.batches_per_epoch = min(per_rank) // batch_size
        mean_rows = float(n[has_cells].mean()) if has_cells.size else 1.0
        self.window = max(2, math.ceil(buffer_cells / mean_rows))
        self._lookahead = max(4, math.ceil(2 * self.reader_threads * mean_rows / batch_size))
        if self.batches_per_epoch == 0:
            logger.warning(
                "rank %d/%d: %d training cells in the smallest share, fewer than one batch of %d",
                rank, world, min(per_rank), batch_size,
            )  # fmt: skip

    @property
    def share(self) -> np.ndarray:
        """Row-group ids (into :attr:`index`) of this rank."""
        return self.shares[self.rank]

    def plan(self, epoch: int) -> Iterator[Plan]:
        """The epoch's batches as row-group rows, without reading a cell."""
        n = self.index.n_train
        share = self.share
        order = share[np.random.default_rng([self.seed, epoch, self.rank]).permutation(share.size)]
        draws = np.random.default_rng([self.seed, epoch, self.rank, 1])
        queue = deque(int(g) for g in order)

        def admit() -> _Slot:
            g = queue.popleft()
            perm = np.random.default_rng([self.seed, epoch, g]).permutation(int(n[g]))
            return _Slot(g, perm)

        slots = [admit() for _ in range(min(self.window, len(queue)))]
        for _ in range(self.batches_per_epoch):
            left = np.array([s.left for s in slots], dtype=np.int64)
            while left.sum() < self.batch_size and queue:  # tiny row groups: widen the window
                slots.append(admit())
                left = np.append(left, slots[-1].left)
            if left.sum() < self.batch_size:
                return
            take = draws.multivariate_hypergeometric(left, self.batch_size)
            batch: Plan = []
            for i in np.flatnonzero(take):
                s, k = slots[i], int(take[i])
                batch.append((s.group, s.order[s.taken : s.taken + k], s.left == k))
                s.taken += k
            keep = [s for s in slots if s.left]
            while len(keep) < self.window and queue:
                keep.append(admit())
            slots = keep
            yield batch

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[PackedCells]:
        """Batches ``skip, skip + 1, …`` of ``epoch`` (prefetched in a background thread)."""
        return background(self._produce(epoch, skip), self.prefetch_batches, "scfm-batches")

    def _produce(self, epoch: int, skip: int) -> Iterator[PackedCells]:
        plans = self.plan(epoch)
        for _ in range(skip):
            if next(plans, None) is None:
                return
        read = self.reader.read
        paths, shard, group = self.index.paths, self.index.shard, self.index.group
        loaded: dict[int, Future[RowGroup]] = {}
        ahead: deque[Plan] = deque()
        with ThreadPoolExecutor(self.reader_threads, thread_name_prefix="scfm-rowgroups") as pool:

            def plan_more() -> None:
                while len(ahead) < self._lookahead:
                    nxt = next(plans, None)
                    if nxt is None:
                        return
                    for g, _, _ in nxt:
                        if g not in loaded:
                            loaded[g] = pool.submit(read, paths[shard[g]], int(group[g]), "train")
                    ahead.append(nxt)

            plan_more()
            while ahead:
                batch = ahead.popleft()
                parts = [(loaded[g].result(), rows) for g, rows, _ in batch]
                for g, _, last in batch:
                    if last:
                        del loaded[g]
                plan_more()
                yield gather(parts)

    def val_batches(self, max_cells: int | None = None) -> Iterator[PackedCells]:
        """This rank's validation cells.

        The first ``max_cells`` validation cells of the version (manifest order; None: all) are
        cut into ``world`` equal contiguous blocks (the remainder, < world cells, is left out),
        so every rank runs the same number of validation batches (DDP and FSDP forwards are
        collectives) and reads only the row groups of its block.
        """
        n_val = self.index.n_val
        total = int(n_val.sum())
        per_rank = (total if max_cells is None else min(max_cells, total)) // self.world
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        first = np.concatenate([[0], np.cumsum(n_val)[:-1]])  # position of each group's first cell
        pending: list[tuple[RowGroup, np.ndarray]] = []
        n_pending = 0
        for g in np.flatnonzero((n_val > 0) & (first < hi) & (first + n_val > lo)):
            where = self.index.paths[self.index.shard[g]], int(self.index.group[g])
            rows = np.arange(max(lo, first[g]), min(hi, first[g] + n_val[g])) - first[g]
            rg = self.reader.read(*where, "val")
            while rows.size:
                k = min(rows.size, self.batch_size - n_pending)
                pending.append((rg, rows[:k]))
                n_pending += k
                rows = rows[k:]
                if n_pending == self.batch_size:
                    yield gather(pending)
                    pending, n_pending = [], 0
        if n_pending:
            yield gather(pending)
