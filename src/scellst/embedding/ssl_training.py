"""``sst.tl.train_encoder``: self-supervised training of a cell-image encoder (MoCo v3 / BYOL)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from spatialdata import SpatialData
from tqdm.auto import tqdm

from .._sdata import (
    image_level0,
)
from .._tables import cells_on_image
from .._torch import resolve_device
from ..constants import CELLS_KEY
from ..io._scale import microns_per_pixel
from .augment import AugmentConfig, augment
from .backbones import build_backbone, output_dim
from .crops import CROP_MPP, CROP_SIZE_UM, crop_pixels, iter_crops, slide_channel_stats
from .ssl import METHODS, SSLModel, momentum_at
from .torch_encoder import INPUT_SIZE_UM, NORMALIZATIONS, SSLEncoder

log = logging.getLogger(__name__)


def train_encoder(
    sdatas: SpatialData | Sequence[SpatialData],
    method: str = "moco",
    *,
    cells_key: str = CELLS_KEY,
    image_key: str | None = None,
    arch: str = "resnet_small",
    max_cells: int = 20000,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.2,
    momentum: float = 0.99,
    augmentation: AugmentConfig | dict | None = None,
    normalization: str = "fixed",
    input_size_um: float = INPUT_SIZE_UM,
    crop_size_um: float = CROP_SIZE_UM,
    crop_mpp: float = CROP_MPP,
    seed: int = 0,
    device: str | None = "auto",
    amp: bool | None = None,
    out_dir: str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> SSLEncoder:
    """Train a cell-image encoder by self-supervision on the cells of one or more slides.

    Up to ``max_cells`` cells are drawn at random from the segmented slides and cropped as
    :func:`~scellst.tl.embed` does (``crop_size_um`` at ``crop_mpp`` µm/px, 72 px by default).
    Each training step makes two random views of every crop of a batch (random resized crop
    around the centre to the ``input_size_um`` input, 90° rotations and flips, H&E stain
    jitter in HED space, colour jitter, blur, erasing: :class:`~scellst.embedding.augment.AugmentConfig`)
    and trains the backbone so that the two views of a cell get similar embeddings (MoCo v3:
    query encoder with projector and predictor, momentum encoder with a cosine momentum
    schedule, symmetric InfoNCE loss; or BYOL). The encoder is the backbone: its pooled
    features, not the projector's output.

    The defaults train a small ResNet on 48-px crops, cheap enough for a CPU: 6,000 cells of
    four her2st sections x 5 epochs took 80 s wall (119 s CPU) on a 2-core machine at load
    average 1-2 (``benchmarks/ssl_her2st.py``, BENCHMARKS.md); the time grows with
    ``min(max_cells, cells) * epochs``, and with other jobs competing for the cores. More steps
    give better features (``benchmarks/embedding_quality.py``). For the paper's setting use
    ``arch="resnet50"``, a GPU (``device="cuda"``, bfloat16 autocast by default there),
    ``batch_size=1024`` or more, more cells and epochs.

    Parameters
    ----------
    sdatas
        One or more SpatialData objects segmented by :func:`scellst.pp.segment`.
    method
        ``"moco"`` (MoCo v3) or ``"byol"``.
    cells_key, image_key
        The cell shapes and their H&E image (default: the image they were segmented on).
    arch
        Backbone: ``"resnet_small"`` (4 residual stages of widths 32-256, 256 features),
        ``"resnet_tiny"`` (16-128, 128 features), or any torchvision classification model
        name (``"resnet18"``, ``"resnet50"``, ...; trained from scratch).
    max_cells
        Cells drawn (without replacement, uniformly over all slides' cells). Their crops are
        held in memory (``max_cells`` x 15.5 kB at 72 px).
    epochs, batch_size, lr, weight_decay
        Optimisation: AdamW, linear warm-up over the first 10% of the steps then cosine decay;
        every epoch passes once over the cells in full batches.
    temperature
        InfoNCE temperature (MoCo).
    momentum
        Initial momentum of the momentum encoder (cosine schedule to 1).
    augmentation
        Augmentation strengths (:class:`~scellst.embedding.augment.AugmentConfig` or a dict of its
        fields).
    normalization
        ``"fixed"`` (default): every crop is normalised with the per-channel mean and standard
        deviation of all training crops' centres, stored with the encoder and applied to
        every slide it embeds. ``"slide"``: each crop with its own slide's colour statistics
        (:func:`~scellst.tl.embed`'s ``channel_stats``, the tissue pixels of the slide), in
        training and again for every slide embedded later (a simple per-slide stain
        normalisation, see :class:`~scellst.tl.TorchEncoder`, and its cost on slides stained
        together there).
    input_size_um, crop_size_um, crop_mpp
        The network input (crop centre, µm) and the crops read (µm, µm/px). The network sees
        ``input_size_um / crop_mpp`` pixels (48 by default).
    seed
        Seed of the cell draw, the initial weights and the augmentations: the same seed gives
        the same weights on the same machine (CPU).
    device
        ``"auto"`` (a GPU when available), ``"cpu"``, ``"cuda"``, ...
    amp
        bfloat16 autocast; default on CUDA only.
    out_dir
        Save the trained encoder to this local directory (:meth:`SSLEncoder.save`).
    n_jobs, progress
        Crop-reading threads; progress bars.

    Returns
    -------
    SSLEncoder
        The encoder, with ``config`` (the settings above, cells per slide, training time) and
        ``history`` (``"loss"`` per epoch, ``"step_loss"``, ``"lr"``, ``"epoch_seconds"``).
        Use it as ``sst.tl.embed(sdata, encoder=enc)``.

    Examples
    --------
    >>> enc = sst.tl.train_encoder(sdata, epochs=5, out_dir="encoder_dir")
    >>> sst.tl.embed(sdata, encoder=enc, key_added="sst_embedding_ssl")
    >>> sst.tl.embed(other, encoder="encoder_dir")
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if epochs < 1 or batch_size < 2 or max_cells < 2:
        raise ValueError("Need epochs >= 1, batch_size >= 2 and max_cells >= 2.")
    if input_size_um > crop_size_um:
        raise ValueError(f"input_size_um ({input_size_um}) > crop_size_um ({crop_size_um}).")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if isinstance(augmentation, dict) or augmentation is None:
        augmentation = AugmentConfig.from_dict(augmentation)
    sdatas = [sdatas] if isinstance(sdatas, SpatialData) else list(sdatas)
    if not sdatas:
        raise ValueError("No SpatialData given to train_encoder.")
    dev = resolve_device(device)
    use_amp = dev.type == "cuda" and (amp is None or bool(amp))
    input_px = int(round(input_size_um / crop_mpp))
    # the backbone before the (slow) crop reading: an unknown `arch` fails at once
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    dim = output_dim(backbone, input_px)

    rng = np.random.default_rng(seed)
    crops, per_slide = sample_crops(
        sdatas,
        max_cells,
        rng,
        cells_key=cells_key,
        image_key=image_key,
        crop_size_um=crop_size_um,
        crop_mpp=crop_mpp,
        n_jobs=n_jobs,
        progress=progress,
    )
    n = len(crops)
    if n < 2:
        raise ValueError(f"Only {n} cell(s) found in the slides: nothing to train on.")
    mean, std = channel_stats(crops, input_px)
    if normalization == "slide":  # each crop's own slide's statistics, as embed will use
        slide_of = np.repeat(np.arange(len(sdatas)), per_slide)
        stats = [_slide_stats(s, cells_key, image_key) for s in sdatas]
        crop_mean = np.array([stats[i]["mean"] for i in slide_of], np.float32)
        crop_std = np.array([stats[i]["std"] for i in slide_of], np.float32)
    else:
        crop_mean = np.broadcast_to(np.asarray(mean, np.float32), (n, 3))
        crop_std = np.broadcast_to(np.asarray(std, np.float32), (n, 3))

    hidden, out_dim = (4096, 256) if dim >= 1024 else (1024, 128)
    model = SSLModel(backbone, dim, method, hidden, out_dim, temperature).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    batch = min(batch_size, n)
    steps_per_epoch = n // batch
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(crops)  # uint8 (n, S, S, 3)
    mean_t = torch.tensor(np.ascontiguousarray(crop_mean), device=dev)
    std_t = torch.tensor(np.ascontiguousarray(crop_std), device=dev)
    history: dict[str, list[float]] = {"loss": [], "step_loss": [], "lr": [], "epoch_seconds": []}
    t_start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="train_encoder", disable=not progress, unit="step")
    step = 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        losses = []
        for b in range(steps_per_epoch):
            rows = perm[b * batch : (b + 1) * batch]
            x = data[rows].to(dev, non_blocking=True).permute(0, 3, 1, 2).contiguous()
            m, s = mean_t[rows.to(dev)], std_t[rows.to(dev)]
            v1 = augment(x, input_px, augmentation, g, m, s)
            v2 = augment(x, input_px, augmentation, g, m, s)
            rate = lr_at(step)
            for group in opt.param_groups:
                group["lr"] = rate
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = model(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.update_momentum(momentum_at(step, total, momentum))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"train_encoder: the loss became {value} at step {step}; lower `lr`."
                )
            losses.append(value)
            history["step_loss"].append(round(value, 6))
            history["lr"].append(rate)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{value:.3f}")
        history["loss"].append(float(np.mean(losses)))
        history["epoch_seconds"].append(round(time.perf_counter() - t0, 3))
    bar.close()
    seconds = time.perf_counter() - t_start
    backbone = model.backbone.eval()
    config = {
        "method": method,
        "arch": arch,
        "dim": dim,
        "projector_hidden": hidden,
        "projector_dim": out_dim,
        "max_cells": max_cells,
        "n_cells": n,
        "cells_per_slide": per_slide,
        "n_slides": len(sdatas),
        "cells_key": cells_key,
        "epochs": epochs,
        "batch_size": batch,
        "steps": total,
        "lr": lr,
        "weight_decay": weight_decay,
        "temperature": temperature,
        "momentum": momentum,
        "augmentation": augmentation.to_dict(),
        "seed": seed,
        "device": dev.type,
        "amp": use_amp,
        "train_seconds": round(seconds, 2),
        "normalization": normalization,
    }
    log.info(
        "train_encoder: %s %s on %d cells, %d epochs, final loss %.4f, %.0f s",
        method,
        arch,
        n,
        epochs,
        history["loss"][-1],
        seconds,
    )
    encoder = SSLEncoder(
        backbone,
        arch=arch,
        config=config,
        history=history,
        mean=mean,
        std=std,
        normalization=normalization,
        input_size_um=input_size_um,
        crop_size_um=crop_size_um,
        crop_mpp=crop_mpp,
        input_px=input_px,
        device=dev,
    )
    if out_dir is not None:
        encoder.save(out_dir, overwrite=True)
    return encoder


def _slide_stats(sdata: SpatialData, cells_key: str, image_key: str | None) -> dict:
    """The slide's colour statistics, computed as :func:`~scellst.tl.embed` computes them."""
    _, key, _, centroids = cells_on_image(sdata, cells_key, image_key)
    return slide_channel_stats(image_level0(sdata, key), points_xy=centroids)


def sample_crops(
    sdatas: Sequence[SpatialData],
    max_cells: int,
    rng: np.random.Generator,
    *,
    cells_key: str = CELLS_KEY,
    image_key: str | None = None,
    crop_size_um: float = CROP_SIZE_UM,
    crop_mpp: float = CROP_MPP,
    n_jobs: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Crops of up to ``max_cells`` cells drawn uniformly from all slides.

    Returns the ``(n, S, S, 3)`` uint8 crops (slide by slide, cells in table order) and the
    number of cells drawn from each slide.
    """
    sources = []
    for sdata in sdatas:
        _, key, _, centroids = cells_on_image(sdata, cells_key, image_key)
        sources.append((sdata, key, centroids))
    sizes = np.array([len(c) for _, _, c in sources])
    total = int(sizes.sum())
    chosen = np.sort(rng.choice(total, size=min(max_cells, total), replace=False))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    side = crop_pixels(crop_size_um, crop_mpp)
    crops = np.empty((len(chosen), side, side, 3), np.uint8)
    per_slide = []
    pos = 0
    for i, (sdata, key, centroids) in enumerate(sources):
        idx = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
        per_slide.append(int(len(idx)))
        if not len(idx):
            continue
        for batch in iter_crops(
            image_level0(sdata, key),
            microns_per_pixel(sdata, key),
            centroids[idx],
            crop_size_um=crop_size_um,
            crop_mpp=crop_mpp,
            masks=False,
            n_jobs=n_jobs,
            progress=progress,
        ):
            crops[pos + batch.index] = batch.images
        pos += len(idx)
    return crops, per_slide


def channel_stats(crops: np.ndarray, centre_px: int) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation (RGB in [0, 1]) of the crops' centres."""
    side = crops.shape[1]
    lo = (side - min(centre_px, side)) // 2
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(crops), 4096):
        c = crops[start : start + 4096, lo : lo + centre_px, lo : lo + centre_px]
        c = c.reshape(-1, 3).astype(np.float64) / 255
        total += c.sum(0)
        squares += (c * c).sum(0)
        count += len(c)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-8))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
