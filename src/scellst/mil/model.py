"""``MILModel``: the trained per-cell expression model, with save/load from a local directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .._torch import default_device
from .._version import __version__
from .mlp import CellMLP
from .pooling import aggregate
from .spots import TARGET_SUM

_CONFIG = "config.json"
_WEIGHTS = "weights.pt"


def spot_predictions(
    cells: dict[str, np.ndarray],
    bag: np.ndarray,
    n_spots: int,
    config: dict,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Spot predictions (``log1p`` of counts per 10,000, float64) from cell predictions.

    ``cells`` is what :meth:`MILModel.predict_cells` returns (or the ``X`` and ``"counts"``
    layer of a :func:`~scellst.tl.predict` table, rows of the cells in spots), ``bag[i]`` the
    spot (0..n_spots-1) of cell ``i``, ``config`` the model's (or its :meth:`~MILModel.summary`).
    Cells are pooled as in training: MSE in log space averages (sums) the log outputs, in linear
    space the expression; count losses add up the cells' expected counts. With ``weight`` (one
    per row, overlap-aware pooling) the rows are (cell, bin) pairs and the pooling is weighted.
    """
    how = config["aggregation"]
    n_med = float(config.get("median_cells_per_spot", 1.0))
    per_spot = n_med if how == "sum" else 1.0  # predict_cells scales "sum" cells to a whole spot
    index = torch.as_tensor(np.asarray(bag, np.int64))
    w = None if weight is None else torch.as_tensor(np.asarray(weight, np.float64))

    def pool(values: np.ndarray) -> np.ndarray:
        values = torch.as_tensor(np.asarray(values, np.float64))
        return aggregate(values, index, n_spots, how, w).numpy()

    if config["loss"] == "mse":
        log_cells = np.asarray(cells["log_normalized"], np.float64)
        if config.get("aggregation_space", "log") == "linear":
            return np.log1p(pool(np.expm1(log_cells) / per_spot))
        return pool(log_cells) / per_spot
    rate = pool(cells["counts"]) * (n_med if how == "mean" else 1.0)  # counts: per-cell share
    return np.log1p(rate * TARGET_SUM / float(config["median_total_counts"]))


