"""Training of the MIL model on collected bags: tensors, losses, early stopping."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .evaluate import pearson_per_gene
from .losses import nb_nll, poisson_nll
from .model import MAX_LOG_NORMALIZED, MILModel, default_device, spot_predictions
from .ood import QUANTILE, FeatureDistribution
from .options import target_scaling
from .pooling import aggregate
from .ridge import LinearCells, fit_linear_cells, spot_means
from .split import split_spots
from .spots import TARGET_SUM, SlideBags, embedding_context, log_normalized

log = logging.getLogger(__name__)

#: With ``smoothing=None``, validation sets of fewer spots than this are monitored through an
#: exponential moving average of weight AUTO_SMOOTHING (measured in BENCHMARKS.md).
SMALL_VALIDATION = 20
AUTO_SMOOTHING = 0.9
#: Members of the ensemble when ``members=None`` and not one per training slide.
AUTO_MEMBERS = 3
#: With ``members=None``, up to this many training slides get one member each.
MAX_SLIDE_MEMBERS = 5
#: MLP weights tried per gene in the blend ``w * MLP + (1 - w) * ridge`` (1: the MLP alone).
BLEND_GRID = [1.0, 0.75, 0.5, 0.25, 0.0]
#: Training cells sampled to fit the out-of-distribution statistics.
OOD_CELLS = 20_000


def _check_same_encoder(slides: list[SlideBags]) -> None:
    dims = {s.features.shape[1] for s in slides}
    encoders = {s.encoder for s in slides}
    contexts = {embedding_context(s.encoder_info or {}) for s in slides}
    if len(dims) > 1 or len(encoders) > 1 or len(contexts) > 1:
        raise ValueError(
            f"Slides were embedded differently (encoders {sorted(encoders)}, dims "
            f"{sorted(dims)}, neighbourhood contexts {sorted(contexts)}); embed all of them "
            "with the same encoder and context_um."
        )


def fit_slides(
    slides: list[SlideBags],
    genes: list[str],
    options: Mapping,
    *,
    val_slides: Sequence[SlideBags] = (),
    min_spot_counts: int,
    gene_selection: str | Sequence[str] = "list",
    slide_names: Sequence[str] | None = None,
) -> MILModel:
    """:func:`fit` on bags already collected (:func:`~scellst.tl._spots.slide_bags`).

    ``options`` holds every training setting (:data:`~scellst.mil.options.TRAINING_OPTIONS`), as made by
    :func:`~scellst.mil.options.training_options`; ``min_spot_counts`` is the one the bags were
    collected with, and ``gene_selection`` the ``genes`` argument of :func:`fit` (recorded:
    ``"hvg:N"``/``"svg:N"``, or ``"list"`` for a list of names). ``slide_names`` name the
    training slides in messages and in ``config`` (default ``"slide 0"``, ...).
    """
    o = options
    val_slides = list(val_slides)
    _check_same_encoder(slides + val_slides)
    names = (
        [str(n) for n in slide_names] if slide_names else [f"slide {i}" for i in range(len(slides))]
    )
    if len(names) != len(slides):
        raise ValueError(f"{len(names)} slide names for {len(slides)} slides.")
    dev = torch.device(o["device"]) if o["device"] is not None else default_device()
    data = _Tensors.from_slides(slides, val_slides, genes, dev)
    plans = member_plans(data, slides, val_slides, o, names)
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
        "validation": "slides" if val_slides else plans[0]["kind"],
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
        "slide_names": names,
        "validation_slides": [s.skipped() for s in val_slides],
        "n_slides": len(slides),
        "n_val_slides": len(val_slides),
        "n_members": len(plans),
        "blend": o["blend"] if mse else "mlp",
        "slide_offsets": bool(o["slide_offsets"]) and mse,
    }
    # the first member's validation spots, per training slide (as sst.tl.evaluate takes them)
    config["validation_spots"] = [
        _plain_list(s.instance[plans[0]["val"][data.slide == i]]) for i, s in enumerate(slides)
    ]
    return fit_ensemble(data, config, plans, progress=o["progress"])


def member_plans(
    data: _Tensors, slides, val_slides, options: Mapping, names: Sequence[str]
) -> list[dict]:
    """The validation spots of each ensemble member (``options["members"]``).

    ``None`` (auto): with validation slides, three members (seeds) validated on them; with 2 to
    :data:`MAX_SLIDE_MEMBERS` training slides, one member per training slide, validated on that
    whole slide and trained on the others; otherwise three members with different
    ``split`` / ``val_fraction`` splits of every slide. An integer: that many members with
    different splits (validated on the validation slides, when given).
    """
    n = options["members"]
    seed = int(options["seed"])
    if val_slides:
        return [
            {
                "val": data.val.copy(),
                "kind": "slides",
                "name": f"validation slides, seed {seed + k}",
            }
            for k in range(n or AUTO_MEMBERS)
        ]
    if n is None and 2 <= len(slides) <= MAX_SLIDE_MEMBERS:
        return [
            {"val": data.slide == i, "kind": "held-out slide", "name": f"validate on {names[i]}"}
            for i in range(len(slides))
        ]
    plans = []
    for k in range(n or AUTO_MEMBERS):
        rng = np.random.default_rng(seed + k)
        val = np.zeros(len(data.val), bool)
        for i, s in enumerate(slides):
            xy = s.spots.obs[["x_um", "y_um"]].to_numpy()
            val[data.slide == i] = split_spots(xy, options["val_fraction"], options["split"], rng)
        plans.append(
            {"val": val, "kind": options["split"], "name": f"{options['split']} split {k}"}
        )
    return plans


def _plain_list(values: np.ndarray) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def fit_tensors(data: _Tensors, config: dict, *, progress: bool = False) -> MILModel:
    """Build and train one MLP on prepared tensors, with their own split (no ridge, no ensemble)."""
    pool_statistics(data, config)
    config.update(n_members=1, blend="mlp")
    model = _train_member(data, config, int(config["seed"]), progress, "fit")
    model.ood = _ood(data, config)
    return model


def pool_statistics(data: _Tensors, config: dict) -> None:
    """Preprocessing statistics of the training spots (``data.train_spots``: every spot but
    those of validation slides), shared by all members: target scale, size factors, ceiling."""
    train = data.train_spots.cpu().numpy()
    n_cells = data.cells_per_spot()
    config["median_total_counts"] = float(np.median(data.total[data.train_spots].cpu().numpy()))
    config["median_cells_per_spot"] = float(np.median(n_cells[train]))
    config["n_train_spots"] = int(len(train))
    config["n_val_spots"] = int(len(data.val_spots))
    config["n_train_cells"] = int(round(n_cells[train].sum()))
    data.finish(config)
    config["target_scale"] = data.prediction_scale.tolist()
    config["target_sd"] = data.logn[data.train_spots].std(0).cpu().numpy().tolist()
    # a cell can hold at most the whole expression of a large spot: log1p(n95 * expm1(max))
    top = data.logn[data.train_spots].max(0).values.cpu().numpy().astype(np.float64)
    n95 = max(float(np.quantile(n_cells[train], 0.95)), 1.0)
    config["ceiling"] = np.minimum(np.log1p(np.expm1(top) * n95), MAX_LOG_NORMALIZED).tolist()


def _train_member(data: _Tensors, config: dict, seed: int, progress: bool, desc: str) -> MILModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MILModel.build({**config, "n_members": 1})
    model.config = config
    x = data.inputs(data.cells_of(data.train_spots.cpu().numpy())[0])
    model.module.set_input_scaling(x.mean(0).cpu(), x.std(0).cpu())
    model.module.init_output(torch.as_tensor(_typical_output(data, config)))
    model.to(data.device)
    _train(model, data, config, rng, progress, desc)
    return model


def _ood(data: _Tensors, config: dict) -> FeatureDistribution:
    """Distribution of the training cells' own features (not the appended neighbourhood)."""
    rows = data.cells_of(data.train_spots.cpu().numpy())[0]
    x = data.inputs(rows).cpu().numpy()
    radii, stats = embedding_context(config.get("encoder_info") or {})
    n_own = x.shape[1] // (1 + len(radii) * len(stats))
    return FeatureDistribution.fit(x, n_used=n_own, max_cells=OOD_CELLS)


