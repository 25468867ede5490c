from __future__ import annotations

import numpy as np


def test_fixture_follows_the_census_schema(census_store):
    import cellxgene_census

    with cellxgene_census.open_soma(uri=census_store.uri) as census:
        assert set(census) == {"census_info", "census_data"}
        assert set(census["census_info"]) == {"summary", "datasets", "summary_cell_counts"}
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        assert summary.set_index("label").loc["census_schema_version", "value"] == "2.0.0"
        ds = census["census_info"]["datasets"].read().concat().to_pandas()
        assert {
            "dataset_id",
            "dataset_version_id",
            "dataset_total_cell_count",
            "citation",
            "collection_id",
            "dataset_h5ad_path",
        } <= set(ds.columns)
        assert ds["dataset_total_cell_count"].sum() == census_store.n_cells == 6082
        exp = census["census_data"]["homo_sapiens"]
        var = exp.ms["RNA"].var.read().concat().to_pandas()
        assert {"feature_id", "feature_name", "feature_length", "nnz", "n_measured_obs"} <= set(
            var.columns
        )
        assert var["feature_id"].str.match(r"^ENSG\d{11}$").all()
        obs = exp.obs.read(value_filter="is_primary_data == True").concat().to_pandas()
        assert len(obs) == census_store.n_primary_cells == 6082 - 300
        X = exp.ms["RNA"].X["raw"]
        t = X.read((slice(0, 9),)).tables().concat()
        assert t.schema.field("soma_data").type.bit_width == 32  # float32 counts
        vals = t.column("soma_data").to_numpy()
        assert (vals > 0).all() and np.array_equal(vals, np.rint(vals))
        # obs raw_sum agrees with X['raw'] (real counts, not made up)
        rows = t.column("soma_dim_0").to_numpy()
        sums = np.bincount(rows, weights=vals, minlength=10)[:10]
        raw = exp.obs.read(coords=(slice(0, 9),), column_names=["raw_sum"]).concat()
        assert np.allclose(sums, raw.column("raw_sum").to_numpy())
        pm = cellxgene_census.get_presence_matrix(census, "Homo sapiens")
        assert pm.shape == (6, len(var))