class MILModel:
    """A per-cell MLP trained from spot-level expression (multiple-instance learning).

    Predictions (:meth:`predict_cells`) are per cell, in the log-normalised units of the spot
    targets (``log1p`` of counts per 10,000), and with a count loss also as the expected counts
    the cell contributes to a spot of the training slides' median depth; :meth:`predict_spots`
    aggregates them into spot predictions as in training.

    Use :func:`scellst.tl.fit` to train one; :meth:`save` / :meth:`load` to keep it. ``config``
    holds the genes, settings, preprocessing and encoder reference, ``history`` the loss curves.

    Examples
    --------
    >>> model = sst.tl.fit(sdata, genes="hvg:50")
    >>> model.save("model_dir")
    >>> model = sst.tl.MILModel.load("model_dir")  # in another session, on the CPU
    >>> sst.tl.predict(other_sdata, model)  # other_sdata: segmented and embedded
    """

    def __init__(self, config: dict, module: CellMLP, log_theta: torch.Tensor | None = None):
        self.config = config
        self.module = module
        self.log_theta = log_theta
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.device = torch.device("cpu")

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, config: dict) -> MILModel:
        """An untrained model for a configuration (as stored in ``config.json``)."""
        module = CellMLP(
            config["n_features"],
            len(config["genes"]),
            hidden=config["hidden"],
            dropout=config["dropout"],
            output="softplus" if config["loss"] == "mse" else "exp",
        )
        log_theta = torch.zeros(len(config["genes"])) if config["loss"] == "nb" else None
        return cls(config, module, log_theta)

    @property
    def genes(self) -> list[str]:
        """The predicted genes, in output order."""
        return list(self.config["genes"])

    def to(self, device: str | torch.device | None) -> MILModel:
        """Move the model to ``device`` (``None``: a GPU when available, else the CPU)."""
        self.device = torch.device(device) if device is not None else default_device()
        self.module.to(self.device)
        if self.log_theta is not None:
            self.log_theta = self.log_theta.to(self.device).detach().requires_grad_(True)
        return self

    def __repr__(self) -> str:
        c = self.config
        return (
            f"MILModel(genes={len(c['genes'])}, features={c['n_features']} [{c['encoder']}], "
            f"loss={c['loss']!r}, aggregation={c['aggregation']!r} "
            f"({c.get('aggregation_space', 'log')}), "
            f"epochs={len(self.history['train_loss'])})"
        )

    # ---- prediction -------------------------------------------------------------------------
    @torch.no_grad()
    def cell_outputs(self, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Raw network outputs for each cell (training units)."""
        self.module.eval()
        out = []
        for start in range(0, len(features), batch_size):
            x = torch.as_tensor(
                features[start : start + batch_size], dtype=torch.float32, device=self.device
            )
            out.append(self.module(x).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.config["n_features"]:
            raise ValueError(
                f"The model expects {self.config['n_features']} features per cell "
                f"({self.config['encoder']!r} embedding) but got shape {features.shape}. Embed the "
                "slide with the same encoder as the training slides."
            )
        return features

    @property
    def units(self) -> str:
        """Units of the ``log_normalized`` predictions."""
        return f"log1p(counts per {TARGET_SUM:,.0f})"

    def predict_cells(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per-cell predictions from cell embeddings.

        Returns
        -------
        dict
            ``"log_normalized"``: ``log1p`` of counts per 10,000, the units of the spot targets:
            what a spot made only of cells like this one would measure (with ``"sum"``
            aggregation, a spot of the training slides' median number of cells).
            ``"counts"`` (count losses only): expected counts that the cell contributes to a spot
            of the training slides' median depth and median number of cells.
        """
        raw = self.cell_outputs(self._check_features(features))
        c = self.config
        n_med = float(c.get("median_cells_per_spot", 1.0))
        per_spot = n_med if c["aggregation"] == "sum" else 1.0
        if c["loss"] == "mse":
            log_cell = raw * np.asarray(c["target_scale"], np.float32)
            if c.get("aggregation_space", "log") == "linear":
                return {
                    "log_normalized": np.log1p(np.expm1(log_cell) * per_spot).astype(np.float32)
                }
            return {"log_normalized": (log_cell * per_spot).astype(np.float32)}
        depth = float(c["median_total_counts"])
        log_normalized = np.log1p(raw * (per_spot * TARGET_SUM / depth)).astype(np.float32)
        counts = raw if c["aggregation"] == "sum" else raw / n_med
        return {"log_normalized": log_normalized, "counts": counts.astype(np.float32)}

    def predict_spots(
        self,
        features: np.ndarray,
        bag: np.ndarray,
        n_spots: int,
        *,
        cell: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> np.ndarray:
        """Spot predictions in log-normalised units (``log1p`` of counts per 10,000).

        The cell predictions are aggregated as in training (mean or sum over the cells of each
        spot; ``bag[i]`` is the spot, 0..n_spots-1, of cell ``i``): see :func:`spot_predictions`.
        With overlap-aware bags (square bins, ``pooling="overlap"`` in :func:`scellst.tl.fit`),
        ``bag``, ``cell`` and ``weight`` describe (cell, bin) pairs: bin ``bag[k]`` holds cell
        ``cell[k]`` (a row of ``features``) with weight ``weight[k]``.
        """
        cells = self.predict_cells(features)
        if cell is not None:
            cells = {k: v[cell] for k, v in cells.items()}
        return spot_predictions(cells, bag, n_spots, self.config, weight).astype(np.float32)

    def summary(self) -> dict:
        """Settings, preprocessing, encoder reference, skipped spots and loss curves, in a form
        that AnnData can store in ``uns`` (no ragged lists, no ``None``)."""
        c = self.config
        keys = (
            "loss", "aggregation", "aggregation_space", "encoder", "gene_selection", "scale_targets", "validation",
            "lr", "batch_size", "max_epochs", "patience", "smoothing", "seed",
            "epochs_run", "best_epoch", "best_loss", "n_train_spots", "n_val_spots",
            "n_train_cells", "median_total_counts", "median_cells_per_spot", "n_slides",
        )  # fmt: skip
        out = {k: c[k] for k in keys if k in c and c[k] is not None}
        out["encoder_info"] = c.get("encoder_info", {"encoder": c["encoder"]})
        if "bags" in c:  # how the spots' bags were made (square bins: pooling, coarsening)
            out["bags"] = {k: v for k, v in c["bags"].items() if v is not None}
        out["preprocessing"] = c.get("preprocessing", {})
        for name in ("slides", "validation_slides"):
            rows = c.get(name) or []
            if rows:
                out[name] = {k: [r[k] for r in rows] for k in rows[0]}
        out["history"] = {k: np.asarray(v, np.float64) for k, v in self.history.items()}
        return out

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write ``config.json`` and ``weights.pt`` into directory ``path``."""
        path = Path(path)
        if (path / _CONFIG).exists() and not overwrite:
            raise FileExistsError(
                f"{path} already holds a model; pass overwrite=True to replace it."
            )
        path.mkdir(parents=True, exist_ok=True)
        state = {"module": {k: v.cpu() for k, v in self.module.state_dict().items()}}
        if self.log_theta is not None:
            state["log_theta"] = self.log_theta.detach().cpu()
        torch.save(state, path / _WEIGHTS)
        payload = {"config": self.config, "history": self.history, "scellst_version": __version__}
        (path / _CONFIG).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | Path, device: str | None = "cpu") -> MILModel:
        """Load a model written by :meth:`save` (CPU by default; ``device=None`` picks the GPU)."""
        path = Path(path)
        if not (path / _CONFIG).is_file() or not (path / _WEIGHTS).is_file():
            raise FileNotFoundError(
                f"No scellst model in {path}: expected {_CONFIG} and {_WEIGHTS} written by MILModel.save."
            )
        payload = json.loads((path / _CONFIG).read_text())
        model = cls.build(payload["config"])
        state = torch.load(path / _WEIGHTS, map_location="cpu", weights_only=True)
        model.module.load_state_dict(state["module"])
        if "log_theta" in state:
            model.log_theta = state["log_theta"]
        model.history = payload.get("history", model.history)
        return model.to(device)