def fit_ensemble(pool: _Tensors, config: dict, plans: list[dict], *, progress: bool) -> MILModel:
    """Train one MLP and one closed-form ridge per member plan, choose each gene's blend on the
    members' validation spots, and combine them into one :class:`MILModel`."""
    pool_statistics(pool, config)
    blend = config["blend"]
    members, ridges, rows, splits = [], [], [], []
    for k, plan in enumerate(plans):
        data = pool.with_validation(plan["val"])
        member_config = dict(config, seed=int(config["seed"]) + k)
        desc = f"fit {k + 1}/{len(plans)} ({plan['name']})" if len(plans) > 1 else "fit"
        if blend == "ridge":  # the closed form alone: no network to train
            member = MILModel.build({**member_config, "n_members": 1})
            member.module.init_output(torch.as_tensor(_typical_output(data, member_config)))
            member_config.update(epochs_run=0, best_epoch=-1, best_loss=float("nan"))
        else:
            member = _train_member(data, member_config, member_config["seed"], progress, desc)
        use = config["loss"] == "mse" and blend != "mlp"
        ridge = _fit_ridge(data, config["slide_offsets"]) if use else None
        members.append(member)
        ridges.append(ridge)
        splits.append(data)
        rows.append(
            {
                "validation": plan["name"],
                "n_train_spots": int(len(data.train_spots)),
                "n_val_spots": int(len(data.val_spots)),
                "epochs_run": int(member_config["epochs_run"]),
                "best_epoch": int(member_config.get("best_epoch", -1)),
                "best_loss": float(member_config.get("best_loss", np.nan)),
                "ridge_median_alpha": float(np.median(ridge.alpha)) if ridge else float("nan"),
            }
        )
    first = rows[0]
    config.update(
        epochs_run=first["epochs_run"],
        best_epoch=first["best_epoch"],
        best_loss=first["best_loss"],
        n_train_spots=first["n_train_spots"],
        n_val_spots=first["n_val_spots"],
        smoothing=members[0].config.get("smoothing", config["smoothing"]),
    )
    use_ridge = ridges[0] is not None
    model = MILModel(
        config,
        members[0].module,
        members[0].log_theta,
        members=[m.module for m in members[1:]],
        ridges=ridges if use_ridge else [],
        ood=_ood(pool, config),
    )
    model.history = members[0].history
    ensemble = {"members": rows, "weight_grid": list(BLEND_GRID)}
    weights = np.ones(len(config["genes"]))
    if blend == "ridge":
        weights[:] = 0.0
        ensemble["reason"] = "blend='ridge': the closed-form ridge alone"
    elif use_ridge:
        scores = _validation_pearson(model, members, ridges, splits)  # (grid, genes)
        if scores is None:
            ensemble["reason"] = "no validation spots: the MLP alone"
        else:
            best = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=0)
            weights = np.asarray(BLEND_GRID)[best]
            chosen = scores[best, np.arange(scores.shape[1])]
            ensemble["validation_pearson"] = {
                "mlp": _nanmean(scores[BLEND_GRID.index(1.0)]),
                "ridge": _nanmean(scores[BLEND_GRID.index(0.0)]),
                **{f"blend {w:g}": _nanmean(scores[j]) for j, w in enumerate(BLEND_GRID)
                   if 0 < w < 1},
                "chosen per gene": _nanmean(chosen),
            }  # fmt: skip
            ensemble["reason"] = (
                "per gene, the MLP weight of the grid with the highest Pearson across the "
                "members' validation spots (per slide, mean over members); 'chosen per gene' "
                "is optimistic: it is scored on the spots it was chosen on"
            )
    else:
        ensemble["reason"] = f"blend={blend!r}, loss={config['loss']!r}: the MLP alone"
    config["blend_weight"] = weights.tolist()
    ensemble["choice_counts"] = {
        "mlp": int((weights == 1).sum()),
        "ridge": int((weights == 0).sum()),
        "blend": int(((weights > 0) & (weights < 1)).sum()),
    }
    config["ensemble"] = ensemble
    o = model.ood
    config["ood"] = {
        "method": "Mahalanobis distance on the cell's own standardised features, without the "
        "neighbourhood context (leading principal components + residual), normalised by "
        "sqrt(n_features)",
        "n_features_used": int(o.n_used),
        "threshold": float(o.threshold),
        "quantile": QUANTILE,
        "n_components": int(len(o.variances)),
    }
    log.info(
        "fit: %d member(s); per-gene choice %s; validation Pearson %s",
        len(plans),
        ensemble["choice_counts"],
        ensemble.get("validation_pearson", "-"),
    )
    return model.to(pool.device)


