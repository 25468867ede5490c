"""Metrics are computed from the confusion matrix; scikit-learn is the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion

from scfm.tasks.metrics import classification_metrics, slug


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = np.array(["B", "CD4T", "CD8T", "NK", "Mono"])
    y_true = rng.choice(classes, size=300, p=[0.1, 0.4, 0.2, 0.2, 0.1])
    # a noisy classifier that never predicts "Mono" and sometimes an extra label
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(classes[:4], size=300))
    y_pred[y_true == "Mono"] = "NK"
    y_pred[:5] = "Dendritic"
    scored = ["B", "CD4T", "CD8T", "NK"]
    m = classification_metrics(y_true, y_pred, scored=scored)
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, labels=scored, average="macro", zero_division=0)
    )
    per = f1_score(y_true, y_pred, labels=m.labels, average=None, zero_division=0)
    for label, value in zip(m.labels, per, strict=True):
        if label == "Dendritic":  # predicted, never true: F1 0 as in sklearn
            assert m.per_class_f1[label] == 0.0
        else:
            assert m.per_class_f1[label] == pytest.approx(value)
    assert m.per_class_f1["Mono"] == 0.0  # true but never predicted
    np.testing.assert_array_equal(m.confusion, sk_confusion(y_true, y_pred, labels=m.labels))
    assert 0.0 <= m.macro_f1 <= 1.0 and 0.0 <= m.accuracy <= 1.0


def test_default_scored_classes_are_the_true_ones():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    assert m.scored == ["a", "b", "c"]
    assert m.macro_f1 == pytest.approx(
        f1_score(["a", "a", "b", "c"], ["a", "b", "b", "a"], average="macro", zero_division=0)
    )
    assert m.accuracy == 0.5


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="equally long"):
        classification_metrics(["a"], ["a", "b"])


def test_slug_is_metric_key_safe():
    assert slug("LR on PCA(50) of HVGs") == "lr_on_pca_50_of_hvgs"
    assert slug("CD14+ Monocyte") == "cd14_monocyte"
