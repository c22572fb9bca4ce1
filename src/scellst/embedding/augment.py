"""Histology augmentations of whole batches of cell crops, in torch (CPU or GPU).

Every random draw comes from an explicit :class:`torch.Generator` on the CPU, so a seeded
generator gives the same augmented views on any device and any number of threads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..segmentation.stains import HED

# The Ruifrok & Johnston (2001) stain vectors (hematoxylin, eosin, DAB) that segmentation and
# the morphology features deconvolve with; applied here in torch, to float images, on any device.
_HED_FROM_RGB = HED.astype(np.float64)
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)
# the 8 symmetries of the square: (rotation by k * 90 degrees) o (optional horizontal flip)
_DIHEDRAL = np.array(
    [
        np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]).round() @ f
        for f in (np.eye(2), np.diag([-1.0, 1.0]))
        for a in (0, math.pi / 2, math.pi, 3 * math.pi / 2)
    ]
)


@dataclass
class AugmentConfig:
    """Strengths of the augmentations of :func:`augment` (0 or ``p=0`` turns one off).

    Geometry: ``zoom`` is the range of the side of the sampled square relative to the
    network input (1 = the centre ``out_px`` pixels, > 1 zooms out, which needs a larger crop),
    ``shift`` the largest shift of its centre as a fraction of ``out_px``, ``dihedral`` the
    random 90° rotations and flips (exact: no interpolation). Colour: H&E stain jitter in the
    Ruifrok-Johnston HED space (each stain's concentration ``c -> c * U(1 ± hed_scale) +
    U(± hed_shift)``), then brightness, contrast, saturation (``x -> x * U(1 ± s)``) and hue
    (rotation of the colour around the grey axis by up to ``hue`` turns), with probability
    ``p_color``. Gaussian blur (``sigma`` in pixels) and random erasing (a rectangle of
    ``erase_area`` of the image filled with a random colour) with probabilities ``p_blur`` and
    ``p_erase``.
    """

    zoom: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.08
    dihedral: bool = True
    hed_scale: float = 0.1
    hed_shift: float = 0.05
    p_color: float = 0.8
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03
    p_blur: float = 0.3
    sigma: tuple[float, float] = (0.1, 1.2)
    p_erase: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.12)

    def to_dict(self) -> dict:
        """JSON-ready copy (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise)."""
        d = dict(d or {})
        for k in ("zoom", "sigma", "erase_area"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def geometric(x: torch.Tensor, out_px: int, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random resized crop around the centre, then a random rotation by 90° and flip.

    ``x``: (n, 3, S, S) float. Returns (n, 3, out_px, out_px), sampled bilinearly (exactly the
    centre ``out_px`` pixels, rotated, when zoom is 1 and there is no shift).
    """
    n, _, h, w = x.shape
    zoom = torch.exp(_uniform(n, math.log(cfg.zoom[0]), math.log(cfg.zoom[1]), g))
    shift = _uniform(n, -cfg.shift, cfg.shift, g, 2) * out_px  # pixels of the input
    if cfg.dihedral:
        k = torch.randint(0, 8, (n,), generator=g)
        rot = torch.as_tensor(_DIHEDRAL)[k]
    else:
        rot = torch.eye(2, dtype=torch.float64).expand(n, 2, 2)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1]
    size = torch.tensor([w, h], dtype=torch.float64)
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = rot * (zoom[:, None, None] * out_px / size[None, :, None])
    theta[:, :, 2] = 2 * shift / size
    grid = F.affine_grid(theta.to(x), [n, 3, out_px, out_px], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _per_image_affine(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x[i] -> m[i] @ x[i] + v[i]`` on the colour axis of (n, 3, h, w) images."""
    n, c, h, w = x.shape
    out = torch.baddbmm(v.to(x)[:, :, None], m.to(x), x.reshape(n, c, h * w))
    return out.reshape(n, c, h, w)


def hed_jitter(x: torch.Tensor, scale: float, shift: float, g: torch.Generator) -> torch.Tensor:
    """Perturb the hematoxylin, eosin and residual stain concentrations of each image.

    Concentrations ``c = od @ hed_from_rgb`` of the optical density ``od = -ln((255 x + 1) /
    256)`` (natural log: ``ln(10)`` times :func:`scellst.pp._stains.optical_density`) become ``c * a + b`` (``a ~ U(1 ± scale)``, ``b ~ U(± shift)`` per image and stain),
    and are mapped back to RGB: one 3x3 matrix and offset per image in optical-density space.
    """
    if scale <= 0 and shift <= 0:
        return x
    n = x.shape[0]
    hed = torch.as_tensor(_HED_FROM_RGB)
    rgb = torch.as_tensor(_RGB_FROM_HED)
    a = _uniform(n, 1 - scale, 1 + scale, g, 3)
    b = _uniform(n, -shift, shift, g, 3)
    # row-vector convention od' = (od @ hed * a + b) @ rgb, written for column vectors
    m = rgb.T[None] @ (a[:, :, None] * hed.T[None])
    v = (b[:, None, :] @ rgb)[:, 0]
    od = -torch.log((x * 255 + 1) / 256)
    od = _per_image_affine(od, m, v)
    return ((torch.exp(-od) * 256 - 1) / 255).clamp(0, 1)


_GRAY = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of each image.

    All four are affine maps of the colour, composed into one 3x3 matrix and offset per image
    (torchvision's order; the result is clamped to [0, 1] once, at the end).
    """
    n = x.shape[0]
    eye = torch.eye(3, dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    bright = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g)
    sat = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g)
    angle = _uniform(n, -cfg.hue, cfg.hue, g) * 2 * math.pi
    mean_gray = (x.mean((2, 3)).double().cpu() @ _GRAY) * bright  # after brightness
    # x1 = b x ; x2 = c x1 + (1 - c) mean ; x3 = s x2 + (1 - s) 1 gray(x2) ; x4 = R x3
    m = (bright * contrast)[:, None, None] * eye
    v = ((1 - contrast) * mean_gray)[:, None] * ones
    sat_m = sat[:, None, None] * eye + (1 - sat)[:, None, None] * torch.outer(ones, _GRAY)
    m, v = sat_m @ m, (sat_m @ v[:, :, None])[:, :, 0]
    u = ones / math.sqrt(3)  # hue: rotation about the grey axis (Rodrigues' formula)
    cross = torch.tensor([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    rot = c * eye + s * cross + (1 - c) * torch.outer(u, u)
    m, v = rot @ m, (rot @ v[:, :, None])[:, :, 0]
    return _per_image_affine(x, m, v).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur image ``i`` with a Gaussian of ``sigma[i]`` pixels (separable, 5-tap)."""
    n, c, h, w = x.shape
    r = 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, 5)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return y.reshape(n, c, h, w)


def random_erase(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Fill a random rectangle of some images with a random flat colour."""
    n, _, h, w = x.shape
    do = _bernoulli(n, cfg.p_erase, g)
    area = _uniform(n, cfg.erase_area[0], cfg.erase_area[1], g) * h * w
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(1 / 0.3), g))
    eh = torch.sqrt(area * aspect).clamp(1, h)
    ew = torch.sqrt(area / aspect).clamp(1, w)
    y0 = _uniform(n, 0, 1, g) * (h - eh)
    x0 = _uniform(n, 0, 1, g) * (w - ew)
    colour = _uniform(n, 0, 1, g, 3).to(x)
    rows = torch.arange(h, dtype=torch.float64)
    cols = torch.arange(w, dtype=torch.float64)
    in_y = (rows[None] >= y0[:, None]) & (rows[None] < (y0 + eh)[:, None])
    in_x = (cols[None] >= x0[:, None]) & (cols[None] < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & do[:, None, None]).to(x.device)[:, None]
    return torch.where(mask, colour[:, :, None, None], x)


def augment(
    crops: torch.Tensor,
    out_px: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """One random view of each crop, ready for the network.

    Parameters
    ----------
    crops
        (n, 3, S, S) uint8 (or float in [0, 1]) RGB crops, on any device.
    out_px
        Side of the output views in pixels.
    cfg
        Augmentation strengths.
    generator
        CPU generator for every random draw.
    mean, std
        Per-channel normalisation of the output (on the crops' device): ``(3,)`` for all crops
        or ``(n, 3)``, one row per crop (e.g. each crop's slide statistics); none when ``None``.

    Returns
    -------
    torch.Tensor
        (n, 3, out_px, out_px) float32 views.
    """
    x = crops.float() / 255 if crops.dtype == torch.uint8 else crops.float()
    n = x.shape[0]
    x = geometric(x, out_px, cfg, generator)
    color = _bernoulli(n, cfg.p_color, generator).to(x.device)[:, None, None, None]
    jittered = color_jitter(hed_jitter(x, cfg.hed_scale, cfg.hed_shift, generator), cfg, generator)
    x = torch.where(color, jittered, x)
    blur = _bernoulli(n, cfg.p_blur, generator).to(x.device)[:, None, None, None]
    sigma = _uniform(n, cfg.sigma[0], cfg.sigma[1], generator)
    x = torch.where(blur, gaussian_blur(x, sigma), x)
    x = random_erase(x, cfg, generator)
    if mean is not None and std is not None:
        x = (x - mean.reshape(-1, 3, 1, 1)) / std.reshape(-1, 3, 1, 1)
    return x
