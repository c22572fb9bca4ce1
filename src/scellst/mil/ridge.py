"""The linear special case of the per-cell model, solved in closed form.

A linear per-cell model ``y_cell = ((x_cell - mean) / scale) @ coef + intercept`` whose cells are
averaged over each spot predicts ``((mean_x_spot - mean) / scale) @ coef + intercept``: it is a
ridge regression on the spots' mean embeddings. :func:`fit_linear_cells` solves it through one
SVD for a whole path of penalties, chooses each gene's penalty on validation spots (or by exact
leave-one-out on the training spots when there are none) and returns the per-cell model, so
that the cells of one spot still get different predictions. The trainer uses it as a member of
the ensemble (:mod:`scellst.mil.training`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Ridge penalties tried (on standardised spot-mean features; sum of squares over the spots).
ALPHAS = np.logspace(-2, 5, 29)
#: Cell features are clipped to this many training standard deviations before prediction.
CLIP_Z = 10.0


def spot_means(
    features: np.ndarray, bag: np.ndarray, n_spots: int, weight: np.ndarray | None = None
) -> np.ndarray:
    """``(n_spots, d)`` float64: the mean feature vector of the cells of each spot (weighted by
    ``weight`` with overlap-aware bags, whose rows are (cell, bin) pairs)."""
    features = np.asarray(features, np.float64)
    w = np.ones(len(features)) if weight is None else np.asarray(weight, np.float64)
    out = np.zeros((n_spots, features.shape[1]))
    np.add.at(out, np.asarray(bag), features * w[:, None])
    total = np.bincount(bag, weights=w, minlength=n_spots)
    return out / np.where(total > 0, total, 1.0)[:, None]


@dataclass
class LinearCells:
    """A per-cell linear model on standardised features (its spot means give the ridge).

    ``cell_mean``/``cell_std`` (training cells) only sanitise inputs: non-finite values are set
    to the mean, and values are clipped to ``CLIP_Z`` standard deviations.
    """

    mean: np.ndarray  # (d,) of the training spot means
    scale: np.ndarray  # (d,) their standard deviation
    coef: np.ndarray  # (d, genes)
    intercept: np.ndarray  # (genes,)
    alpha: np.ndarray  # (genes,) chosen penalty of each gene
    cell_mean: np.ndarray  # (d,)
    cell_std: np.ndarray  # (d,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(n, genes)`` float64 per-cell outputs."""
        x = sanitize(features, self.cell_mean, self.cell_std)
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict) -> LinearCells:
        return cls(**{k: np.asarray(state[k], np.float64) for k in cls.__dataclass_fields__})


def sanitize(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Non-finite features -> the training mean; then clipped to mean ± CLIP_Z std (float64)."""
    x = np.array(features, np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = np.broadcast_to(mean, x.shape)[bad]
    return np.clip(x, mean - CLIP_Z * std, mean + CLIP_Z * std)


def fit_linear_cells(
    Z: np.ndarray,
    Y: np.ndarray,
    *,
    cell_mean: np.ndarray,
    cell_std: np.ndarray,
    Z_val: np.ndarray | None = None,
    Y_val: np.ndarray | None = None,
    alphas: np.ndarray = ALPHAS,
    alpha: float | np.ndarray | None = None,
) -> LinearCells:
    """Ridge of ``Y`` (spots × genes) on spot-mean features ``Z`` (spots × d), as a cell model.

    Features are standardised with the training spots' mean and standard deviation (ddof 0, as
    scikit-learn's ``StandardScaler``); the intercept is not penalised (as ``Ridge``). Each
    gene's penalty is ``alpha`` when given, else the one of ``alphas`` with the lowest squared
    error on the validation spots ``Z_val, Y_val``, or, without them, the lowest exact
    leave-one-out error on the training spots.
    """
    Z, Y = np.asarray(Z, np.float64), np.asarray(Y, np.float64)
    mean = Z.mean(0)
    scale = Z.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Xs = (Z - mean) / scale
    y_mean = Y.mean(0)
    U, S, Vt = np.linalg.svd(Xs, full_matrices=False)
    UtY = U.T @ (Y - y_mean)
    n_genes = Y.shape[1]
    if alpha is not None:
        chosen = np.broadcast_to(np.asarray(alpha, np.float64), (n_genes,)).copy()
    else:
        alphas = np.asarray(alphas, np.float64)
        errors = np.empty((len(alphas), n_genes))
        if Z_val is not None and len(Z_val):
            XvV = ((np.asarray(Z_val, np.float64) - mean) / scale) @ Vt.T
            for i, a in enumerate(alphas):
                pred = XvV @ ((S / (S**2 + a))[:, None] * UtY) + y_mean
                errors[i] = np.mean((pred - Y_val) ** 2, axis=0)
        else:  # exact leave-one-out of ridge with an unpenalised intercept
            resid0 = Y - y_mean
            for i, a in enumerate(alphas):
                shrink = S**2 / (S**2 + a)
                fitted = U @ (shrink[:, None] * UtY)
                h = (U**2) @ shrink + 1.0 / len(Z)
                errors[i] = np.mean(((resid0 - fitted) / (1 - h)[:, None]) ** 2, axis=0)
        chosen = alphas[np.argmin(np.nan_to_num(errors, nan=np.inf), axis=0)]
    coef = Vt.T @ ((S[:, None] / (S[:, None] ** 2 + chosen[None, :])) * UtY)
    return LinearCells(
        mean=mean,
        scale=scale,
        coef=coef,
        intercept=y_mean,
        alpha=chosen,
        cell_mean=np.asarray(cell_mean, np.float64),
        cell_std=np.where(np.asarray(cell_std) > 1e-8, np.asarray(cell_std, np.float64), 1.0),
    )
