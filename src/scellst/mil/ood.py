"""Out-of-distribution cells: how far a cell's embedding lies from the training cells'.

:class:`FeatureDistribution` is fitted on the training cells' embeddings: features standardised
per dimension, a Mahalanobis distance in the span of the leading principal components (at most
:data:`MAX_COMPONENTS`) plus the remaining energy scaled by the mean variance of the other
directions, divided by the number of features and square-rooted (about 1 for a typical training
cell). The threshold is the :data:`QUANTILE` quantile of the training cells' distances; cells
above it, or with non-finite features, are flagged by :func:`~scellst.tl.predict`.

Only the cell's own features count (the first ``n_used`` columns), not the neighbourhood
context that :func:`~scellst.tl.embed` appends: the context of a new slide is a new arrangement
of known cells, and with it 99 % of the cells of a second synthetic slide from the same
generator were flagged (0.3 % without).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_COMPONENTS = 50
#: Quantile of the training cells' distances used as the flagging threshold.
QUANTILE = 0.999
#: Standardised value given to non-finite features (far out, but finite).
NONFINITE_Z = 1e3


@dataclass
class FeatureDistribution:
    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float
    threshold: float
    n_used: int = 0  # leading feature columns used (0: all, models saved before it existed)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        *,
        n_used: int | None = None,
        max_cells: int = 100_000,
        seed: int = 0,
    ) -> FeatureDistribution:
        n_used = int(n_used or np.shape(features)[1])
        x = np.asarray(features, np.float64)[:, :n_used]
        x = x[np.isfinite(x).all(1)]
        if len(x) > max_cells:
            x = x[np.random.default_rng(seed).choice(len(x), max_cells, replace=False)]
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        z = (x - mean) / std
        d = z.shape[1]
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        var = s**2 / max(len(z) - 1, 1)
        k = int(min(MAX_COMPONENTS, d, max(len(z) - 1, 1)))
        rest = var[k:]
        residual = float(rest.mean()) if len(rest) and rest.mean() > 1e-12 else 1.0
        dist = cls(mean, std, vt[:k], np.maximum(var[:k], 1e-12), residual, np.inf, n_used)
        train = dist.distance(x)
        dist.threshold = float(np.quantile(train, QUANTILE)) if len(train) else np.inf
        return dist

    def distance(self, features: np.ndarray) -> np.ndarray:
        """``(n,)`` float64, finite: the normalised distance of each cell to the training cells."""
        n = self.n_used or len(self.mean)
        z = (np.asarray(features, np.float64)[:, :n] - self.mean) / self.std
        z = np.where(np.isfinite(z), z, NONFINITE_Z)
        z = np.clip(z, -NONFINITE_Z, NONFINITE_Z)
        p = z @ self.components.T
        resid = np.maximum((z**2).sum(1) - (p**2).sum(1), 0.0)
        d2 = (p**2 / self.variances).sum(1) + resid / self.residual_variance
        return np.sqrt(d2 / z.shape[1])

    def flag(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distance of each cell and whether it is out of distribution (above the
        threshold, or with any non-finite feature)."""
        features = np.asarray(features)
        dist = self.distance(features)
        return dist, (dist > self.threshold) | ~np.isfinite(features).all(1)

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k), np.float64) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict) -> FeatureDistribution:
        kw = {k: np.asarray(state[k], np.float64) for k in cls.__dataclass_fields__ if k in state}
        kw = {k: v for k, v in kw.items() if k != "n_used"}
        kw["n_used"] = int(state["n_used"]) if "n_used" in state else 0
        kw["residual_variance"] = float(kw["residual_variance"])
        kw["threshold"] = float(kw["threshold"])
        return cls(**kw)
