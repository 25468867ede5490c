"""Batch inference on Ray Data over a real corpus and over a folder of h5ad files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import scfm
from scfm.corpus.loader import open_corpus
from scfm.data.validate import InputValidationError
from scfm.inference.embed import embed_packed
from scfm.inference.engine import InferenceEngine
from scfm.inference.ray_batch import EmbedJobConfig, embed_dataset, read_embeddings

ATOL = 2e-5


@pytest.mark.slow
def test_corpus_embeddings_one_row_per_cell_with_mlflow_run(
    ray_local, kang_corpus, micro_checkpoint, tmp_path, mlflow_uri
) -> None:
    model, checkpoint = micro_checkpoint
    out = tmp_path / "emb"
    result = embed_dataset(
        EmbedJobConfig(
            source=kang_corpus,
            output=str(out),
            model=str(checkpoint),
            block_cells=1024,
            progress=False,
            run_name="kang",
            umap_max_cells=400,  # the plot is checked, not its quality: keep UMAP quick
        )
    )
    corpus = open_corpus(kang_corpus)
    ids = corpus.read_table(columns=["cell_id"]).column("cell_id").to_pylist()
    table, emb = read_embeddings(out)
    got = table.column("cell_id").to_pylist()
    assert result.n_cells == len(got) == len(ids) == corpus.n_cells
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)  # exactly one row per cell
    assert emb.shape == (len(ids), 4 * model.cfg.enc_dim) and result.embedding_dim == 64
    assert set(table.column("cell_type").to_pylist()) >= {"B", "CD4T", "NK"}  # metadata kept
    assert not list(tmp_path.glob("emb.tmp-*"))  # written atomically

    # values: the same cells embedded in-process from the loader's batches
    engine = InferenceEngine(model, device="cpu")
    row = {c: i for i, c in enumerate(got)}
    batch = next(corpus.iter_batches(batch_size=100))
    ref = embed_packed(engine, batch, batch_size=16)
    np.testing.assert_allclose(emb[[row[c] for c in batch.cell_id]], ref, atol=ATOL, rtol=0)

    # the MLflow run: experiment 'embed', metrics, lineage tags, the UMAP plot
    import mlflow

    run = mlflow.get_run(result.run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "embed"
    assert run.data.metrics["n_cells"] == len(ids)
    assert run.data.tags["scfm.corpus_version"] == str(corpus.version)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/umap.png"}
    assert result.umap_path and (tmp_path / "emb_umap.png").stat().st_size > 10_000

    with pytest.raises(FileExistsError, match="overwrite"):
        embed_dataset(EmbedJobConfig(kang_corpus, str(out), str(checkpoint), mlflow=False))


@pytest.mark.slow
def test_folder_of_h5ad_files(ray_local, kang_full, tiny_model, tiny_checkpoint, tmp_path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    a = kang_full[:25].copy()
    rng = np.random.default_rng(0)
    b = kang_full[100:130].copy()
    b = b[:, rng.permutation(b.n_vars)].copy()  # another gene order: mapped per file
    a.write_h5ad(folder / "a.h5ad")
    b.write_h5ad(folder / "b.h5ad")
    result = embed_dataset(
        EmbedJobConfig(
            source=str(folder),
            output=str(tmp_path / "out"),
            model=str(tiny_checkpoint),
            block_cells=10,
            mlflow=False,
            progress=False,
        )
    )
    assert result.n_cells == 55 and result.source_kind == "files"
    table, emb = read_embeddings(tmp_path / "out")
    got = {c: e for c, e in zip(table.column("cell_id").to_pylist(), emb, strict=True)}
    for name, adata in (("a.h5ad", a), ("b.h5ad", b)):
        ref = scfm.embed(adata, tiny_model, progress=False)
        ids = [f"inputs:{name}:{o}" for o in adata.obs_names]
        np.testing.assert_allclose(np.stack([got[i] for i in ids]), ref, atol=ATOL, rtol=0)
    assert len(got) == 55
    schema = pq.read_schema(next((tmp_path / "out").glob("*.parquet")))
    emb_type = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == 128
    assert emb_type.value_type == pa.float32()

    # a file of normalized values is refused, naming the file and the fix
    bad = ad.AnnData(X=sp.csr_matrix(np.log1p(a.X.toarray())), obs=a.obs, var=a.var)
    bad.write_h5ad(folder / "c.h5ad")
    with pytest.raises(InputValidationError, match=r"c\.h5ad rows 0\.\.24: .*non-integer"):
        embed_dataset(
            EmbedJobConfig(str(folder), str(tmp_path / "o2"), str(tiny_checkpoint), mlflow=False,
                           progress=False)
        )  # fmt: skip
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob("o2.tmp-*"))
    mouse = a.copy()
    mouse.var_names = [g.capitalize() for g in a.var_names]
    (folder / "c.h5ad").unlink()
    mouse.write_h5ad(folder / "m.h5ad")
    with pytest.raises(InputValidationError, match="m.h5ad: .*mouse symbols"):
        embed_dataset(EmbedJobConfig(str(folder), str(tmp_path / "o3"), str(tiny_checkpoint)))


def test_actor_body_matches_in_process_embedding(kang, tiny_model, tiny_checkpoint) -> None:
    """CellEmbedder (the Ray actor class, called directly) on corpus-schema rows."""
    from scfm.corpus.sources import CellBlock
    from scfm.inference.ray_batch import CellEmbedder, _block_rows

    block = CellBlock(X=kang.X, gene_ids=kang.var_names.to_numpy(), obs_ids=kang.obs_names)
    table = _block_rows("src", "kang.h5ad", block)
    assert table.column("cell_id")[0].as_py() == f"src:kang.h5ad:{kang.obs_names[0]}"
    for depth_total in ("all_genes", "vocab_genes"):
        actor = CellEmbedder(
            str(tiny_checkpoint), "cell", "cpu", "auto", ("mean", "max"), "a1", 8, None, (),
            depth_total,
        )  # fmt: skip
        out = actor(table)
        emb = out.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 64)
        ref = scfm.embed(
            kang, tiny_model, pool=("mean", "max"), target_depth="a1", depth_total=depth_total,
            progress=False,
        )  # fmt: skip
        np.testing.assert_allclose(emb, ref, atol=ATOL, rtol=0)
    # the two conventions really differ (852 of Kang's 6,998 genes are not in the vocabulary)
    assert not np.allclose(
        ref, scfm.embed(kang, tiny_model, pool=("mean", "max"), target_depth="a1", progress=False)
    )
