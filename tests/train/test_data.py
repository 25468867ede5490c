from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from scfm.train.data import corpus_files, packed_batch_from_arrow
from tests.fixtures_data import pack_rows


def test_arrow_tables_pack_exactly_like_the_csr_rows(kang_corpus, kang_vocab_counts):
    files = corpus_files(kang_corpus)
    assert len(files) == 2
    table = pq.read_table(files[1]).slice(5, 7)  # a sliced table: offsets must restart at 0
    packed = packed_batch_from_arrow(table)
    expected = pack_rows(kang_vocab_counts[65:72])
    for key in ("gene_idx", "counts", "offsets", "total_counts"):
        np.testing.assert_array_equal(packed[key], expected[key])
    assert packed["gene_idx"].dtype == np.int32 and packed["offsets"][0] == 0
