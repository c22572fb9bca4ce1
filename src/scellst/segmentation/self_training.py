"""Pseudo-labels on unannotated H&E, for self-training the learned segmenter (imports torch).

Annotated nuclei are scarce and come from other labs' stains; a user's own slides (or public
ones) are plentiful but unlabelled. Patches with nuclei are drawn from them at the working
resolution and labelled by two teachers that fail differently: the classical watershed (colour
and shape) and a trained :class:`~.learned.NucleusSegmenter` (averaged over the 8 flips and
rotations of the patch). A pixel is labelled where they agree, nucleus (with the watershed's
instance) or background, and ignored where they do not or where the network is unsure. A
student trained on these and on the annotated images sees real tissue of the target stain.

On MoNuSeg (never trained on; 1,500-step experiments), a student of the first DSB2018-trained
weights scored AJI 0.440 (their own: 0.425), 0.485 with the full-resolution branch and the
distance seeds; the watershed's labels alone, without the network's agreement, gave 0.391. The
shipped weights (a DSB2018 teacher, then a 4,000-step student) score 0.467.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .nucleus_training import Example
from .resize import resize_image
from .stains import TISSUE_OD, optical_density, stain, total_od
from .watershed import WatershedSegmenter


@dataclass
class PseudoLabelSettings:
    """How unannotated slides are sampled and labelled."""

    #: Patches drawn per slide.
    patches_per_image: int = 90
    #: Side of a patch, in working pixels.
    patch_px: int = 320
    #: A patch is kept when this fraction of it is tissue ...
    min_tissue: float = 0.7
    #: ... and the watershed finds at least this many nuclei in it.
    min_nuclei: int = 15
    #: Background where the network's p(background) exceeds this and the watershed finds none.
    background: float = 0.7
    #: Random windows tried per patch kept before a slide is given up on.
    tries_per_patch: int = 50


#: A slide as ``(read(y0, y1, x0, x1) -> uint8 RGB, (height, width), µm/px)``.
Slide = tuple[Callable[[int, int, int, int], np.ndarray], tuple[int, int], float]


def array_slide(rgb: np.ndarray, microns_per_pixel: float) -> Slide:
    """A slide held in memory as a ``(y, x, 3)`` uint8 array."""
    return (
        lambda y0, y1, x0, x1: np.ascontiguousarray(rgb[y0:y1, x0:x1, :3]),
        rgb.shape[:2],
        float(microns_per_pixel),
    )


def _corner(rng: np.random.Generator, shape: tuple[int, int], side: int) -> tuple[int, int]:
    """A random window of ``side`` px inside a slide of ``shape``: its top-left corner."""
    return int(rng.integers(0, shape[0] - side + 1)), int(rng.integers(0, shape[1] - side + 1))


def _dihedral_mean(teacher, rgb: np.ndarray, work_mpp: float) -> np.ndarray:
    """The teacher's class probabilities averaged over the 8 rotations and flips of ``rgb``."""
    acc = np.zeros((3, *rgb.shape[:2]), np.float32)
    for k in range(8):
        view = np.rot90(rgb, k % 4)
        view = np.ascontiguousarray(view[:, ::-1] if k >= 4 else view)
        p = teacher.probabilities(view, work_mpp)
        acc += np.rot90(p[:, :, ::-1] if k >= 4 else p, -(k % 4), axes=(1, 2))
    return acc / 8


def pseudo_label(rgb: np.ndarray, ws: np.ndarray, teacher, background: float = 0.7) -> Example:
    """One patch at the teacher's working resolution with the watershed's labels ``ws``:
    nucleus where the network agrees, background where neither finds one (the network with
    p(background) > ``background``), ignored elsewhere."""
    p = _dihedral_mean(teacher, rgb, teacher.work_mpp)
    nucleus = (ws > 0) & ((p[1] + p[2]) > 0.5)
    ignore = ~(nucleus | ((ws == 0) & (p[0] > background)))
    return Example(rgb, np.where(nucleus, ws, 0).astype(np.int32), ignore, pseudo=True)


def eosin_textures(
    slides: list[Slide],
    work_mpp: float,
    *,
    per_slide: int = 60,
    size: int = 256,
    min_tissue: float = 0.9,
    seed: int = 0,
) -> list[np.ndarray]:
    """Eosin optical-density maps ``(size, size)`` float32 of tissue windows (``min_tissue`` of
    the window above the tissue density) of each slide, at ``work_mpp``: the cytoplasm and
    stroma that :func:`.nucleus_training.stain_jitter` paints into annotated crops."""
    rng = np.random.default_rng(seed)
    out = []
    for read, shape, mpp in slides:
        side = int(round(size / (mpp / work_mpp)))  # the window's side in the slide's pixels
        if side > min(shape):
            continue
        kept = 0
        for _ in range(per_slide * 50):
            y, x = _corner(rng, shape, side)
            rgb = read(y, y + side, x, x + side)
            if (total_od(rgb) > TISSUE_OD).mean() < min_tissue:
                continue
            out.append(stain(optical_density(resize_image(rgb, (size, size))), 1))
            kept += 1
            if kept == per_slide:
                break
    return out


def pseudo_labelled(
    slides: list[Slide],
    teacher,
    settings: PseudoLabelSettings | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[Example]:
    """Pseudo-labelled patches from unannotated slides (see the module's description).

    ``teacher`` is a :class:`~.learned.NucleusSegmenter`; patches are cut at its working
    resolution. The watershed's threshold is fitted once per slide, as in ``sst.pp.segment``.
    """
    s = settings or PseudoLabelSettings()
    rng = np.random.default_rng(seed)
    work = teacher.work_mpp
    out: list[Example] = []
    bar = tqdm(total=len(slides) * s.patches_per_image, desc="pseudo-labels", disable=not progress)
    for read, shape, mpp in slides:
        side = int(round(s.patch_px / (mpp / work)))  # the patch's side in the slide's pixels
        if side > min(shape):
            raise ValueError(
                f"A slide of {shape[0]}x{shape[1]} px at {mpp} µm/px is smaller than one "
                f"{s.patch_px}-px patch at {work} µm/px; pass larger slides."
            )

        def patch(read=read, shape=shape, side=side) -> np.ndarray:
            y, x = _corner(rng, shape, side)
            return resize_image(read(y, y + side, x, x + side), (s.patch_px, s.patch_px))

        watershed = WatershedSegmenter()
        if watershed.fit_threshold([patch() for _ in range(8)], work) is None:
            bar.update(s.patches_per_image)
            continue  # no tissue found
        kept = 0
        for _ in range(s.patches_per_image * s.tries_per_patch):
            rgb = patch()
            if (total_od(rgb) > watershed.params.tissue_od).mean() < s.min_tissue:
                continue
            ws = watershed(rgb, work)
            if len(np.unique(ws)) - 1 < s.min_nuclei:
                continue
            out.append(pseudo_label(rgb, ws, teacher, s.background))
            kept += 1
            bar.update(1)
            if kept == s.patches_per_image:
                break
        bar.update(s.patches_per_image - kept)
    bar.close()
    return out
