"""``sst.tl.fit``: train the per-cell MLP from spot-level expression (multiple-instance learning)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from spatialdata import SpatialData
from tqdm.auto import tqdm

from ..constants import CELLS_KEY, EMBEDDING_KEY
from ..nn import aggregate, mse_loss, nb_nll, poisson_nll
from ._model import MILModel, default_device
from ._split import split_spots
from ._spots import SlideBags, select_genes, slide_bags

log = logging.getLogger(__name__)

LOSSES = ("mse", "nb", "poisson")


def fit(
    sdata: SpatialData | Sequence[SpatialData],
    genes: str | Sequence[str] = "hvg:50",
    *,
    loss: str = "mse",
    aggregation: str = "mean",
    embedding_key: str = EMBEDDING_KEY,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    hidden: Sequence[int] = (256, 256, 256),
    dropout: float = 0.1,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 128,
    max_epochs: int = 400,
    patience: int = 20,
    val_fraction: float = 0.2,
    split: str = "spatial",
    scale_targets: bool = True,
    min_spot_counts: int = 20,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> MILModel:
    """Train a model that predicts each cell's expression from its embedding.

    Each spot is a bag of the cells whose centroid lies in it. A shared MLP maps every cell
    embedding to a gene vector; the mean (or sum) over the cells of a spot is fitted to the spot's
    measured expression. Validation loss drives early stopping and the best epoch is kept.

    Parameters
    ----------
    sdata
        One SpatialData, or a list for multi-slide training, each with spots + counts table,
        segmented cells and an embedding table (:func:`scellst.tl.embed`, same encoder on all).
    genes
        A list of gene names, or ``"hvg:N"``: N highly variable genes (seurat_v3 on raw spot
        counts, jointly over the slides, after removing MT- and rarely detected genes).
    loss
        ``"mse"``: squared error on ``log1p(normalize_total(1e4))`` spot expression (sCellST);
        ``"nb"``: negative binomial likelihood of raw counts with spot size factors and per-gene
        dispersion; ``"poisson"``: Poisson likelihood of raw counts.
    aggregation
        ``"mean"`` or ``"sum"`` of the cell outputs of a spot.
    embedding_key, cells_key, spots_key
        Tables/elements to use (cells are assigned to spots on the fly when needed).
    hidden, dropout
        MLP hidden widths and dropout (sCellST: 256-256-256, 0.1).
    lr, weight_decay, batch_size, max_epochs, patience
        AdamW optimiser, spots per batch, epochs, early stopping patience (epochs).
        sCellST uses lr 1e-4; 1e-3 converges within the epoch budget on slides of a few
        hundred spots.
    val_fraction, split
        Fraction of spots held out for validation, ``"spatial"`` blocks (default, no leakage
        between neighbouring spots) or ``"random"``.
    scale_targets
        With ``"mse"``: divide each gene by its 95th percentile over the training spots so
        every gene weighs alike in the loss (undone at prediction).
    min_spot_counts
        Spots with fewer total counts are dropped.
    seed
        Seed of the split, initialisation and batching (results are reproducible on CPU).
    device
        ``"cpu"``, ``"cuda"``...; default: a GPU when available.
    progress
        Show a progress bar over epochs.

    Returns
    -------
    MILModel
        The trained :class:`MILModel` (its ``history`` holds the loss curves).

    Examples
    --------
    >>> model = sst.tl.fit(sdata, genes="hvg:50")
    >>> model.save("model_dir")
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if aggregation not in ("mean", "sum"):
        raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
    sdatas = [sdata] if isinstance(sdata, SpatialData) else list(sdata)
    if not sdatas:
        raise ValueError("No SpatialData given to fit.")
    slides = [
        slide_bags(
            s,
            cells_key=cells_key,
            embedding_key=embedding_key,
            spots_key=spots_key,
            min_counts=min_spot_counts,
        )
        for s in sdatas
    ]
    _check_same_encoder(slides)
    gene_list = select_genes(slides, genes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device) if device is not None else default_device()
    data = _Tensors(slides, gene_list, split, val_fraction, rng, dev)

    config = {
        "genes": gene_list,
        "n_features": int(data.features.shape[1]),
        "feature_names": slides[0].feature_names,
        "encoder": slides[0].encoder,
        "hidden": list(hidden),
        "dropout": dropout,
        "loss": loss,
        "aggregation": aggregation,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "max_epochs": max_epochs,
        "patience": patience,
        "val_fraction": val_fraction,
        "split": split,
        "seed": seed,
        "scale_targets": scale_targets,
        "min_spot_counts": min_spot_counts,
        "median_total_counts": float(np.median(data.total[data.train_spots].cpu().numpy())),
        "n_slides": len(slides),
        "n_train_spots": int(len(data.train_spots)),
        "n_val_spots": int(len(data.val_spots)),
    }
    target_scale = np.ones(len(gene_list), np.float32)
    if loss == "mse" and scale_targets:
        q95 = np.quantile(data.logn[data.train_spots].cpu().numpy(), 0.95, axis=0)
        target_scale = np.where(q95 > 1e-3, q95, 1.0).astype(np.float32)
    config["target_scale"] = target_scale.tolist()

    model = MILModel.build(config)
    train_cells = data.cells_of(data.train_spots.cpu().numpy())[0]
    x = data.features[train_cells]
    model.module.set_input_scaling(x.mean(0).cpu(), x.std(0).cpu())
    model.module.init_output(torch.as_tensor(_typical_output(data, config, target_scale)))
    model.to(dev)
    _train(model, data, config, torch.as_tensor(target_scale, device=dev), rng, progress)
    return model


