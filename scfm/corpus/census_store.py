"""Write a Census-shaped tiledbsoma store, chunk by chunk (memory independent of its size).

The layout follows the CELLxGENE Census schema 2.0.0 (``docs/cellxgene_census_schema.md`` in
chanzuckerberg/cellxgene-census), so ``cellxgene_census.open_soma(uri=root)`` and scfm's
``CensusSource(uri=root)`` read it exactly as they read the real Census::

    <root>/                              SOMACollection (the census object)
      census_info/                       summary, datasets, summary_cell_counts (SOMADataFrames)
      census_data/homo_sapiens           SOMAExperiment
          obs                            one row per cell (dataset_id, observation_joinid,
                                         cell_type, …, is_primary_data, nnz, raw_sum, …)
          ms['RNA'].var                  feature_id (Ensembl), feature_name, feature_length, …
          ms['RNA'].X['raw']             float32 counts, no explicit zeros
          ms['RNA']['feature_dataset_presence_matrix']   bool, datasets × features (optional)

Used by the test fixture built from the shared real data (``tests/census_fixture.py``), the
synthetic benchmark stores (``benchmarks/synthetic.py``), and anyone who wants a local
Census-shaped copy of their own data to develop against offline. ``X['raw']`` is one tile across
all genes, so row-major chunks are already in TileDB's global order and are written unsorted
(``sort_coords=False``: 6× faster than letting TileDB sort).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp


def arrow_type(series: pd.Series) -> pa.DataType:
    """The SOMA column type of a pandas column (strings as ``large_string``)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return pa.bool_()
    if pd.api.types.is_integer_dtype(dtype):
        return pa.int64()
    if pd.api.types.is_float_dtype(dtype):
        return pa.float32() if dtype == np.float32 else pa.float64()
    return pa.large_string()


