"""Census planning streams obs in bounded slices: same blocks as a whole read, bounded memory.

The memory side is measured by ``benchmarks/census_planning.py`` (docs/SCALING.md); here the
slice size is made tiny so slices cut through data sets and blocks, and the plan must equal one
computed from all selected joinids at once.
"""

from __future__ import annotations

import numpy as np
import pytest

from scfm.corpus import sources
from scfm.corpus.sources import CensusSource


@pytest.mark.parametrize("scan_rows", [97, 1000, 1 << 20])
def test_streamed_plan_equals_a_whole_read(census_store, monkeypatch, scan_rows):
    monkeypatch.setattr(sources, "_SCAN_ROWS", scan_rows)
    source = CensusSource(uri=census_store.uri, obs_value_filter="cell_type != 'B cells'")
    refs = source.datasets()
    obs = (
        source._experiment()
        .obs.read(column_names=["soma_joinid", "dataset_id"], value_filter=source.value_filter)
        .concat()
        .to_pandas()
    )
    assert {r.dataset_id: r.n_cells for r in refs} == obs.groupby("dataset_id").size().to_dict()
    block = 250
    for ref in refs:
        sel = np.sort(obs.loc[obs["dataset_id"] == ref.dataset_id, "soma_joinid"].to_numpy())
        expected = [
            (int(c[0]), int(c[-1]) + 1, len(c))
            for c in (sel[s : s + block] for s in range(0, len(sel), block))
        ]
        units = source.plan(ref, block)
        assert [(u.start, u.stop, u.n_cells) for u in units] == expected
        assert [u.block for u in units] == list(range(len(units)))
        assert all(u.n_blocks == len(units) for u in units)
    assert "_blocks" not in source.__getstate__()  # the driver's cache never travels to workers