def _fit_ridge(data: _Tensors, slide_offsets: bool = False) -> LinearCells:
    """The closed-form ridge of a member: trained on its training spots, each gene's penalty
    chosen on its validation spots (leave-one-out without them). ``slide_offsets``: spot means
    and targets centred per slide (slide fixed effects), the mean level kept."""
    train = data.train_spots.cpu().numpy()
    val = data.val_spots.cpu().numpy()
    rows, bag = data.cells_of(train)
    cells = data.inputs(rows).cpu().numpy()
    Z = spot_means(cells, bag.cpu().numpy(), len(train), _numpy(data.weights(rows)))
    Y = data.target[data.train_spots].cpu().numpy()
    centre = slide_offsets and len(np.unique(data.slide[train])) > 1
    if centre:
        Z, Y = _within(Z, data.slide[train]), _within(Y, data.slide[train])
    Z_val = Y_val = None
    if len(val):
        vrows, vbag = data.cells_of(val)
        Z_val = spot_means(
            data.inputs(vrows).cpu().numpy(),
            vbag.cpu().numpy(),
            len(val),
            _numpy(data.weights(vrows)),
        )
        Y_val = data.target[data.val_spots].cpu().numpy()
        if centre:  # penalties chosen on what the offsets leave: within-slide variation
            Z_val, Y_val = _within(Z_val, data.slide[val]), _within(Y_val, data.slide[val])
    return fit_linear_cells(
        Z, Y, cell_mean=cells.mean(0), cell_std=cells.std(0), Z_val=Z_val, Y_val=Y_val
    )


