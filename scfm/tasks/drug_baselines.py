"""Simple drug-response baselines, fitted on training pairs only, for the same splits as DeepCDR.

* :class:`DrugMean` — each drug's mean ln(IC50) over its training pairs (global mean for an
  unseen drug). The published DeepCDR expression baseline behaves like this (docs).
* :class:`Additive` — ``y ≈ μ + a_drug + b_cell``, fitted by alternating least squares on the
  training pairs (a two-way ANOVA fit, unbalanced). An unseen cell line falls back to
  ``μ + a_drug``, an unseen drug to ``μ + b_cell``, both unseen to ``μ``; :meth:`Additive.fallbacks`
  counts how often that happened, and the evaluation reports it.
* :class:`RidgeBaseline` — ridge regression on [PCA of the standardized cell-line expression
  (fitted on training cell lines), drug features]: a drug one-hot when every test drug was seen
  in training, a Morgan fingerprint otherwise (leave-drugs-out).

The raw-expression DeepCDR branch, the fourth baseline, is a :class:`~scfm.tasks.deepcdr` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALS_ITERATIONS = 30


@dataclass
class DrugMean:
    """Per-drug training mean; an unseen drug gets the global training mean."""

    n_drugs: int
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    mu: float = 0.0

    def fit(self, cell: np.ndarray, drug: np.ndarray, y: np.ndarray) -> DrugMean:
        self.mu = float(np.mean(y))
        sums = np.bincount(drug, weights=y, minlength=self.n_drugs)
        counts = np.bincount(drug, minlength=self.n_drugs)
        self.seen = counts > 0
        self.means = np.where(self.seen, sums / np.maximum(counts, 1), self.mu)
        return self

    def predict(self, cell: np.ndarray, drug: np.ndarray) -> np.ndarray:
        return self.means[drug]

    def fallbacks(self, cell: np.ndarray, drug: np.ndarray) -> dict[str, int]:
        return {"unseen_drug": int((~self.seen[drug]).sum())}


@dataclass
class Additive:
    """``μ + a_drug + b_cell`` by alternating least squares (effects of unseen units are 0)."""

    n_cells: int
    n_drugs: int
    n_iter: int = ALS_ITERATIONS
    mu: float = 0.0
    a: np.ndarray = field(default_factory=lambda: np.zeros(0))  # drug effects
    b: np.ndarray = field(default_factory=lambda: np.zeros(0))  # cell-line effects
    seen_cell: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    seen_drug: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def fit(self, cell: np.ndarray, drug: np.ndarray, y: np.ndarray) -> Additive:
        y = np.asarray(y, dtype=np.float64)
        self.mu = float(y.mean())
        n_cell = np.bincount(cell, minlength=self.n_cells)
        n_drug = np.bincount(drug, minlength=self.n_drugs)
        self.seen_cell, self.seen_drug = n_cell > 0, n_drug > 0
        a, b = np.zeros(self.n_drugs), np.zeros(self.n_cells)
        r = y - self.mu
        for _ in range(self.n_iter):
            a = np.bincount(drug, weights=r - b[cell], minlength=self.n_drugs) / np.maximum(
                n_drug, 1
            )
            b = np.bincount(cell, weights=r - a[drug], minlength=self.n_cells) / np.maximum(
                n_cell, 1
            )
        shift = b[self.seen_cell].mean() if self.seen_cell.any() else 0.0
        self.a, self.b = a + shift, b - shift  # centre the cell effects (identifiability)
        self.b[~self.seen_cell] = 0.0
        self.a[~self.seen_drug] = 0.0
        return self

    def predict(self, cell: np.ndarray, drug: np.ndarray) -> np.ndarray:
        return self.mu + self.a[drug] + self.b[cell]

    def fallbacks(self, cell: np.ndarray, drug: np.ndarray) -> dict[str, int]:
        """Test pairs predicted without a cell-line effect, a drug effect, or either."""
        uc, ud = ~self.seen_cell[cell], ~self.seen_drug[drug]
        return {
            "unseen_cell_line": int((uc & ~ud).sum()),
            "unseen_drug": int((ud & ~uc).sum()),
            "unseen_both": int((uc & ud).sum()),
        }


@dataclass
class RidgeBaseline:
    """Ridge on [PCA(``n_components``) of standardized expression, drug one-hot or fingerprint]."""

    n_components: int = 50
    alpha: float = 1.0
    seed: int = 0
    drug_features: str = "onehot"  # set by fit: "onehot" or "morgan"

    def fit(
        self,
        cell: np.ndarray,
        drug: np.ndarray,
        y: np.ndarray,
        cell_features: np.ndarray,
        fingerprints: np.ndarray,
        *,
        use_fingerprints: bool,
    ) -> RidgeBaseline:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge

        lines = np.unique(cell)
        X = cell_features[lines].astype(np.float64)
        self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0)
        self.std_[self.std_ < 1e-8] = 1.0
        k = int(min(self.n_components, lines.size - 1, X.shape[1]))
        self.pca_ = PCA(n_components=max(k, 1), random_state=self.seed).fit(
            (X - self.mean_) / self.std_
        )
        self.cell_pcs_ = self.pca_.transform((cell_features - self.mean_) / self.std_)
        self.cell_pcs_ /= max(float(self.cell_pcs_[lines].std()), 1e-8)
        self.drug_features = "morgan" if use_fingerprints else "onehot"
        import scipy.sparse as sp

        n_drugs = fingerprints.shape[0]
        self.drug_matrix_ = sp.csr_matrix(fingerprints if use_fingerprints else sp.eye(n_drugs))
        self.model_ = Ridge(alpha=self.alpha, solver="lsqr").fit(self._design(cell, drug), y)
        return self

    def _design(self, cell: np.ndarray, drug: np.ndarray):
        import scipy.sparse as sp

        return sp.hstack([sp.csr_matrix(self.cell_pcs_[cell]), self.drug_matrix_[drug]]).tocsr()

    def predict(self, cell: np.ndarray, drug: np.ndarray) -> np.ndarray:
        return self.model_.predict(self._design(cell, drug))
