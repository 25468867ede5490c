"""The annotation head on real embeddings: training, metrics, determinism, save/load,
and fine-tuning the last encoder layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from scfm.tasks.annotation import (
    AnnotationHead,
    EmbeddingData,
    PackedCellData,
    balanced_weights,
    predict_labels,
)
from scfm.tasks.base import HEAD_FILE, fit_head, load_head, save_head
from scfm.tasks.labelled import class_table, scored_classes
from scfm.tasks.metrics import classification_metrics

FAST = {"max_epochs": 12, "patience": 12, "hidden_dim": 64, "lr": 3e-3}


@pytest.fixture(scope="module")
def kang_head(kang_quarter, kang_quarter_embeddings):
    data, split = kang_quarter
    module = EmbeddingData.from_split(kang_quarter_embeddings, data.labels, split)
    return module, fit_head(AnnotationHead(), module, FAST, device="cpu")


def test_embeddings_come_from_the_trained_model(
    kang_quarter, kang_quarter_embeddings, tiny_trained
):
    data, _ = kang_quarter
    assert tiny_trained.label == "scfm-tiny (3 steps)"
    assert kang_quarter_embeddings.shape == (data.n_cells, 4 * tiny_trained.model.cfg.enc_dim)
    assert np.isfinite(kang_quarter_embeddings).all()


def test_head_metrics_match_sklearn_on_kang(kang_quarter, kang_head):
    data, split = kang_quarter
    module, fit = kang_head
    pred = predict_labels(fit.model, module, "test")
    y_test = data.labels[split.test]
    scored = scored_classes(class_table(data.labels, split))
    m = classification_metrics(y_test, pred, scored=scored)
    assert m.accuracy == pytest.approx(accuracy_score(y_test, pred))
    assert m.macro_f1 == pytest.approx(f1_score(y_test, pred, labels=scored, average="macro"))
    assert 1.0 / len(scored) < m.macro_f1 <= 1.0
    # the history's best validation epoch is the one whose weights were kept
    best = max(fit.history, key=lambda h: h["val_macro_f1"])
    assert fit.best_epoch == int(best["epoch"])
    val = predict_labels(fit.model, module, "val")
    assert f1_score(data.labels[split.val], val, average="macro") == pytest.approx(
        best["val_macro_f1"]
    )


def test_training_is_deterministic(kang_quarter, kang_quarter_embeddings, kang_head):
    data, split = kang_quarter
    module, fit = kang_head
    again = fit_head(AnnotationHead(), module, FAST, device="cpu")
    for k, v in fit.model.state_dict().items():
        torch.testing.assert_close(v, again.model.state_dict()[k], rtol=0, atol=0)


def test_head_round_trips_through_weights_only_checkpoint(tmp_path, kang_head):
    module, fit = kang_head
    save_head(tmp_path, fit.model, fit.config, fit.spec, {"epoch": fit.best_epoch})
    payload = torch.load(tmp_path / HEAD_FILE, weights_only=True)
    assert payload["spec"]["classes"] == module.classes
    model, _ = load_head(tmp_path, AnnotationHead())
    np.testing.assert_array_equal(
        predict_labels(model, module, "test"), predict_labels(fit.model, module, "test")
    )


def test_balanced_class_weights(kang_quarter, kang_quarter_embeddings):
    data, split = kang_quarter
    module = EmbeddingData.from_split(kang_quarter_embeddings, data.labels, split)
    w = balanced_weights(module, len(module.classes)).numpy()
    y = data.labels[split.train_only]
    for i, c in enumerate(module.classes):
        assert w[i] == pytest.approx(len(y) / (len(module.classes) * (y == c).sum()), rel=1e-6)


@pytest.mark.slow
def test_finetuning_the_last_encoder_layer(kang_quarter, tiny_trained, tmp_path):
    """Only the last encoder layer (and the final norm) and the MLP change."""
    from scfm.data.genes import GeneVocab
    from scfm.tasks.labelled import SplitConfig, make_split

    data, _ = kang_quarter
    rng = np.random.default_rng(0)
    few = np.sort(rng.choice(data.n_cells, 80, replace=False))
    sub_labels = data.labels[few]
    split = make_split(
        type(data)(data.counts[few], data.var_names, data.obs.iloc[few], sub_labels),
        SplitConfig(test_size=0.3),
    )
    counts = data.counts[few]
    vocab = GeneVocab.load().map(data.var_names).apply(counts)
    module = PackedCellData.from_split(
        vocab,
        np.asarray(counts.sum(axis=1)).ravel(),
        sub_labels,
        split,
        tiny_trained.model.cfg.to_dict(),
        finetune_layers=1,
    )
    state = {k: v.clone() for k, v in tiny_trained.model.state_dict().items()}
    head = AnnotationHead(backbone_state=state)
    fit = fit_head(
        head, module, {"max_epochs": 1, "batch_size": 32, "hidden_dim": 32}, device="cpu"
    )
    after = fit.model.backbone.state_dict()
    last = len(tiny_trained.model.encoder.layers) - 1
    changed = {k for k, v in after.items() if not torch.equal(v, state[k])}
    assert any(k.startswith(f"encoder.layers.{last}.") for k in changed)
    assert all(k.startswith((f"encoder.layers.{last}.", "encoder.norm.")) for k in changed)
    save_head(tmp_path, fit.model, fit.config, fit.spec)
    model, payload = load_head(tmp_path, AnnotationHead())
    assert payload["spec"]["finetune_layers"] == 1
    np.testing.assert_array_equal(
        predict_labels(model, module, "test"), predict_labels(fit.model, module, "test")
    )
