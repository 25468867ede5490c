"""Gene modules: GMT parsing, the statistics (against scipy / statsmodels), recovery of a planted
module, and the pipeline on real cells with a tiny model."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from scfm import datasets
from scfm.data.genes import GeneVocab
from scfm.tasks.gene_modules import (
    benjamini_hochberg,
    cluster_genes,
    enrichment,
    find_gene_modules,
    hypergeom_pvalue,
    load_gene_sets,
    read_gmt,
)


def test_read_gmt_plain_and_gzip(tmp_path):
    text = "SET_A\tdesc\tG1\tG2\tG2\tG3\nSET_B\thttp://x\tG4\t\tG5\n\n"
    (tmp_path / "a.gmt").write_text(text)
    with gzip.open(tmp_path / "a.gmt.gz", "wt") as fh:
        fh.write(text)
    for name in ("a.gmt", "a.gmt.gz"):
        assert read_gmt(tmp_path / name) == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G4", "G5"]}
    (tmp_path / "bad.gmt").write_text("SET_A\tonly a description\n")
    with pytest.raises(ValueError, match="needs a name, a description and genes"):
        read_gmt(tmp_path / "bad.gmt")


def test_registered_collections():
    sets = load_gene_sets(["hallmark", "cell_cycle", "mito", "ribo", "c2_cp"])
    assert len(sets["hallmark"]) == 50 and len(sets["c2_cp"]) == 2982
    assert set(sets["cell_cycle"]) == {"G1/S", "G2/M"}
    assert "MT-ND1" in sets["mito"]["mito_genes"]
    with pytest.raises(ValueError, match="choose from"):
        load_gene_sets(["kegg"])


def test_hypergeometric_equals_one_sided_fisher():
    for overlap, universe, set_size, module_size in [
        (5, 500, 40, 30),
        (0, 100, 10, 10),
        (12, 800, 50, 60),
        (3, 60, 5, 7),
    ]:
        p = hypergeom_pvalue(
            np.array([overlap]), universe, np.array([set_size]), np.array([module_size])
        )[0]
        table = [
            [overlap, module_size - overlap],
            [set_size - overlap, universe - module_size - set_size + overlap],
        ]
        assert p == pytest.approx(fisher_exact(table, alternative="greater")[1], rel=1e-9)


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(size=200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])
    assert benjamini_hochberg(np.array([])).size == 0


def test_planted_module_is_recovered_and_enriched():
    """Genes of one Hallmark set share an embedding direction; everything else is noise."""
    rng = np.random.default_rng(0)
    hallmark = load_gene_sets(["hallmark"])["hallmark"]
    vocab = set(GeneVocab.load().names)
    planted_set = "HALLMARK_INTERFERON_ALPHA_RESPONSE"
    planted = sorted(set(hallmark[planted_set]) & vocab)[:60]
    others = sorted(vocab - set(planted) - set(hallmark[planted_set]))
    background = list(rng.choice(others, 540, replace=False))
    genes = planted + background
    centers = rng.normal(size=(6, 32))
    emb = np.vstack(
        [
            centers[0] + 0.3 * rng.normal(size=(60, 32)),
            centers[1 + rng.integers(0, 5, 540)] + 0.3 * rng.normal(size=(540, 32)),
        ]
    )
    labels = cluster_genes(emb, 6, seed=0)
    planted_module = np.bincount(labels[:60]).argmax()
    assert (labels[:60] == planted_module).all()
    modules = {
        str(m): [g for g, lab in zip(genes, labels, strict=True) if lab == m]
        for m in np.unique(labels)
    }
    table = enrichment(modules, {"hallmark": hallmark}, genes)
    top = table.iloc[0]
    assert top["module"] == str(planted_module) and top["gene_set"] == planted_set
    assert top["overlap"] == 60 and top["fdr"] < 1e-30
    # the background modules are random genes: none is enriched for anything. (Sets that share
    # interferon genes with the planted one, e.g. the IFN-gamma response, may be hits of the
    # planted module itself.)
    background_hits = table[(table["fdr"] < 0.05) & (table["module"] != str(planted_module))]
    assert background_hits.empty, background_hits.head()
    assert table["fdr"].between(0, 1).all() and (table["fdr"] >= table["p_value"] - 1e-15).all()


def test_gene_modules_on_kang_cells_with_a_tiny_model(kang, tiny_trained):
    data, _ = kang
    adata = data.to_anndata()
    result = find_gene_modules(
        adata,
        tiny_trained.model,
        cells=data.labels == "B",
        n_modules=5,
        max_genes=150,
        min_frac=0.2,
        max_cells=12,
        device="cpu",
        group="B",
        collections=("hallmark", "ribo"),
    )
    m = result.modules
    assert len(m) == 150 and set(m["module"]) == set(range(5))
    assert result.embeddings.shape == (150, tiny_trained.model.cfg.dec_dim)
    assert np.isfinite(result.embeddings).all()
    names = np.asarray(GeneVocab.load().names)
    assert (m["gene"].to_numpy() == names[m["vocab_index"].to_numpy()]).all()
    # module sizes in the enrichment table are the cluster sizes
    sizes = m.groupby("module").size()
    got = result.enrichment.drop_duplicates("module").set_index("module")["module_size"]
    assert {int(k): v for k, v in got.items()} == sizes.to_dict()
    assert isinstance(result.top_hits(), pd.DataFrame)


def _gene_modules_cli(*options: str):
    from typer.testing import CliRunner

    from scfm.cli import app

    kang = str(datasets.fetch("kang2018"))
    return CliRunner().invoke(
        app, ["evaluate", "gene-modules", "--h5ad", kang, "--model", "random:tiny", *options]
    )


def test_gene_modules_cli(tmp_path):
    out = tmp_path / "gm"
    result = _gene_modules_cli(
        *("--group-key", "cell_type", "--group-value", "NK", "--n-modules", "4"),
        *("--max-cells", "8", "--min-frac", "0.3", "--out", str(out)),
    )
    assert result.exit_code == 0, result.output
    modules = pd.read_csv(out / "modules.csv")
    table = pd.read_csv(out / "enrichment.csv")
    assert set(modules["module"]) == {0, 1, 2, 3}
    assert set(table["module"]) <= {0, 1, 2, 3} and table["fdr"].between(0, 1).all()
    assert (out / "enrichment.png").stat().st_size > 5_000
    bad = _gene_modules_cli("--group-key", "celltype", "--out", str(out))
    assert bad.exit_code == 1 and "obs columns are" in bad.output