def _within(values: np.ndarray, slide: np.ndarray) -> np.ndarray:
    """``values`` centred per slide, plus their overall mean."""
    out = np.asarray(values, np.float64).copy()
    for s in np.unique(slide):
        out[slide == s] -= out[slide == s].mean(0)
    return out + np.asarray(values, np.float64).mean(0)


@torch.no_grad()
def _validation_pearson(model: MILModel, members, ridges, splits) -> np.ndarray | None:
    """``(len(BLEND_GRID), genes)``: mean over members (and over the slides of each member's
    validation spots) of per-gene Pearson of the blended member's spot predictions."""
    per_member = []
    for member, ridge, data in zip(members, ridges, splits, strict=True):
        val = data.val_spots.cpu().numpy()
        if len(val) < 3:
            continue
        rows, bag = data.cells_of(val)
        x = data.inputs(rows)
        weight = _numpy(data.weights(rows))
        member.module.eval()
        mlp = member.module(x).cpu().numpy().astype(np.float64)
        lin = ridge.predict(x.cpu().numpy())
        measured = data.logn[data.val_spots].cpu().numpy()
        slide = data.slide[val]
        bag = bag.cpu().numpy()
        grid = []
        for w in BLEND_GRID:
            cells = model._units((w * mlp + (1 - w) * lin)[None])
            spots = spot_predictions(cells, bag, len(val), model.config, weight)
            by_slide = [
                pearson_per_gene(spots[slide == s], measured[slide == s])
                for s in np.unique(slide)
                if (slide == s).sum() >= 3
            ]
            grid.append(_quiet_nanmean(by_slide) if by_slide else np.full(mlp.shape[1], np.nan))
        per_member.append(grid)
    if not per_member:
        return None
    return _quiet_nanmean(per_member)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.cpu().numpy()


def _quiet_nanmean(values) -> np.ndarray:
    """Mean over the first axis ignoring NaN (a gene constant on a validation set), silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, np.float64), axis=0)


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return round(float(np.nanmean(x)), 4) if np.isfinite(x).any() else float("nan")


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
        self.slide_tensor = torch.as_tensor(self.slide, dtype=torch.int64, device=device)
        self.n_slides = int(self.slide.max()) + 1 if len(self.slide) else 0
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
    def from_slides(cls, slides, val_slides, genes, device) -> _Tensors:
        """Every spot of ``slides`` and ``val_slides``; validation: the latter's spots."""
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
            val.append(np.full(s.spots.n_obs, i >= len(slides)))
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

    def with_validation(self, val: np.ndarray) -> _Tensors:
        """The same tensors (shared, with the pool's targets) and another validation split."""
        out = copy.copy(self)
        out.val = np.asarray(val, bool)
        out.train_spots = torch.as_tensor(np.flatnonzero(~out.val), device=self.device)
        out.val_spots = torch.as_tensor(np.flatnonzero(out.val), device=self.device)
        if len(out.train_spots) == 0:
            raise ValueError(
                "No training spots left after the validation split; lower val_fraction."
            )
        return out

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


