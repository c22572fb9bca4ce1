"""``sst.tl.fit``: train the per-cell MLP from spot-level expression (multiple-instance learning)."""

from __future__ import annotations

from collections.abc import Sequence

from spatialdata import SpatialData

from ..constants import CELLS_KEY, EMBEDDING_KEY
from .genes import common_genes, select_genes
from .model import MILModel
from .options import DEFAULTS, TRAINING_OPTIONS, training_options
from .spots import BAG_DEFAULTS, bag_options, sample_id, slide_bags
from .training import fit_slides


def fit(
    sdata: SpatialData | Sequence[SpatialData],
    genes: str | Sequence[str] = "hvg:50",
    *,
    loss: str = DEFAULTS.loss,
    aggregation: str = DEFAULTS.aggregation,
    aggregation_space: str = DEFAULTS.aggregation_space,
    validation: SpatialData | Sequence[SpatialData] | None = None,
    embedding_key: str = EMBEDDING_KEY,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    pooling: str = BAG_DEFAULTS["pooling"],
    cell_dilation_um: float = BAG_DEFAULTS["cell_dilation_um"],
    bin_um: float | None = BAG_DEFAULTS["bin_um"],
    hidden: Sequence[int] = DEFAULTS.hidden,
    dropout: float = DEFAULTS.dropout,
    lr: float = DEFAULTS.lr,
    weight_decay: float = DEFAULTS.weight_decay,
    batch_size: int = DEFAULTS.batch_size,
    max_epochs: int = DEFAULTS.max_epochs,
    patience: int = DEFAULTS.patience,
    smoothing: float | None = DEFAULTS.smoothing,
    val_fraction: float = DEFAULTS.val_fraction,
    split: str = DEFAULTS.split,
    scale_targets: bool | str = DEFAULTS.scale_targets,
    members: int | None = DEFAULTS.members,
    blend: str = DEFAULTS.blend,
    slide_offsets: bool = DEFAULTS.slide_offsets,
    min_spot_counts: int = 20,
    min_gene_counts: int = 200,
    min_gene_fraction: float = 0.1,
    seed: int = DEFAULTS.seed,
    device: str | None = DEFAULTS.device,
    progress: bool = DEFAULTS.progress,
) -> MILModel:
    """Train a model that predicts each cell's expression from its embedding.

    Each spot is a bag of the cells whose centroid lies in it (or, for Visium HD bins with
    ``pooling="overlap"``, of every cell overlapping it, weighted by its area fraction). A shared MLP maps every cell
    embedding to a gene vector; the mean (or sum) over the cells of a spot is fitted to the spot's
    measured expression. The validation loss drives early stopping and the best epoch is kept.

    The model is a small ensemble (``members``) so that it never loses to its own special case:
    each member is an MLP plus the closed-form ridge on the spots' mean embeddings (the linear
    per-cell model, mean-pooled), both trained on the member's training spots, the ridge's
    penalty chosen per gene on the member's validation spots. Each gene's blend
    ``w * MLP + (1 - w) * ridge`` (``w`` in 1, 0.75, 0.5, 0.25, 0) is the one with the highest
    per-slide Pearson on the members' validation spots. Predictions are the members' mean, their
    standard deviation the per-cell uncertainty. ``model.config["ensemble"]`` records the
    members, each candidate's validation Pearson and the per-gene choice
    (``config["blend_weight"]``). Every cell keeps its own prediction (the ridge is a per-cell
    linear model). Predictions are finite and clipped to ``[0, ceiling]``, a per-gene ceiling
    ``log1p(n95 × expm1(max spot target))`` (``n95``: the 95th percentile of cells per spot;
    never above ``log1p(10,000)``), recorded in ``config["ceiling"]``; the training cells'
    feature distribution is kept to flag unlike cells (``config["ood"]``).

    Spot preprocessing follows sCellST: spots with fewer than ``min_spot_counts`` counts or
    without any segmented cell are skipped (and counted in ``model.config["slides"]``); targets
    are ``log1p`` of counts per 10,000 of the spot (all genes), optionally divided per gene by
    their 95th percentile; size factors are spot totals over their median.

    Parameters
    ----------
    sdata
        One SpatialData, or a list for multi-slide training, each with spots + counts table,
        segmented cells and an embedding table (:func:`scellst.tl.embed`, same encoder on all).
    genes
        A list of gene names (every one must be measured in every slide), ``"hvg:N"``: N highly
        variable genes (seurat_v3 on raw spot counts of all training slides jointly, slide as
        batch), or ``"svg:N"``: N spatially variable genes (highest Moran's I, computed by
        squidpy on each slide's 6-nearest-spot graph and averaged over the slides). Both
        selections consider genes with at least ``min_gene_counts`` counts, detected in at least
        ``min_gene_fraction`` of the spots, and not mitochondrial (``MT-``); they return the genes
        sorted by name. With ``validation`` slides, only genes measured there too are considered.
    loss
        ``"mse"``: squared error on log-normalised spot expression (sCellST); ``"nb"``: negative
        binomial likelihood of raw counts, spot mean = size factor × aggregated cell rates,
        per-gene dispersion; ``"poisson"``: Poisson likelihood of raw counts, same mean.
    aggregation
        ``"mean"`` (sCellST) or ``"sum"`` of the cell outputs of a spot.
    aggregation_space
        With ``loss="mse"``, where the cells of a spot are pooled: ``"linear"`` (default)
        averages their expression, ``log1p(mean(expm1(cell outputs)))``, as the spot itself
        pools its cells' transcripts; ``"log"`` (sCellST) averages the cells' log-normalised
        outputs. On synthetic slides, ``"linear"`` recovers marker genes per cell better
        (BENCHMARKS.md). Count losses always pool expected counts (linear).
    validation
        Held-out slide(s) for validation and early stopping. When given, every spot of the
        training slides is used for training and ``split``/``val_fraction`` are ignored.
    embedding_key, cells_key, spots_key
        Tables/elements to use (cells are assigned to spots on the fly when needed). The spots
        are circles (Visium, ST) or square bins (Visium HD, :func:`scellst.io.read_visium_hd`).
    pooling
        Square bins only. ``"centroid"``: a bin's bag is the cells whose centroid lies in its
        square (as for circles). ``"overlap"``: every cell overlapping the bin, weighted by the
        fraction of the cell lying in it, so that a bin's expected expression is the weighted
        sum (``aggregation="sum"``) or weighted mean (``"mean"``) of its cells' predictions;
        a nucleus straddling four 8 µm bins then counts in all four. ``"auto"`` (default):
        ``"overlap"`` on square bins, ``"centroid"`` on circles. On synthetic 8 µm bins,
        overlap-aware pooling recovers marker genes per cell better than centroid bags
        (BENCHMARKS.md, "Visium HD"), at a few times the training time.
    cell_dilation_um
        With overlap-aware pooling: distance in µm by which each nucleus polygon is grown into
        an approximate cell before its fractions are computed (``0``: the nucleus itself).
        The default, 3 µm, is the cells' dilation of the synthetic HD slides, where it did best;
        on real tissue it stands for a typical cytoplasm rim.
    bin_um
        Square bins only: pool the bins into squares of this side in µm before training, a
        whole multiple of the bins' side (e.g. ``16`` or ``32`` for 8 µm bins), summing their
        counts (:func:`scellst.mil.bins.coarsen_bins`). ``None``: train on the bins as read.
    hidden, dropout
        MLP hidden widths and dropout (sCellST: 256-256-256, 0.1).
    lr, weight_decay, batch_size
        AdamW learning rate and weight decay, spots per batch. sCellST uses lr 1e-4; 1e-3
        converges within the epoch budget on slides of a few hundred spots.
    max_epochs, patience, smoothing
        Early stopping: stop when the monitored validation loss has not improved for
        ``patience`` epochs and keep the weights of the best epoch. ``smoothing`` in [0, 1)
        monitors an exponential moving average of the validation loss instead of the loss
        itself (``0``: the raw loss); ``None`` uses 0.9 when fewer than 20 spots validate (a
        loss over so few spots is noisy and its minimum often falls on a lucky early epoch)
        and 0 otherwise. The value used is recorded in ``model.config["smoothing"]``.
    val_fraction, split
        Fraction of each slide's spots held out for validation: ``"spatial"`` blocks (default,
        no leakage between neighbouring spots) or ``"random"`` (sCellST).
    scale_targets
        With ``loss="mse"``: ``True``/``"global"`` divides each gene by its 95th percentile over
        all training spots, ``"slide"`` by its 95th percentile within each slide (sCellST), so
        every gene weighs alike in the loss; ``False``/``"none"``: no scaling. Undone at
        prediction (with ``"slide"``, by the mean of the training slides' percentiles).
    members
        Ensemble members. ``None`` (default): with ``validation`` slides, 3 members (seeds)
        validated on them; with 2 to 5 training slides, one member per slide, validated on that
        whole slide and trained on the others (a slide-level validation, as the held-out test);
        otherwise 3 members on different ``split`` splits. An integer: that many members on
        different splits (each with its own seed).
    blend
        ``"auto"`` (default): per-gene validated blend of MLP and ridge (MSE loss only);
        ``"mlp"``: the MLPs alone (sCellST); ``"ridge"``: the closed-form ridge alone (no
        network trained). Count losses always use the MLPs alone.
    slide_offsets
        With two or more training slides (MSE loss): each slide gets its own per-gene offset
        during training, which absorbs slide-level differences (depth, batch, section) so the
        network learns the variation within slides; the ridge is fitted on spots centred per
        slide, and validation losses are centred per slide. The offsets are not part of the
        model: predictions are at the training slides' mean level.
    min_spot_counts
        Spots with fewer total counts are skipped.
    min_gene_counts, min_gene_fraction
        Gene filter of ``"hvg:N"`` / ``"svg:N"`` (sCellST: 200 counts, 10 % of the spots).
    seed
        Seed of the split, initialisation and batching (results are reproducible on CPU).
    device
        ``"cpu"``, ``"cuda"``...; default: a GPU when available.
    progress
        Show a progress bar over epochs, one per member; it ends at the epoch where training
        stopped ("stopped at epoch 40, best 19").

    Returns
    -------
    MILModel
        The trained :class:`MILModel`: its ``history`` holds the loss curves, its ``config`` the
        settings, genes, preprocessing, encoder reference and the spots skipped per slide.

    Examples
    --------
    >>> model = sst.tl.fit(sdata, genes="hvg:50")
    >>> model = sst.tl.fit([c2, c3, c4], genes="svg:100", loss="nb", validation=c5)
    >>> hd = sst.io.read_visium_hd("outs", bin_size_um=8, fullres_image_file="tissue.btf")
    >>> model = sst.tl.fit(hd, genes="hvg:50", pooling="overlap", cell_dilation_um=3)
    >>> model.save("model_dir")
    """
    args = locals()  # fit's arguments (before any other name is bound here)
    options = training_options(**{k: args[k] for k in TRAINING_OPTIONS})
    bags = bag_options(pooling, cell_dilation_um, bin_um)
    sdatas = _as_list(sdata, "sdata")
    if not sdatas:
        raise ValueError("No SpatialData given to fit.")
    val_sdatas = [] if validation is None else _as_list(validation, "validation")
    if any(v is s for v in val_sdatas for s in sdatas):
        raise ValueError("A validation slide is also a training slide; hold it out of `sdata`.")
    kw = dict(
        cells_key=cells_key,
        embedding_key=embedding_key,
        spots_key=spots_key,
        min_counts=min_spot_counts,
        **bags,
    )
    slides = [slide_bags(s, **kw) for s in sdatas]
    val_slides = [slide_bags(s, **kw) for s in val_sdatas]
    gene_list = select_genes(
        slides,
        genes,
        min_counts=min_gene_counts,
        min_frac=min_gene_fraction,
        universe=common_genes(val_slides) if val_slides else None,
    )
    names = [_name(s, b, i) for i, (s, b) in enumerate(zip(sdatas, slides, strict=True))]
    model = fit_slides(
        slides,
        gene_list,
        options,
        val_slides=val_slides,
        min_spot_counts=min_spot_counts,
        gene_selection=genes,
        slide_names=names,
    )
    model.config["bags"] = slides[0].pooling  # how evaluate / pl.spots pool cells again
    return model


def _name(sdata: SpatialData, bags, i: int) -> str:
    """The slide's sample id when its reader recorded one, else ``"slide i"``."""
    return sample_id(sdata, bags.spots_key) or f"slide {i}"


def _as_list(x, name: str) -> list[SpatialData]:
    items = [x] if isinstance(x, SpatialData) else list(x)
    for item in items:
        if not isinstance(item, SpatialData):
            raise TypeError(f"`{name}` must be a SpatialData or a list of them, got {type(item)}.")
    return items
