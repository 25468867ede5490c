"""The scIB metrics wrapper reaches the known extremes on toy embeddings.

* labels in far-apart clusters, batches drawn at random within each cluster: every bio metric
  and every batch-correction metric near 1;
* an embedding that is just the batch (one-hot, tiny noise): batch ASW, iLISI and kBET near 0 and
  the labels unrecoverable;
* no batch key: the bio half only, total = bio conservation.

The toy data share their labels and batches, so scib-metrics' jax kernels compile once here.
"""

from __future__ import annotations

import numpy as np
import pytest

from scfm.tasks.scib import (
    AGGREGATES,
    BATCH_METRICS,
    BIO_METRICS,
    aggregate_scores,
    cache_jax_compilations,
    kbet_per_label,
    neighbours,
    scib_scores,
)

N_LABELS, PER_LABEL, DIMS = 3, 80, 10


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    labels = np.repeat([f"type{i}" for i in range(N_LABELS)], PER_LABEL)
    batches = rng.permutation(np.tile(["a", "b"], labels.size // 2))  # mixed within every label
    centres = rng.normal(size=(N_LABELS, DIMS)) * 40
    codes = np.repeat(np.arange(N_LABELS), PER_LABEL)
    separated = centres[codes] + rng.normal(size=(labels.size, DIMS))
    batch_only = np.eye(2)[(batches == "b").astype(int)] * 10
    batch_only = batch_only + rng.normal(size=batch_only.shape) * 1e-3
    return labels, batches, separated, batch_only


@pytest.fixture(scope="module")
def perfect(toy):
    labels, batches, separated, _ = toy
    return scib_scores(separated, labels, batches)


@pytest.fixture(scope="module")
def batch_only(toy):
    labels, batches, _, emb = toy
    return scib_scores(emb, labels, batches)


def test_separated_labels_and_mixed_batches_score_near_one(perfect):
    v = perfect.values
    assert v["leiden_nmi"] == pytest.approx(1.0) and v["leiden_ari"] == pytest.approx(1.0)
    assert v["clisi"] == pytest.approx(1.0, abs=1e-3)
    assert v["silhouette_label"] > 0.95 and v["isolated_labels"] > 0.95
    # batches are random within each cluster: nothing left to correct
    assert v["silhouette_batch"] > 0.9
    assert v["ilisi"] > 0.85
    assert v["kbet"] > 0.85  # ~ 1 − α under the null
    assert v["graph_connectivity"] > 0.95
    agg = perfect.aggregates()
    assert agg["bio_conservation"] > 0.97 and agg["batch_correction"] > 0.9
    assert agg["total"] == pytest.approx(
        0.6 * agg["bio_conservation"] + 0.4 * agg["batch_correction"]
    )


def test_embedding_of_the_batch_alone_reports_no_batch_correction(batch_only, perfect):
    v = batch_only.values
    assert v["silhouette_batch"] < 0.05
    assert v["ilisi"] < 0.05
    assert v["kbet"] < 0.1  # vs ~ 0.95 when mixed
    # each label splits into one connected piece per batch
    assert v["graph_connectivity"] < 0.6
    agg = batch_only.aggregates()
    assert agg["batch_correction"] < 0.2
    # and cell types are lost: bio conservation far below the separated embedding
    assert v["leiden_nmi"] < 0.1 and v["clisi"] < 0.4
    assert agg["bio_conservation"] < perfect.aggregates()["bio_conservation"] - 0.5


def test_without_batches_only_the_bio_half_and_total_is_bio(toy, perfect):
    labels, _, separated, _ = toy
    s = scib_scores(separated, labels, None)
    assert all(np.isnan(s.values[k]) for k in BATCH_METRICS)
    for k in ("leiden_nmi", "leiden_ari", "silhouette_label", "clisi"):
        assert s.values[k] == pytest.approx(perfect.values[k])
    agg = s.aggregates()
    assert np.isnan(agg["batch_correction"])
    assert (
        agg["total"]
        == agg["bio_conservation"]
        == pytest.approx(np.mean([s.values[k] for k in BIO_METRICS]))
    )


def test_aggregates_are_scib_weighted_means():
    values = dict.fromkeys(BIO_METRICS, 0.5) | dict.fromkeys(BATCH_METRICS, 1.0)
    values["leiden_nmi"] = 1.0
    agg = aggregate_scores(values)
    bio = (1.0 + 0.5 * (len(BIO_METRICS) - 1)) / len(BIO_METRICS)
    assert agg == pytest.approx({"bio_conservation": bio, "batch_correction": 1.0,
                                 "total": 0.6 * bio + 0.4})  # fmt: skip
    values["kbet"] = float("nan")  # undefined metrics are left out of the mean, as scib-metrics
    assert aggregate_scores(values)["batch_correction"] == 1.0
    assert set(agg) == set(AGGREGATES)


def test_neighbours_are_exact_and_start_with_the_cell_itself():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    X[10] = X[11] = X[12]  # duplicates: ties at distance 0
    nn = neighbours(X, 20)
    assert (nn.indices[:, 0] == np.arange(120)).all() and (nn.distances[:, 0] == 0).all()
    d = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.testing.assert_allclose(nn.distances[:, -1], np.sort(d, axis=1)[:, 19], rtol=1e-5)
    assert set(nn.indices[10, :3]) == {10, 11, 12}
    with pytest.raises(ValueError, match="score more cells"):
        neighbours(X[:20], 20)


def test_diffusion_map_is_scib_metrics_recipe(toy):
    """kBET's one change (exact neighbours) keeps scib-metrics' diffusion embedding."""
    from scib_metrics.utils._diffusion_nn import _compute_eigen, _compute_transitions

    from scfm.tasks.scib import _diffusion_map

    labels, _, separated, _ = toy
    conn = neighbours(separated[labels == "type0"], 50).subset_neighbors(15)
    graph = conn.knn_graph_connectivities.tocsr()
    ours = _diffusion_map(graph, 20)
    evals, evecs = _compute_eigen(_compute_transitions(graph), n_comps=20)
    evals = evals + 1e-8
    theirs = evecs * np.array([e if e == 1 else e / (1 - e) for e in evals])
    # eigenvectors are defined up to sign: compare absolute values of the leading components
    np.testing.assert_allclose(np.abs(ours[:, :5]), np.abs(theirs[:, :5]), rtol=1e-3, atol=1e-4)


def test_kbet_skips_single_batch_and_tiny_labels(toy):
    labels, batches, separated, _ = toy
    nn = neighbours(separated).subset_neighbors(50)
    lab = labels.copy()
    b = batches.copy()
    b[lab == "type0"] = "a"  # one batch only: skipped
    lab[:5] = "tiny"  # five cells: skipped
    full = kbet_per_label(nn, batches, labels)
    part = kbet_per_label(nn, b, lab)
    assert 0.85 < full <= 1.0 and 0.8 < part <= 1.0
    b[:] = "a"
    b[lab == "type2"] = "b"  # every label in one batch: nothing to test
    assert np.isnan(kbet_per_label(nn, b, lab))


def test_jax_programs_are_kept_on_disk_unless_the_user_chose_a_cache(toy):
    """scib_scores keeps jax's compiled kernels in scfm's cache folder, so the next process
    does not compile them again; a cache folder the user set is left as it is."""
    import jax

    from scfm.runtime import user_cache_dir

    labels, batches, separated, _ = toy
    folder = cache_jax_compilations()
    assert folder == jax.config.jax_compilation_cache_dir
    scib_scores(separated, labels, batches)
    if folder == str(user_cache_dir("jax")):  # this session's cache (tests/conftest.py)
        assert any(p.is_file() for p in user_cache_dir("jax").rglob("*"))
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", "/elsewhere/jax-cache")
        assert cache_jax_compilations() == "/elsewhere/jax-cache"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