class CensusStoreWriter:
    """A new store at ``root`` with room for ``n_cells`` cells over the genes of ``var``.

    Parameters
    ----------
    var
        One row per gene: ``feature_id``, ``feature_name``, ``feature_length`` and any other
        numeric columns (``nnz``, ``n_measured_obs``).
    obs_types
        Column name → Arrow type of the cell table (``soma_joinid`` is added).
    """

    def __init__(
        self, root: str | Path, *, n_cells: int, var: pd.DataFrame, obs_types: dict[str, Any]
    ) -> None:
        import tiledbsoma as soma

        self.root = str(Path(root).resolve())
        if Path(self.root).exists():
            raise FileExistsError(f"{self.root} exists; a store is written once")
        self.n_cells, self.n_var = n_cells, len(var)
        self.exp_uri = f"{self.root}/census_data/homo_sapiens"
        self.obs_schema = pa.schema(
            [("soma_joinid", pa.int64()), *((c, t) for c, t in obs_types.items())]
        )
        self._next = 0
        exp = self.exp_uri
        soma.Collection.create(self.root).close()
        with soma.Collection.open(self.root, "w") as census:
            census.add_new_collection("census_info")
            census.add_new_collection("census_data")
        var_table = pa.Table.from_pandas(var.reset_index(drop=True), preserve_index=False)
        var_table = pa.Table.from_arrays(
            [pa.array(np.arange(self.n_var, dtype=np.int64))]
            + [
                c.cast(pa.large_string()) if pa.types.is_string(c.type) else c
                for c in var_table.columns
            ],
            names=["soma_joinid", *var_table.column_names],
        )
        soma.Experiment.create(exp).close()
        soma.DataFrame.create(
            f"{exp}/obs", schema=self.obs_schema, domain=[(0, max(n_cells - 1, 0))]
        ).close()
        soma.Collection.create(f"{exp}/ms").close()
        soma.Measurement.create(f"{exp}/ms/RNA").close()
        soma.DataFrame.create(
            f"{exp}/ms/RNA/var", schema=var_table.schema, domain=[(0, max(self.n_var - 1, 0))]
        ).close()
        soma.Collection.create(f"{exp}/ms/RNA/X").close()
        soma.SparseNDArray.create(
            f"{exp}/ms/RNA/X/raw",
            type=pa.float32(),
            shape=(max(n_cells, 1), max(self.n_var, 1)),
            platform_config={
                "tiledb": {
                    "create": {
                        "dims": {"soma_dim_1": {"tile": max(self.n_var, 1)}},
                        "cell_order": "row-major",
                        "tile_order": "row-major",
                    }
                }
            },
        ).close()
        with soma.Collection.open(f"{exp}/ms/RNA/X", "w") as xc:
            xc.set("raw", soma.SparseNDArray.open(f"{exp}/ms/RNA/X/raw"), use_relative_uri=True)
        with soma.Measurement.open(f"{exp}/ms/RNA", "w") as ms:
            ms.set("var", soma.DataFrame.open(f"{exp}/ms/RNA/var"), use_relative_uri=True)
            ms.set("X", soma.Collection.open(f"{exp}/ms/RNA/X"), use_relative_uri=True)
        with soma.Collection.open(f"{exp}/ms", "w") as ms:
            ms.set("RNA", soma.Measurement.open(f"{exp}/ms/RNA"), use_relative_uri=True)
        with soma.Experiment.open(exp, "w") as e:
            e.set("obs", soma.DataFrame.open(f"{exp}/obs"), use_relative_uri=True)
            e.set("ms", soma.Collection.open(f"{exp}/ms"), use_relative_uri=True)
        with soma.Collection.open(f"{self.root}/census_data", "w") as data:
            data.set("homo_sapiens", soma.Experiment.open(exp), use_relative_uri=True)
        with soma.DataFrame.open(f"{exp}/ms/RNA/var", "w") as v:
            v.write(var_table)

    def write_cells(self, X: sp.spmatrix, obs: pd.DataFrame) -> None:
        """Append cells: ``X`` (cells × genes of ``var``, counts) and their obs rows."""
        import tiledbsoma as soma

        X = sp.csr_matrix(X, dtype=np.float32)
        X.eliminate_zeros()
        X.sort_indices()
        n = X.shape[0]
        if X.shape[1] != self.n_var or len(obs) != n:
            raise ValueError(
                f"chunk of {X.shape} counts with {len(obs)} obs rows does not fit "
                f"{self.n_var} genes"
            )
        if self._next + n > self.n_cells:
            raise ValueError(f"more than the {self.n_cells} cells the store was created for")
        start, self._next = self._next, self._next + n
        coo = X.tocoo()  # row-major, columns sorted: the array's global order
        columns = {"soma_joinid": np.arange(start, start + n, dtype=np.int64)}
        for field in self.obs_schema:
            if field.name != "soma_joinid":
                columns[field.name] = pa.array(obs[field.name].to_numpy(), type=field.type)
        with (
            soma.SparseNDArray.open(f"{self.exp_uri}/ms/RNA/X/raw", "w") as Xa,
            soma.DataFrame.open(f"{self.exp_uri}/obs", "w") as ob,
        ):
            Xa.write(
                pa.Table.from_pydict(
                    {
                        "soma_dim_0": (coo.row + start).astype(np.int64),
                        "soma_dim_1": coo.col.astype(np.int64),
                        "soma_data": coo.data.astype(np.float32),
                    }
                ),
                platform_config=soma.TileDBWriteOptions(sort_coords=False),
            )
            ob.write(pa.Table.from_pydict(columns, schema=self.obs_schema))

    def write_presence(self, presence: np.ndarray) -> None:
        """The ``feature_dataset_presence_matrix`` (data sets × genes, bool)."""
        import tiledbsoma as soma

        uri = f"{self.exp_uri}/ms/RNA/feature_dataset_presence_matrix"
        rows, cols = np.nonzero(presence)
        with soma.SparseNDArray.create(uri, type=pa.bool_(), shape=presence.shape) as arr:
            arr.write(
                pa.Table.from_pydict(
                    {
                        "soma_dim_0": rows.astype(np.int64),
                        "soma_dim_1": cols.astype(np.int64),
                        "soma_data": np.ones(len(rows), dtype=bool),
                    }
                )
            )
        with soma.Measurement.open(f"{self.exp_uri}/ms/RNA", "w") as ms:
            ms.set(
                "feature_dataset_presence_matrix",
                soma.SparseNDArray.open(uri),
                use_relative_uri=True,
            )

    def write_info(self, tables: dict[str, pa.Table]) -> None:
        """``census_info`` tables (``summary``, ``datasets``, ``summary_cell_counts``)."""
        import tiledbsoma as soma

        info_uri = f"{self.root}/census_info"
        with soma.Collection.open(info_uri, "w") as info:
            for key, table in tables.items():
                uri = f"{info_uri}/{key}"
                # Create, then reopen to write: the handle from add_new_dataframe drops
                # categories on tiledbsoma 2.3 + pyarrow 25 (plain strings anyway).
                soma.DataFrame.create(
                    uri, schema=table.schema, domain=[(0, max(len(table) - 1, 0))]
                ).close()
                with soma.DataFrame.open(uri, "w") as df:
                    df.write(table)
                info.set(key, soma.DataFrame.open(uri), use_relative_uri=True)
