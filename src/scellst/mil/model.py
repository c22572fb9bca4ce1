"""``MILModel``: the trained per-cell expression model, with save/load from a local directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._torch import default_device
from .._version import __version__
from .mlp import CellMLP
from .ood import FeatureDistribution
from .pooling import aggregate
from .ridge import LinearCells
from .spots import TARGET_SUM, embedding_context

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


#: Largest possible prediction in ``log1p`` of counts per 10,000: a cell or spot made of one gene.
MAX_LOG_NORMALIZED = float(np.log1p(TARGET_SUM))


class MILModel:
    """A per-cell expression model trained from spot-level expression (multiple-instance
    learning): a small ensemble of per-cell MLPs, each blended per gene with a per-cell linear
    model (the closed-form ridge on spot-mean embeddings, :mod:`scellst.mil.ridge`) by a weight
    chosen on validation spots.

    Predictions (:meth:`predict_cells`) are per cell, in the log-normalised units of the spot
    targets (``log1p`` of counts per 10,000), finite, and clipped to ``[0, ceiling]`` with a
    per-gene ceiling derived from the training targets (never above ``log1p(10,000)``); with a
    count loss also as the expected counts the cell contributes to a spot of the training
    slides' median depth. The spread of the members is the per-cell uncertainty;
    :meth:`out_of_distribution` flags cells unlike the training cells. :meth:`predict_spots`
    aggregates cells into spot predictions as in training.

    Use :func:`scellst.tl.fit` to train one; :meth:`save` / :meth:`load` to keep it. ``config``
    holds the genes, settings, preprocessing, encoder reference, and under ``"ensemble"`` the
    members, the validation scores of each candidate and what was chosen; ``history`` holds the
    loss curves of the first member.

    Examples
    --------
    >>> model = sst.tl.fit(sdata, genes="hvg:50")
    >>> model.config["ensemble"]["validation_pearson"]  # each candidate's validation score
    >>> model.save("model_dir")
    >>> model = sst.tl.MILModel.load("model_dir")  # in another session, on the CPU
    >>> sst.tl.predict(other_sdata, model)  # other_sdata: segmented and embedded
    """

    def __init__(
        self,
        config: dict,
        module: CellMLP,
        log_theta: torch.Tensor | None = None,
        *,
        members: Sequence[CellMLP] = (),
        ridges: Sequence[LinearCells] = (),
        ood: FeatureDistribution | None = None,
    ):
        self.config = config
        self.members: list[CellMLP] = [module, *members]
        self.ridges: list[LinearCells] = list(ridges)
        self.ood = ood
        self.log_theta = log_theta
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.device = torch.device("cpu")

    @property
    def module(self) -> CellMLP:
        """The first member's network."""
        return self.members[0]

    # ---- construction -----------------------------------------------------------------------
    @staticmethod
    def network(config: dict) -> CellMLP:
        """An untrained member network for a configuration."""
        return CellMLP(
            config["n_features"],
            len(config["genes"]),
            hidden=config["hidden"],
            dropout=config["dropout"],
            output="softplus" if config["loss"] == "mse" else "exp",
        )

    @classmethod
    def build(cls, config: dict) -> MILModel:
        """An untrained model for a configuration (as stored in ``config.json``)."""
        n = int(config.get("n_members", 1))
        nets = [cls.network(config) for _ in range(n)]
        log_theta = torch.zeros(len(config["genes"])) if config["loss"] == "nb" else None
        return cls(config, nets[0], log_theta, members=nets[1:])

    @property
    def genes(self) -> list[str]:
        """The predicted genes, in output order."""
        return list(self.config["genes"])

    def to(self, device: str | torch.device | None) -> MILModel:
        """Move the model to ``device`` (``None``: a GPU when available, else the CPU)."""
        self.device = torch.device(device) if device is not None else default_device()
        for net in self.members:
            net.to(self.device)
        if self.log_theta is not None:
            self.log_theta = self.log_theta.to(self.device).detach().requires_grad_(True)
        return self

    def __repr__(self) -> str:
        c = self.config
        return (
            f"MILModel(genes={len(c['genes'])}, features={c['n_features']} [{c['encoder']}], "
            f"loss={c['loss']!r}, aggregation={c['aggregation']!r} "
            f"({c.get('aggregation_space', 'log')}), members={len(self.members)}, "
            f"epochs={len(self.history['train_loss'])})"
        )

    # ---- prediction -------------------------------------------------------------------------
    @torch.no_grad()
    def member_outputs(self, features: np.ndarray) -> np.ndarray:
        """``(members, cells, genes)`` raw outputs (training units) of each member: its network,
        blended per gene with its linear model when the model has them."""
        x = torch.as_tensor(np.asarray(features, np.float32), device=self.device)
        out = []
        w = np.asarray(self.config.get("blend_weight", np.ones(len(self.genes))), np.float64)
        for k, net in enumerate(self.members):
            net.eval()
            raw = net(x).cpu().numpy().astype(np.float64) if w.any() else 0.0
            if self.ridges:
                raw = w * raw + (1 - w) * self.ridges[k].predict(features)
            out.append(np.broadcast_to(raw, (len(x), len(self.genes))))
        return np.stack(out)

    def cell_outputs(self, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Raw outputs for each cell (training units), averaged over the members."""
        features = self._check_features(features)
        out = [
            self.member_outputs(features[s : s + batch_size]).mean(0)
            for s in range(0, len(features), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)))

    def _check_features(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.config["n_features"]:
            radii, stats = embedding_context(self.config.get("encoder_info") or {})
            context = (
                f"context_um={list(radii)}, context_stats={list(stats)}"
                if radii
                else "context_um=0"
            )
            raise ValueError(
                f"The model expects {self.config['n_features']} features per cell "
                f"({self.config['encoder']!r} embedding, neighbourhood {context}) but got shape "
                f"{features.shape}. Embed the slide as the training slides were: "
                f"sst.tl.embed(sdata, encoder={self.config['encoder']!r}, {context})."
            )
        return features

    @property
    def units(self) -> str:
        """Units of the ``log_normalized`` predictions."""
        return f"log1p(counts per {TARGET_SUM:,.0f})"

    @property
    def ceiling(self) -> np.ndarray:
        """Per-gene upper bound of the cell predictions (``log1p`` of counts per 10,000)."""
        c = np.asarray(self.config.get("ceiling", MAX_LOG_NORMALIZED), np.float64)
        c = np.minimum(np.broadcast_to(c, (len(self.genes),)), MAX_LOG_NORMALIZED)
        c32 = c.astype(np.float32)  # predictions are float32: round the bound down, not up
        c32 = np.where(c32.astype(np.float64) > c, np.nextafter(c32, np.float32(0)), c32)
        return c32.astype(np.float64)

    def predict_cells(self, features: np.ndarray, batch_size: int = 65536) -> dict[str, np.ndarray]:
        """Per-cell predictions from cell embeddings.

        Returns
        -------
        dict
            ``"log_normalized"``: ``log1p`` of counts per 10,000, the units of the spot targets:
            what a spot made only of cells like this one would measure (with ``"sum"``
            aggregation, a spot of the training slides' median number of cells); finite, in
            ``[0, ceiling]``. ``"spread"``: the standard deviation of the members' predictions
            (same units; 0 for a single member). ``"counts"`` (count losses only): expected
            counts that the cell contributes to a spot of the training slides' median depth and
            median number of cells.
        """
        features = self._check_features(features)
        parts = [
            self._units(self.member_outputs(features[s : s + batch_size]))
            for s in range(0, len(features), batch_size)
        ]
        if not parts:
            empty = np.zeros((0, len(self.genes)), np.float32)
            out = {"log_normalized": empty, "spread": empty}
            return {**out, "counts": empty} if self.config["loss"] != "mse" else out
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _units(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Members' raw outputs ``(members, cells, genes)`` -> clipped ensemble predictions."""
        c = self.config
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e30, neginf=0.0)
        n_med = float(c.get("median_cells_per_spot", 1.0))
        per_spot = n_med if c["aggregation"] == "sum" else 1.0
        top = self.ceiling
        if c["loss"] == "mse":
            log_cell = np.minimum(raw * np.asarray(c["target_scale"], np.float64), top)
            if c.get("aggregation_space", "log") == "linear":
                log_cell = np.log1p(np.expm1(np.maximum(log_cell, 0.0)) * per_spot)
            else:
                log_cell = log_cell * per_spot
            members = np.clip(log_cell, 0.0, top)
            return {
                "log_normalized": members.mean(0).astype(np.float32),
                "spread": members.std(0).astype(np.float32),
            }
        depth = float(c["median_total_counts"])
        to_log = per_spot * TARGET_SUM / depth
        raw = np.clip(raw, 0.0, np.expm1(top) / to_log)
        members = np.log1p(raw * to_log)
        mean = raw.mean(0)
        counts = mean if c["aggregation"] == "sum" else mean / n_med
        return {
            "log_normalized": np.log1p(mean * to_log).astype(np.float32),
            "spread": members.std(0).astype(np.float32),
            "counts": counts.astype(np.float32),
        }

    def out_of_distribution(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per cell: the distance of its embedding to the training cells' (about 1 for a typical
        training cell, :mod:`scellst.mil.ood`) and whether it is above the threshold recorded in
        ``config["ood"]`` or has non-finite features. Models saved before this existed return
        NaN distances and no flag."""
        features = self._check_features(features)
        if self.ood is None:
            return np.full(len(features), np.nan), ~np.isfinite(features).all(1)
        return self.ood.flag(features)

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
        """Settings, preprocessing, encoder reference, skipped spots, ensemble choice and loss
        curves, in a form that AnnData can store in ``uns`` (no ragged lists, no ``None``)."""
        c = self.config
        keys = (
            "loss", "aggregation", "aggregation_space", "encoder", "gene_selection", "scale_targets", "validation",
            "lr", "batch_size", "max_epochs", "patience", "smoothing", "seed",
            "epochs_run", "best_epoch", "best_loss", "n_train_spots", "n_val_spots",
            "n_train_cells", "median_total_counts", "median_cells_per_spot", "n_slides",
            "n_members", "blend", "ceiling", "blend_weight",
        )  # fmt: skip
        out = {k: c[k] for k in keys if k in c and c[k] is not None}
        out["encoder_info"] = c.get("encoder_info", {"encoder": c["encoder"]})
        if "bags" in c:  # how the spots' bags were made (square bins: pooling, coarsening)
            out["bags"] = {k: v for k, v in c["bags"].items() if v is not None}
        out["preprocessing"] = c.get("preprocessing", {})
        if "ood" in c:
            out["ood"] = dict(c["ood"])
        ens = c.get("ensemble")
        if ens:
            out["ensemble"] = {k: v for k, v in ens.items() if k != "members"}
            rows = ens.get("members") or []
            if rows:
                out["ensemble"]["members"] = {k: [r[k] for r in rows] for k in rows[0]}
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
        state = {"module": _cpu_state(self.members[0])}
        if len(self.members) > 1:
            state["members"] = [_cpu_state(m) for m in self.members[1:]]
        if self.log_theta is not None:
            state["log_theta"] = self.log_theta.detach().cpu()
        if self.ridges:
            state["ridges"] = [_tensors(r.state()) for r in self.ridges]
        if self.ood is not None:
            state["ood"] = _tensors(self.ood.state())
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
        model.members[0].load_state_dict(state["module"])
        for net, member in zip(model.members[1:], state.get("members", []), strict=True):
            net.load_state_dict(member)
        model.ridges = [LinearCells.from_state(_arrays(r)) for r in state.get("ridges", [])]
        if "ood" in state:
            model.ood = FeatureDistribution.from_state(_arrays(state["ood"]))
        if "log_theta" in state:
            model.log_theta = state["log_theta"]
        model.history = payload.get("history", model.history)
        return model.to(device)


def _cpu_state(net: CellMLP) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in net.state_dict().items()}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in arrays.items()}


def _arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}