def _batch_loss(
    model: MILModel,
    data: _Tensors,
    spots: torch.Tensor,
    config: dict,
    offsets: torch.Tensor | None = None,
    centred: bool = False,
) -> torch.Tensor:
    """The loss of a batch of spots. ``offsets`` (slides × genes, MSE only): each training
    slide's per-gene offset added to its spots' predictions; ``centred``: the MSE of residuals
    centred per slide (what slide offsets leave to the model, as per-section Pearson)."""
    rows, bag = data.cells_of(spots.cpu().numpy())
    cells = model.module(data.inputs(rows))
    weight = data.weights(rows)
    mse = config["loss"] == "mse"
    if mse and config.get("aggregation_space") == "linear":
        # the spot's expression is its cells' expression pooled: log1p(mean(expm1(log cells)))
        scale = data.scale[spots]
        expression = torch.expm1((cells * scale[bag]).clamp(max=30.0))  # no float overflow
        pooled = aggregate(expression, bag, len(spots), config["aggregation"], weight)
        out = torch.log1p(pooled) / scale
    else:
        out = aggregate(cells, bag, len(spots), config["aggregation"], weight)
    if mse:
        slide = data.slide_tensor[spots]
        if offsets is not None:
            out = out + offsets[slide]
        residual = out - data.target[spots]
        if centred:
            residual = _centred(residual, slide, data.n_slides)
        return torch.mean(residual**2)
    mu = out * data.size_factor[spots][:, None]
    if config["loss"] == "nb":
        return nb_nll(data.counts[spots], mu, model.log_theta)
    return poisson_nll(data.counts[spots], mu)


def _centred(residual: torch.Tensor, slide: torch.Tensor, n_slides: int) -> torch.Tensor:
    """``residual`` minus its mean over the spots of each slide (per gene)."""
    total = torch.zeros(n_slides, residual.shape[1], device=residual.device)
    total.index_add_(0, slide, residual)
    count = torch.bincount(slide, minlength=n_slides).clamp_min(1).to(residual.dtype)
    return residual - (total / count[:, None])[slide]


def _slide_offsets(data: _Tensors, config: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """With ``slide_offsets`` and two or more training slides: zero per-slide, per-gene offsets
    to train, and the training slides (over which they are centred); else None."""
    train_slides = np.unique(data.slide[~data.val])
    if not config.get("slide_offsets") or len(train_slides) < 2:
        return None
    shape = (data.n_slides, data.target.shape[1])
    offsets = torch.zeros(shape, device=data.device, requires_grad=True)
    return offsets, torch.as_tensor(train_slides, device=data.device)


def _train(
    model: MILModel, data: _Tensors, config: dict, rng, progress: bool, desc: str = "fit"
) -> None:
    params = list(model.module.parameters())
    if model.log_theta is not None:
        params.append(model.log_theta)
    opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    slide_offsets = _slide_offsets(data, config)
    if slide_offsets is not None:  # not decayed: a slide's offset is not a complexity to shrink
        raw_offsets, train_slides = slide_offsets
        opt.add_param_group({"params": [raw_offsets], "weight_decay": 0.0})
    has_val = len(data.val_spots) > 0
    alpha = config["smoothing"]
    if alpha is None:  # few validation spots give a noisy loss: follow its trend instead
        alpha = AUTO_SMOOTHING if 0 < len(data.val_spots) < SMALL_VALIDATION else 0.0
        config["smoothing"] = alpha
    best, best_state, since_best, smoothed = np.inf, None, 0, None
    # updated by hand: a bar iterated by the loop would close itself at the early-stopping break
    bar = tqdm(total=config["max_epochs"], desc=desc, disable=not progress, unit="epoch")
    for epoch in range(config["max_epochs"]):
        bar.update(1)
        model.module.train()
        order = data.train_spots[
            torch.as_tensor(rng.permutation(len(data.train_spots)), device=data.device)
        ]
        total, n = 0.0, 0
        for start in range(0, len(order), config["batch_size"]):
            spots = order[start : start + config["batch_size"]]
            offsets = None
            if slide_offsets is not None:  # centred over the training slides: the model keeps
                offsets = raw_offsets - raw_offsets[train_slides].mean(0)  # the mean level
            loss = _batch_loss(model, data, spots, config, offsets)
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
                value = float(
                    _batch_loss(
                        model, data, data.val_spots, config, centred=slide_offsets is not None
                    )
                )
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
    epochs = len(model.history["train_loss"])
    stop = "stopped" if epochs < config["max_epochs"] else "ran all epochs"
    bar.total = epochs  # the bar ends where training did, not at max_epochs
    bar.set_postfix_str(f"{stop} at epoch {epochs}, best {config.get('best_epoch', -1) + 1}")
    bar.refresh()
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
