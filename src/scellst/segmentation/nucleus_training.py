"""Training the learned nucleus segmenter on labelled images (imports torch).

Every image is first resampled to the network's working resolution from its µm/px, so one
model serves 20x and 40x slides. Patches are drawn at random (images uniformly, then a
position) with scale (x0.75-1.33), rotation,
flip and stain (haematoxylin/eosin/DAB density) augmentation; the loss is a class-weighted
cross-entropy (boundaries count double: they separate touching nuclei) plus a soft Dice on the
foreground. Seeded: the same data, settings and seed give the same weights on the same machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.color import hed2rgb, rgb2hed
from torch import nn
from tqdm.auto import tqdm

from .nucleus_net import NucleusNet, to_input

log = logging.getLogger(__name__)


@dataclass
class TrainingSettings:
    """Optimisation settings of :func:`train_nucleus_net`."""

    steps: int = 2000
    batch_size: int = 12
    patch_px: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    #: Relative weight of the boundary class in the cross-entropy.
    boundary_weight: float = 2.0
    seed: int = 0


def targets(labels: np.ndarray) -> np.ndarray:
    """Per-pixel classes of an instance label image: 0 background, 1 interior, 2 boundary
    (a nucleus pixel with another label, background included, among its 8 neighbours)."""
    lab = labels.astype(np.int32)
    lo = ndi.grey_erosion(lab, size=3)
    hi = ndi.grey_dilation(lab, size=3)
    out = (lab > 0).astype(np.uint8)
    out[(lab > 0) & ((lo != lab) | (hi != lab))] = 2
    return out


def resample(img: np.ndarray, factor: float, nearest: bool = False) -> np.ndarray:
    """Resize by ``factor`` (area averaging when shrinking, linear when enlarging)."""
    if abs(factor - 1.0) < 1e-6:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interp)


def prepare(
    rgb: np.ndarray, labels: np.ndarray, mpp: float, work_mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at the working resolution: uint8 RGB and per-pixel classes."""
    f = mpp / work_mpp
    # labels first, classes second: boundaries drawn at the source resolution would thin out to
    # scattered pixels when a high-magnification image is shrunk
    return resample(rgb, f), targets(resample(labels.astype(np.int32), f, nearest=True))


def _patch(rgb, tgt, rng, patch):
    f = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    rgb, tgt = resample(rgb, f), resample(tgt, f, nearest=True)
    pad_y, pad_x = max(0, patch - rgb.shape[0]), max(0, patch - rgb.shape[1])
    if pad_y or pad_x:
        rgb = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        tgt = np.pad(tgt, ((0, pad_y), (0, pad_x)), mode="reflect")
    y = rng.integers(0, rgb.shape[0] - patch + 1)
    x = rng.integers(0, rgb.shape[1] - patch + 1)
    rgb, tgt = rgb[y : y + patch, x : x + patch], tgt[y : y + patch, x : x + patch]
    k = int(rng.integers(4))
    rgb, tgt = np.rot90(rgb, k), np.rot90(tgt, k)
    if rng.random() < 0.5:
        rgb, tgt = rgb[:, ::-1], tgt[:, ::-1]
    hed = rgb2hed(np.ascontiguousarray(rgb))
    hed = hed * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.03, 0.03, 3)
    rgb = np.clip(hed2rgb(hed), 0, 1).astype(np.float32)
    return to_input(rgb), torch.from_numpy(np.ascontiguousarray(tgt).astype(np.int64))


def _loss(logits: torch.Tensor, tgt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    ce = nn.functional.cross_entropy(logits, tgt, weight=weight)
    fg = 1.0 - torch.softmax(logits, 1)[:, 0]
    truth = (tgt > 0).float()
    dice = 1.0 - (2 * (fg * truth).sum() + 1.0) / (fg.sum() + truth.sum() + 1.0)
    return ce + dice


def train_nucleus_net(
    net: NucleusNet,
    data: list[tuple[np.ndarray, np.ndarray]],
    settings: TrainingSettings,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Train ``net`` in place on ``(rgb, classes)`` pairs at the working resolution.

    Adam with weight decay, the learning rate following a cosine from ``learning_rate`` to 0
    over ``steps``. Returns a record (steps, seconds, loss over the last 100 steps).
    """
    s = settings
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, s.steps) / s.steps))
    )
    weight = torch.tensor([1.0, 1.0, s.boundary_weight], device=device)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(s.steps), desc="train segmenter", disable=not progress, unit="step")
    for step in bar:
        pairs = [
            _patch(*data[i], rng, s.patch_px) for i in rng.integers(0, len(data), s.batch_size)
        ]
        x = torch.stack([p[0] for p in pairs]).to(device)
        y = torch.stack([p[1] for p in pairs]).to(device)
        loss = _loss(net(x), y, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    net.eval()
    return {
        "steps": s.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": float(np.mean(losses[-100:])),
    }
