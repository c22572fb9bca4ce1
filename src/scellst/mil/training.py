"""Training of the MIL model on collected bags: tensors, losses, early stopping."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import mse_loss, nb_nll, poisson_nll
from .model import MILModel, default_device
from .options import target_scaling
from .pooling import aggregate
from .split import split_spots
from .spots import TARGET_SUM, SlideBags, log_normalized

log = logging.getLogger(__name__)

#: With ``smoothing=None``, validation sets of fewer spots than this are monitored through an
#: exponential moving average of weight AUTO_SMOOTHING (measured in BENCHMARKS.md).
SMALL_VALIDATION = 20
AUTO_SMOOTHING = 0.9


def _check_same_encoder(slides: list[SlideBags]) -> None:
    dims = {s.features.shape[1] for s in slides}
    encoders = {s.encoder for s in slides}
    if len(dims) > 1 or len(encoders) > 1:
        raise ValueError(
            f"Slides were embedded differently (encoders {sorted(encoders)}, dims "
            f"{sorted(dims)}); embed all of them with the same encoder."
        )


def fit_slides(
    slides: list[SlideBags],
    genes: list[str],
    options: Mapping,
    *,
    val_slides: Sequence[SlideBags] = (),
    min_spot_counts: int,
    gene_selection: str | Sequence[str] = "list",
) -> MILModel:
    """:func:`fit` on bags already collected (:func:`~scellst.tl._spots.slide_bags`).

    ``options`` holds every training setting (:data:`~scellst.mil.options.TRAINING_OPTIONS`), as made by
    :func:`~scellst.mil.options.training_options`; ``min_spot_counts`` is the one the bags were
    collected with, and ``gene_selection`` the ``genes`` argument of :func:`fit` (recorded:
    ``"hvg:N"``/``"svg:N"``, or ``"list"`` for a list of names).
    """
    o = options
    val_slides = list(val_slides)
    _check_same_encoder(slides + val_slides)
    rng = np.random.default_rng(o["seed"])
    dev = torch.device(o["device"]) if o["device"] is not None else default_device()
    data = _Tensors.from_slides(slides, val_slides, genes, o["split"], o["val_fraction"], rng, dev)
    mse = o["loss"] == "mse"
    scaling = target_scaling(o["scale_targets"]) if mse else "none"
    config = {
        "genes": list(genes),
        "n_features": int(data.features.shape[1]),
        "feature_names": slides[0].feature_names,
        "encoder": slides[0].encoder,
        "encoder_info": slides[0].encoder_info or {"encoder": slides[0].encoder},
        "hidden": [int(h) for h in o["hidden"]],
        "dropout": float(o["dropout"]),
        "loss": o["loss"],
        "aggregation": o["aggregation"],
        # count losses always aggregate rates (linear); the choice is MSE's
        "aggregation_space": o["aggregation_space"] if mse else "linear",
        "lr": float(o["lr"]),
        "weight_decay": float(o["weight_decay"]),
        "batch_size": int(o["batch_size"]),
        "max_epochs": int(o["max_epochs"]),
        "patience": int(o["patience"]),
        "smoothing": o["smoothing"],
        "validation": "slides" if val_slides else o["split"],
        "val_fraction": 0.0 if val_slides else float(o["val_fraction"]),
        "split": o["split"],
        "seed": int(o["seed"]),
        "scale_targets": scaling,
        "min_spot_counts": int(min_spot_counts),
        "gene_selection": gene_selection if isinstance(gene_selection, str) else "list",
        "preprocessing": {
            "target": f"log1p(counts per {TARGET_SUM:,.0f} of the spot, all genes)",
            "target_sum": TARGET_SUM,
            "min_spot_counts": int(min_spot_counts),
            "size_factor": "spot total / median total of the training spots",
            "scale_targets": scaling,
        },
        "slides": [s.skipped() for s in slides],
        "validation_slides": [s.skipped() for s in val_slides],
        "n_slides": len(slides),
        "n_val_slides": len(val_slides),
    }
    config["validation_spots"] = [
        _plain_list(s.instance[data.val_of_slide(i)]) for i, s in enumerate(slides)
    ]
    return fit_tensors(data, config, progress=o["progress"])


def _plain_list(values: np.ndarray) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def fit_tensors(data: _Tensors, config: dict, *, progress: bool = False) -> MILModel:
    """Build and train a model on prepared tensors (also used by the benchmarks' oracle)."""
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    train = data.train_spots.cpu().numpy()
    n_cells = data.cells_per_spot()
    config["median_total_counts"] = float(np.median(data.total[data.train_spots].cpu().numpy()))
    config["median_cells_per_spot"] = float(np.median(n_cells[train]))
    config["n_train_spots"] = int(len(train))
    config["n_val_spots"] = int(len(data.val_spots))
    config["n_train_cells"] = int(round(n_cells[train].sum()))
    data.finish(config)
    config["target_scale"] = data.prediction_scale.tolist()
    model = MILModel.build(config)
    train_cells = data.cells_of(train)[0]
    x = data.inputs(train_cells)
    model.module.set_input_scaling(x.mean(0).cpu(), x.std(0).cpu())
    model.module.init_output(torch.as_tensor(_typical_output(data, config)))
    model.to(data.device)
    _train(model, data, config, rng, progress)
    return model


class _Tensors:
    """Training data as flat tensors: all cells of all spots grouped by spot (one feature tensor
    with per-spot offsets, no Python object per bag), spot targets, and the split."""

    def __init__(
        self,
        features: np.ndarray,
        bag: np.ndarray,
        counts: np.ndarray,
        total: np.ndarray,
        val: np.ndarray,
        slide: np.ndarray,
        device: torch.device,
        logn: np.ndarray | None = None,
        cell: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ):
        n_spots = len(total)
        order = np.argsort(bag, kind="stable")
        self.device = device
        if cell is None:  # one row of features per bag member
            self.features = torch.as_tensor(np.asarray(features, np.float32)[order], device=device)
            self.cell = None
        else:  # (cell, bag, weight) pairs: features once per cell, pair -> its cell's row
            self.features = torch.as_tensor(np.asarray(features, np.float32), device=device)
            self.cell = torch.as_tensor(np.asarray(cell, np.int64)[order], device=device)
        self.weight = None
        if weight is not None:
            self.weight = torch.as_tensor(np.asarray(weight, np.float32)[order], device=device)
        self.bag_sorted = np.asarray(bag)[order]
        sizes = np.bincount(bag, minlength=n_spots)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.counts = torch.as_tensor(np.asarray(counts, np.float32), device=device)
        self.total = torch.as_tensor(np.asarray(total, np.float32), device=device)
        if logn is None:
            logn = log_normalized(counts, total)
        self.logn = torch.as_tensor(np.asarray(logn, np.float32), device=device)
        self.slide = np.asarray(slide)
        self.val = np.asarray(val, bool)
        self.train_spots = torch.as_tensor(np.flatnonzero(~self.val), device=device)
        self.val_spots = torch.as_tensor(np.flatnonzero(self.val), device=device)
        if len(self.train_spots) == 0:
            raise ValueError(
                "No training spots left after the validation split; lower val_fraction."
            )
        if (sizes == 0).any():
            raise ValueError("Every spot needs at least one cell.")

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        """Features of the bag members ``rows`` (from :meth:`cells_of`)."""
        return self.features[rows] if self.cell is None else self.features[self.cell[rows]]

    def weights(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Pooling weights of the bag members ``rows`` (None: all 1)."""
        return None if self.weight is None else self.weight[rows]

    def cells_per_spot(self) -> np.ndarray:
        """Members of each spot (the sum of their weights with overlap-aware pooling)."""
        if self.weight is None:
            return np.diff(self.offsets).astype(np.float64)
        w = self.weight.cpu().numpy().astype(np.float64)
        return np.bincount(self.bag_sorted, weights=w, minlength=len(self.offsets) - 1)

    @classmethod
    def from_slides(cls, slides, val_slides, genes, split, val_fraction, rng, device) -> _Tensors:
        feats, bags, counts, totals, val, slide = [], [], [], [], [], []
        cells, weights = [], []
        offset = n_rows = 0
        weighted = any(s.weight is not None for s in list(slides) + list(val_slides))
        for i, s in enumerate(list(slides) + list(val_slides)):
            counts.append(s.spots[:, genes].X.toarray())
            totals.append(s.total_counts)
            feats.append(s.features)
            bags.append(s.bag + offset)
            if weighted:  # overlap-aware bags: (cell, bag, weight) pairs
                pair_cell = np.arange(len(s.bag)) if s.pair_cell is None else s.pair_cell
                cells.append(pair_cell + n_rows)
                weights.append(np.ones(len(s.bag)) if s.weight is None else s.weight)
            n_rows += len(s.features)
            offset += s.spots.n_obs
            slide.append(np.full(s.spots.n_obs, i))
            if i >= len(slides):
                val.append(np.ones(s.spots.n_obs, bool))
            elif val_slides:
                val.append(np.zeros(s.spots.n_obs, bool))
            else:
                xy = s.spots.obs[["x_um", "y_um"]].to_numpy()
                val.append(split_spots(xy, val_fraction, split, rng))
        return cls(
            np.concatenate(feats),
            np.concatenate(bags),
            np.concatenate(counts),
            np.concatenate(totals),
            np.concatenate(val),
            np.concatenate(slide),
            device,
            cell=np.concatenate(cells) if weighted else None,
            weight=np.concatenate(weights) if weighted else None,
        )

    def val_of_slide(self, i: int) -> np.ndarray:
        """Validation mask of the spots of slide ``i`` (in that slide's spot order)."""
        return self.val[self.slide == i]

    def finish(self, config: dict) -> None:
        """Scaled targets and size factors, once the training statistics are known."""
        genes = self.logn.shape[1]
        scale = np.ones((len(self.total), genes), np.float32)
        logn = self.logn.cpu().numpy()
        train = ~self.val
        self.prediction_scale = np.ones(genes, np.float32)
        if config["scale_targets"] == "global":
            self.prediction_scale = _q95(logn[train])
            scale[:] = self.prediction_scale
        elif config["scale_targets"] == "slide":
            per_train_slide = []
            for s in np.unique(self.slide):
                q = _q95(logn[self.slide == s])
                scale[self.slide == s] = q
                if train[self.slide == s].any():
                    per_train_slide.append(q)
            self.prediction_scale = np.mean(per_train_slide, axis=0).astype(np.float32)
        self.scale = torch.as_tensor(scale, device=self.device)
        self.target = self.logn / self.scale
        self.size_factor = self.total / config["median_total_counts"]

    def cells_of(self, spots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell rows and their bag index (0..len(spots)-1) for a set of spots."""
        start, stop = self.offsets[spots], self.offsets[spots + 1]
        lengths = stop - start
        bag = np.repeat(np.arange(len(spots)), lengths)
        rows = np.repeat(
            start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths
        ) + np.arange(lengths.sum())
        return torch.as_tensor(rows, device=self.device), torch.as_tensor(bag, device=self.device)


def _q95(logn: np.ndarray) -> np.ndarray:
    q = np.quantile(logn, 0.95, axis=0)
    return np.where(q > 1e-3, q, 1.0).astype(np.float32)


def _typical_output(data: _Tensors, config: dict) -> np.ndarray:
    """Per-gene starting output: the mean target, per cell."""
    tr = data.train_spots
    n_cells = config["median_cells_per_spot"] if config["aggregation"] == "sum" else 1.0
    if config["loss"] == "mse":
        target = data.target[tr].mean(0).cpu().numpy()
        if config.get("aggregation_space") == "linear":  # each cell 1/n of the spot's expression
            scale = data.prediction_scale
            return (np.log1p(np.expm1(target * scale) / n_cells) / scale).astype(np.float32)
        return (target / n_cells).astype(np.float32)
    rate = (data.counts[tr] / data.size_factor[tr][:, None]).mean(0).cpu().numpy()
    return (rate / max(n_cells, 1.0)).astype(np.float32)


def _batch_loss(model: MILModel, data: _Tensors, spots: torch.Tensor, config: dict) -> torch.Tensor:
    rows, bag = data.cells_of(spots.cpu().numpy())
    cells = model.module(data.inputs(rows))
    weight = data.weights(rows)
    if config["loss"] == "mse" and config.get("aggregation_space") == "linear":
        # the spot's expression is its cells' expression pooled: log1p(mean(expm1(log cells)))
        scale = data.scale[spots]
        expression = torch.expm1((cells * scale[bag]).clamp(max=30.0))  # no float overflow
        pooled = aggregate(expression, bag, len(spots), config["aggregation"], weight)
        return mse_loss(torch.log1p(pooled) / scale, data.target[spots])
    out = aggregate(cells, bag, len(spots), config["aggregation"], weight)
    if config["loss"] == "mse":
        return mse_loss(out, data.target[spots])
    mu = out * data.size_factor[spots][:, None]
    if config["loss"] == "nb":
        return nb_nll(data.counts[spots], mu, model.log_theta)
    return poisson_nll(data.counts[spots], mu)


def _train(model: MILModel, data: _Tensors, config: dict, rng, progress: bool) -> None:
    params = list(model.module.parameters())
    if model.log_theta is not None:
        params.append(model.log_theta)
    opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    has_val = len(data.val_spots) > 0
    alpha = config["smoothing"]
    if alpha is None:  # few validation spots give a noisy loss: follow its trend instead
        alpha = AUTO_SMOOTHING if 0 < len(data.val_spots) < SMALL_VALIDATION else 0.0
        config["smoothing"] = alpha
    best, best_state, since_best, smoothed = np.inf, None, 0, None
    bar = tqdm(range(config["max_epochs"]), desc="fit", disable=not progress, unit="epoch")
    for epoch in bar:
        model.module.train()
        order = data.train_spots[
            torch.as_tensor(rng.permutation(len(data.train_spots)), device=data.device)
        ]
        total, n = 0.0, 0
        for start in range(0, len(order), config["batch_size"]):
            spots = order[start : start + config["batch_size"]]
            loss = _batch_loss(model, data, spots, config)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(spots)
            n += len(spots)
        model.history["train_loss"].append(total / n)
        value = model.history["train_loss"][-1]
        if has_val:
            model.module.eval()
            with torch.no_grad():
                value = float(_batch_loss(model, data, data.val_spots, config))
            model.history["val_loss"].append(value)
        smoothed = value if smoothed is None else alpha * smoothed + (1 - alpha) * value
        bar.set_postfix(train=f"{model.history['train_loss'][-1]:.4f}", val=f"{value:.4f}")
        if smoothed < best - 1e-6:
            best, since_best = smoothed, 0
            best_state = (
                copy.deepcopy(model.module.state_dict()),
                (None if model.log_theta is None else model.log_theta.detach().clone()),
            )
            config["best_epoch"] = epoch
        else:
            since_best += 1
            if since_best >= config["patience"]:
                break
    bar.close()
    if best_state is not None:
        model.module.load_state_dict(best_state[0])
        if best_state[1] is not None:
            model.log_theta = best_state[1].requires_grad_(True)
    config["best_loss"] = float(best)
    config["epochs_run"] = len(model.history["train_loss"])
    model.module.eval()
    log.info(
        "fit: %d epochs, best %s loss %.4f at epoch %d",
        config["epochs_run"],
        "val" if has_val else "train",
        best,
        config.get("best_epoch", -1),
    )
