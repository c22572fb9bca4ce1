"""``sst.tl.embed``: one feature vector per cell from a fixed-size crop around its nucleus."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import shapely
from spatialdata import SpatialData

from .._docs import OVERWRITE_TABLE, doc_params
from .._sdata import (
    add_element,
    apply_matrix,
    check_free,
    image_level0,
)
from .._tables import cells_on_image, result_table
from ..constants import CELLS_KEY, EMBEDDING_KEY, EMBEDDING_OBSM, UNS_KEY
from ..io._scale import microns_per_pixel
from .context import (
    CONTEXT_STATS,
    check_stats,
    context_feature_names,
    context_features,
    context_radii,
)
from .crops import CROP_MPP, CROP_SIZE_UM, exterior_coords, iter_crops, slide_channel_stats
from .encoder import resolve_encoder

log = logging.getLogger(__name__)

#: Default neighbourhood radii of :func:`embed` in µm (chosen on her2st, see BENCHMARKS.md).
CONTEXT_UM = 200.0


@doc_params(overwrite_table=OVERWRITE_TABLE)
def embed(
    sdata: SpatialData,
    encoder="morphology",
    *,
    weights: str | os.PathLike | None = None,
    cells_key: str = CELLS_KEY,
    image_key: str | None = None,
    key_added: str = EMBEDDING_KEY,
    crop_size_um: float | None = None,
    crop_mpp: float | None = None,
    context_um: float | Sequence[float] | None = CONTEXT_UM,
    context_stats: Sequence[str] = CONTEXT_STATS,
    tile_size: int = 2048,
    n_jobs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Embed every cell from a crop of fixed physical size around its nucleus.

    Parameters
    ----------
    sdata
        SpatialData with the cells of :func:`scellst.pp.segment` and their H&E image.
    encoder
        ``"morphology"`` (default): weight-free handcrafted features of the nucleus shape,
        hematoxylin/eosin intensity and texture, the cytoplasm ring and the neighbourhood
        (see :class:`scellst.tl.MorphologyEncoder`). Or:

        - a torchvision (or timm) model name such as ``"resnet50"``, with ImageNet weights
          from a local file (``weights=``, or ``$SCELLST_WEIGHTS_DIR/<name>.pth``; never
          downloaded), see :func:`scellst.tl.pretrained_encoder`;
        - the folder of an encoder trained by :func:`scellst.tl.train_encoder`, or the
          :class:`~scellst.tl.SSLEncoder` itself;
        - a ``torch.nn.Module`` mapping ``(n, 3, 48, 48)`` normalised images to ``(n, d)``
          (wrapped by :class:`scellst.tl.TorchEncoder` with its defaults), or a
          :class:`~scellst.tl.TorchEncoder`;
        - an object with ``name``, ``feature_names()`` and ``encode(batch)``
          (:class:`~scellst.tl.Encoder`), or a callable ``f(crops) -> (n, d)`` taking
          ``(n, S, S, 3)`` uint8 RGB crops.
    weights
        Local weights file of a pretrained model named by ``encoder``.
    cells_key
        The cell shapes (their table is ``f"{cells_key}_table"``).
    image_key
        The H&E image; defaults to the one the cells were segmented on.
    key_added
        Name of the new table; features go to ``obsm["X_sst"]``.
    crop_size_um, crop_mpp
        Crop side in µm and its resolution in µm/px. Default: the encoder's own (its
        ``crop_size_um``/``crop_mpp`` attributes; morphology: 18 µm at 0.5 µm/px), else the
        paper's 18 µm at 0.25 µm/px (72 px). Crops are resampled from the slide's resolution,
        so features are comparable across slides.
    context_um
        Neighbourhood radius in µm, or several (``[30, 200]``); ``0`` or ``None``: no context.
        Default 200 µm with mean and SD: on her2st (leave-one-section-out, 50 HVGs) it raised
        the held-out Pearson of ``fit`` from 0.207 to 0.261 (``(30, 200)``: 0.268, but it cut
        the per-cell accuracy on synthetic slides from 0.91 to 0.80, 200 µm alone 0.90;
        BENCHMARKS.md; chosen on those same folds).
        For each radius, each cell's features gain the ``context_stats`` of its neighbours'
        features (the other cells whose centroid lies within that distance, on the whole
        slide): the model still predicts every cell from its own row, but the row now says
        what surrounds it. A cell without neighbours gets its own features as the mean and 0
        as the SD. A model trained on one context can only predict slides embedded with the
        same context (it is recorded in ``uns`` and in the model's
        ``config["encoder_info"]``).
    context_stats
        ``("mean", "sd")`` (default) or ``("mean",)``.
    tile_size, n_jobs, progress
        Tiled reading of the image (pixels per tile side), worker threads, progress bar.
    {overwrite_table}

    Returns
    -------
    None
        Adds table ``sdata[key_added]`` (one row per cell, linked to ``cells_key``) with
        ``obsm["X_sst"]`` (cells × features), ``obs["crop_padded"]`` (crop reached the image border)
        and ``uns["scellst"]["embedding"]`` (encoder, feature names, crop geometry,
        ``channel_stats``: per-channel ``mean``/``std`` of the slide's tissue pixels, RGB in
        [0, 1], from a sample of the slide, and the encoder's
        ``provenance`` when it has one: architecture, weights, normalisation) and
        ``context`` (``radii_um``, ``stats``; the context columns follow the encoder's own,
        named ``f"{{feature}}_ctx{{radius}}um_{{stat}}"``).

    Examples
    --------
    >>> sst.tl.embed(sdata)
    >>> sdata["sst_embedding"].obsm["X_sst"].shape
    """
    check_free(sdata, [key_added], overwrite)
    radii = context_radii(context_um)
    stats_ctx = check_stats(context_stats) if radii else []
    cells, image_key, matrix, centroids = cells_on_image(sdata, cells_key, image_key)
    mpp = microns_per_pixel(sdata, image_key)
    enc = resolve_encoder(encoder, weights)
    crop_size_um = crop_size_um or getattr(enc, "crop_size_um", CROP_SIZE_UM)
    crop_mpp = crop_mpp or getattr(enc, "crop_mpp", CROP_MPP)

    geometry = sdata.shapes[cells_key].geometry.to_numpy()
    geometry = shapely.transform(geometry, lambda xy: apply_matrix(matrix, xy))
    if len(geometry) != cells.n_obs:
        raise ValueError(
            f"Cells table has {cells.n_obs} rows but {cells_key!r} has {len(geometry)} shapes; "
            "re-run sst.pp.segment."
        )
    if hasattr(enc, "prepare"):
        enc.prepare(geometry, centroids * mpp, mpp)

    # per-slide colour statistics of the tissue, for encoders that normalise with them
    stats = slide_channel_stats(image_level0(sdata, image_key), points_xy=centroids)
    features: np.ndarray | None = None
    padded = np.zeros(cells.n_obs, bool)
    for batch in iter_crops(
        image_level0(sdata, image_key),
        mpp,
        centroids,
        exterior_coords(geometry),
        crop_size_um=crop_size_um,
        crop_mpp=crop_mpp,
        masks=getattr(enc, "needs_masks", True),
        channel_stats=stats,
        tile_size=tile_size,
        n_jobs=n_jobs,
        progress=progress,
    ):
        out = np.asarray(enc.encode(batch), dtype=np.float32)
        if features is None:
            features = np.zeros((cells.n_obs, out.shape[1]), np.float32)
        features[batch.index] = out
        padded[batch.index] = batch.padded
    if features is None:
        features = np.zeros((0, len(enc.feature_names())), np.float32)
    names = list(enc.feature_names())
    if radii:
        context = context_features(centroids * mpp, features, radii, stats_ctx)
        features = np.concatenate([features, context], axis=1)
        names += context_feature_names(names, radii, stats_ctx)
    info = {
        "encoder": enc.name,
        "feature_names": names,
        "crop_size_um": crop_size_um,
        "crop_mpp": crop_mpp,
        "cells_key": cells_key,
        "image_key": image_key,
        "channel_stats": stats,
        "context": {"radii_um": radii, "stats": stats_ctx},
    }
    provenance = getattr(enc, "provenance", None)
    if provenance:
        info["provenance"] = dict(provenance)
    table = result_table(
        cells,
        cells_key,
        obsm={EMBEDDING_OBSM: features},
        uns={UNS_KEY: {"embedding": info}},
        extra_obs={"crop_padded": padded},
    )
    add_element(sdata, key_added, table, overwrite=overwrite)
    log.info("embed: %d cells x %d features with %r", *features.shape, enc.name)
