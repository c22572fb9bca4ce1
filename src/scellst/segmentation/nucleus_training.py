"""Training the learned nucleus segmenter (imports torch).

Every image is first resampled to the network's working resolution from its µm/px, so one
model serves 20x and 40x slides. Patches are drawn at random with scale (x0.75-1.33), rotation,
flip, stain and blur augmentation; the classes (background, interior, boundary) are computed
from the instance labels *after* the patch is rescaled, so boundaries stay one pixel wide. The
stain augmentation works on optical densities: the haematoxylin and eosin colours and amounts
are redrawn, so a haematoxylin-only crop is also seen as other scanners' H&E.

With eosin textures (the eosin optical density of unannotated real tissue,
:func:`.self_training.eosin_textures`), half of the annotated patches have one painted in: their
nuclei then sit in real cytoplasm and stroma instead of on the glass or the pale background of
most annotated crops (on MoNuSeg, AJI 0.447 with, 0.407 without; same pseudo-labels).

Pseudo-labelled patches (:mod:`.self_training`) carry an ``ignore`` mask: pixels whose teacher
was unsure count in neither loss term. The loss is a class-weighted cross-entropy (boundaries
count double: they separate touching nuclei) plus a soft Dice on the foreground. Seeded: the
same data, settings and seed give the same weights on the same machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from tqdm.auto import tqdm

from .nucleus_net import NucleusNet, to_input
from .resize import resample, resize_labels
from .stains import HED, optical_density

log = logging.getLogger(__name__)

#: Class index of pixels that count in no loss term.
IGNORE = 255
#: Optical-density colour of each stain (rows: haematoxylin, eosin, residual), the inverse of
#: the deconvolution in :mod:`.stains`.
_STAIN_COLOURS = np.linalg.inv(HED).astype(np.float32)


@dataclass
class TrainingSettings:
    """Optimisation settings of :func:`train_nucleus_net`."""

    steps: int = 2000
    batch_size: int = 8
    patch_px: int = 160
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    #: Relative weight of the boundary class in the cross-entropy.
    boundary_weight: float = 2.0
    #: Share of the patches drawn from pseudo-labelled examples, when there are any.
    pseudo_fraction: float = 0.5
    #: Probability of a Gaussian blur (sigma 0.3-1.2 working pixels) on a patch: 20x slides
    #: brought up to the working resolution are softer than 40x ones brought down.
    blur: float = 0.5
    #: Probability that an annotated patch gets an eosin texture, when there are any.
    texture: float = 0.5
    seed: int = 0


@dataclass
class Example:
    """One training image at the working resolution."""

    #: ``(y, x, 3)`` uint8 RGB.
    rgb: np.ndarray
    #: ``(y, x)`` int32 instance labels, 0 = background.
    labels: np.ndarray
    #: ``(y, x)`` bool: pixels without a trusted label (pseudo-labels), or None.
    ignore: np.ndarray | None = None
    #: Whether the labels come from a teacher (drawn with ``pseudo_fraction``).
    pseudo: bool = False


def targets(labels: np.ndarray) -> np.ndarray:
    """Per-pixel classes of an instance label image: 0 background, 1 interior, 2 boundary
    (a nucleus pixel with another label, background included, among its 8 neighbours)."""
    lab = labels.astype(np.int32)
    lo = ndi.grey_erosion(lab, size=3)
    hi = ndi.grey_dilation(lab, size=3)
    out = (lab > 0).astype(np.uint8)
    out[(lab > 0) & ((lo != lab) | (hi != lab))] = 2
    return out


def prepare(rgb: np.ndarray, labels: np.ndarray, mpp: float, work_mpp: float) -> Example:
    """One annotated image at the working resolution."""
    f = mpp / work_mpp
    small = resample(rgb, f)
    return Example(small, resize_labels(labels.astype(np.int32), small.shape[:2]))


def stain_jitter(
    rgb: np.ndarray, rng: np.random.Generator, eosin: np.ndarray | None = None
) -> np.ndarray:
    """Redraw the haematoxylin and eosin colours (each channel of each stain's optical-density
    vector x exp(N(0, 0.15)), norm kept) and amounts (x0.7-1.3 per stain): uint8 RGB in,
    float [0, 1] RGB out.

    ``eosin`` (an eosin optical-density map at least the image's size) is painted in first:
    eosin x U(0.5, 1.5) + texture x U(0.3, 1.3), and a little of its blurred shape added to the
    haematoxylin (cytoplasm takes up some of it too).
    """
    hed = optical_density(rgb) @ HED
    hed[..., :2] = np.maximum(hed[..., :2], 0)
    if eosin is not None:
        h, w = rgb.shape[:2]
        y = rng.integers(0, eosin.shape[0] - h + 1)
        x = rng.integers(0, eosin.shape[1] - w + 1)
        tex = np.maximum(eosin[y : y + h, x : x + w], 0)
        hed[..., 1] = hed[..., 1] * rng.uniform(0.5, 1.5) + tex * rng.uniform(0.3, 1.3)
        hed[..., 0] += rng.uniform(0, 0.15) * cv2.GaussianBlur(tex, (0, 0), 8)
    colours = _STAIN_COLOURS.copy()
    norms = np.linalg.norm(colours[:2], axis=1, keepdims=True)
    colours[:2] *= np.exp(rng.normal(0, 0.15, (2, 3))).astype(np.float32)
    colours[:2] *= norms / np.linalg.norm(colours[:2], axis=1, keepdims=True)
    hed *= rng.uniform(0.7, 1.3, 3).astype(np.float32)
    od = hed @ colours
    # inverse of optical_density's -log10((I + 1) / 256)
    return np.clip((256.0 * 10.0 ** (-od) - 1.0) / 255.0, 0, 1).astype(np.float32)


def _patch(
    ex: Example,
    rng: np.random.Generator,
    patch: int,
    blur: float,
    textures: list[np.ndarray] | None = None,
    texture: float = 0.0,
):
    f = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    rgb = resample(ex.rgb, f)
    lab = resize_labels(ex.labels, rgb.shape[:2])
    ign = None if ex.ignore is None else resize_labels(ex.ignore, rgb.shape[:2])
    pad = ((0, max(0, patch - rgb.shape[0])), (0, max(0, patch - rgb.shape[1])))
    if pad[0][1] or pad[1][1]:  # a small crop: mirrored to the patch size
        rgb, lab = np.pad(rgb, (*pad, (0, 0)), mode="reflect"), np.pad(lab, pad, mode="reflect")
        ign = None if ign is None else np.pad(ign, pad, mode="reflect")
    y = rng.integers(0, rgb.shape[0] - patch + 1)
    x = rng.integers(0, rgb.shape[1] - patch + 1)
    window = (slice(y, y + patch), slice(x, x + patch))
    rgb, lab = rgb[window], lab[window]
    ign = None if ign is None else ign[window]
    k, flip = int(rng.integers(4)), rng.random() < 0.5

    def orient(a):
        a = np.rot90(a, k)
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    rgb, lab = orient(rgb), orient(lab)
    eosin = None
    if textures and not ex.pseudo and rng.random() < texture:
        eosin = textures[rng.integers(len(textures))]
        if min(eosin.shape) < patch:
            eosin = cv2.resize(eosin, (patch, patch))
    img = stain_jitter(rgb, rng, eosin)
    if rng.random() < blur:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    tgt = targets(lab)
    if ign is not None:
        tgt[orient(ign)] = IGNORE
    return to_input(img), torch.from_numpy(tgt.astype(np.int64))


def _loss(logits: torch.Tensor, tgt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    ce = nn.functional.cross_entropy(logits, tgt, weight=weight, ignore_index=IGNORE)
    known = (tgt != IGNORE).float()
    fg = (1.0 - torch.softmax(logits, 1)[:, 0]) * known
    truth = ((tgt > 0) & (tgt != IGNORE)).float()
    dice = 1.0 - (2 * (fg * truth).sum() + 1.0) / (fg.sum() + truth.sum() + 1.0)
    return ce + dice


def _draw_weights(data: list[Example], pseudo_fraction: float) -> np.ndarray:
    """Probability of drawing each example: uniform within the annotated and within the
    pseudo-labelled ones, ``pseudo_fraction`` of the draws for the latter when both exist."""
    pseudo = np.array([ex.pseudo for ex in data])
    if pseudo.all() or not pseudo.any():
        return np.full(len(data), 1.0 / len(data))
    return np.where(pseudo, pseudo_fraction / pseudo.sum(), (1 - pseudo_fraction) / (~pseudo).sum())


def train_nucleus_net(
    net: NucleusNet,
    data: list[Example],
    settings: TrainingSettings,
    *,
    textures: list[np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Train ``net`` in place on examples at the working resolution (``textures``: eosin
    optical-density maps painted into annotated patches, see the module's description).

    Adam with weight decay, the learning rate following a cosine from ``learning_rate`` to 0
    over ``steps``. Returns a record (steps, seconds, loss over the last 100 steps).
    """
    s = settings
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    p_draw = _draw_weights(data, s.pseudo_fraction)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, s.steps) / s.steps))
    )
    weight = torch.tensor([1.0, 1.0, s.boundary_weight], device=device)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(s.steps), desc="train segmenter", disable=not progress, unit="step")
    for step in bar:
        picks = rng.choice(len(data), s.batch_size, p=p_draw)
        pairs = [_patch(data[i], rng, s.patch_px, s.blur, textures, s.texture) for i in picks]
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