def _check_same_encoder(slides: list[SlideBags]) -> None:
    dims = {s.features.shape[1] for s in slides}
    encoders = {s.encoder for s in slides}
    if len(dims) > 1 or len(encoders) > 1:
        raise ValueError(
            f"Training slides were embedded differently (encoders {sorted(encoders)}, dims "
            f"{sorted(dims)}); embed all of them with the same encoder."
        )


class _Tensors:
    """All training slides as flat tensors: cells grouped by spot, spot targets, split."""

    def __init__(self, slides, genes, split, val_fraction, rng, device):
        feats, bags, counts, totals, val = [], [], [], [], []
        offset = 0
        for s in slides:
            X = s.spots[:, genes].X
            counts.append(np.asarray(X.todense(), dtype=np.float32))
            totals.append(np.asarray(s.spots.X.sum(1), dtype=np.float32).ravel())
            feats.append(s.features)
            bags.append(s.bag + offset)
            offset += s.spots.n_obs
            val.append(
                split_spots(s.spots.obs[["x_um", "y_um"]].to_numpy(), val_fraction, split, rng)
            )
        self.device = device
        self.features = torch.as_tensor(np.concatenate(feats), device=device)
        bag = np.concatenate(bags)
        n_spots = offset
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(bag, minlength=n_spots))])
        self.counts = torch.as_tensor(np.concatenate(counts), device=device)
        self.total = torch.as_tensor(np.concatenate(totals), device=device)
        self.logn = torch.log1p(self.counts / self.total[:, None].clamp_min(1) * 1e4)
        val = np.concatenate(val)
        self.train_spots = torch.as_tensor(np.flatnonzero(~val), device=device)
        self.val_spots = torch.as_tensor(np.flatnonzero(val), device=device)
        if len(self.train_spots) == 0:
            raise ValueError(
                "No training spots left after the validation split; lower val_fraction."
            )

    def cells_of(self, spots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell rows and their bag index (0..len(spots)-1) for a set of spots."""
        start, stop = self.offsets[spots], self.offsets[spots + 1]
        lengths = stop - start
        bag = np.repeat(np.arange(len(spots)), lengths)
        rows = np.repeat(
            start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths
        ) + np.arange(lengths.sum())
        return torch.as_tensor(rows, device=self.device), torch.as_tensor(bag, device=self.device)


def _typical_output(data: _Tensors, config: dict, target_scale: np.ndarray) -> np.ndarray:
    """Per-gene starting output: the mean target, per cell."""
    tr = data.train_spots
    if config["loss"] == "mse":
        return (data.logn[tr].mean(0).cpu().numpy() / target_scale).astype(np.float32)
    sf = (data.total[tr] / config["median_total_counts"])[:, None]
    rate = (data.counts[tr] / sf).mean(0).cpu().numpy()
    if config["aggregation"] == "sum":
        n_cells = np.diff(data.offsets)[tr.cpu().numpy()].mean()
        rate = rate / max(n_cells, 1)
    return rate.astype(np.float32)


def _batch_loss(
    model: MILModel, data: _Tensors, spots: torch.Tensor, config: dict, scale: torch.Tensor
) -> torch.Tensor:
    rows, bag = data.cells_of(spots.cpu().numpy())
    out = aggregate(model.module(data.features[rows]), bag, len(spots), config["aggregation"])
    if config["loss"] == "mse":
        return mse_loss(out, data.logn[spots] / scale)
    mu = out * (data.total[spots] / config["median_total_counts"])[:, None]
    if config["loss"] == "nb":
        return nb_nll(data.counts[spots], mu, model.log_theta)
    return poisson_nll(data.counts[spots], mu)


def _train(
    model: MILModel, data: _Tensors, config: dict, scale: torch.Tensor, rng, progress: bool
) -> None:
    params = list(model.module.parameters())
    if model.log_theta is not None:
        params.append(model.log_theta)
    opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    has_val = len(data.val_spots) > 0
    best, best_state, since_best = np.inf, None, 0
    bar = tqdm(range(config["max_epochs"]), desc="fit", disable=not progress, unit="epoch")
    for epoch in bar:
        model.module.train()
        order = data.train_spots[
            torch.as_tensor(rng.permutation(len(data.train_spots)), device=data.device)
        ]
        total, n = 0.0, 0
        for start in range(0, len(order), config["batch_size"]):
            spots = order[start : start + config["batch_size"]]
            loss = _batch_loss(model, data, spots, config, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(spots)
            n += len(spots)
        model.history["train_loss"].append(total / n)
        monitored = model.history["train_loss"][-1]
        if has_val:
            model.module.eval()
            with torch.no_grad():
                monitored = float(_batch_loss(model, data, data.val_spots, config, scale))
            model.history["val_loss"].append(monitored)
        bar.set_postfix(train=f"{model.history['train_loss'][-1]:.4f}", val=f"{monitored:.4f}")
        if monitored < best - 1e-6:
            best, since_best = monitored, 0
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
