"""Geometry and rendering of the synthetic H&E tissue (private helpers of ``synthetic``).

Everything physical is decided in micrometres first (tissue layout, regions, nucleus positions,
types and shapes), with random draws whose number does not depend on the pixel size, so the same
seed gives the same tissue at any ``microns_per_pixel``. Only then are nuclei rasterised into
pixels and the image rendered by Beer-Lambert mixing of the Ruifrok hematoxylin/eosin stain
vectors (the ones :func:`skimage.color.rgb2hed` inverts).

Pixel convention (as SpatialData's image coordinates): pixel ``(row i, column j)`` covers
``[j, j + 1) x [i, i + 1)``, so its centre is at ``x = j + 0.5, y = i + 0.5``; micrometres are
``pixel coordinates * mpp``. Positions of nuclei and spots are continuous coordinates in that
frame; arrays are indexed by ``floor``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from scipy.ndimage import map_coordinates
from skimage.color import rgb_from_hed

# --- cell types and tissue regions -------------------------------------------------------------
CELL_TYPES = ("tumour", "lymphocyte", "fibroblast", "macrophage")
TISSUE_REGIONS = ("tumour_nest", "stroma", "immune_aggregate", "inflamed_stroma")

#: cell-type mixture of each tissue region (rows: regions, columns: CELL_TYPES)
_REGION_MIX = np.array(
    [
        [0.86, 0.05, 0.04, 0.05],
        [0.04, 0.12, 0.70, 0.14],
        [0.02, 0.84, 0.04, 0.10],
        [0.05, 0.36, 0.29, 0.30],
    ]
)
#: candidate lattice spacing of each region, relative to ``cell_spacing_um``
_REGION_SPACING = np.array([0.95, 1.3, 0.66, 0.9])
#: prior probability of each region type for a Voronoi seed
_REGION_PROB = np.array([0.36, 0.32, 0.12, 0.20])
#: relative size of the Voronoi cells of each region type (immune aggregates are small, round)
_REGION_SIZE = np.array([1.15, 1.1, 0.6, 0.9])
#: eosin optical density (natural log units) of the extracellular tissue of each region
_REGION_EOSIN = np.array([0.36, 0.54, 0.27, 0.44], dtype=np.float32)
#: hematoxylin haze of the extracellular tissue of each region
_REGION_HAZE = np.array([0.07, 0.05, 0.12, 0.08], dtype=np.float32)


@dataclass(frozen=True)
class _NucleusModel:
    """Morphology of one cell type's nuclei (lengths in µm, densities in natural-log OD)."""

    semi_major: float
    semi_minor: float
    size_sd: float  # log-sd of the overall size
    aspect_sd: float  # log-sd of the aspect ratio
    harmonic_amp: float  # amplitude of the radial harmonics (boundary irregularity)
    kidney_prob: float  # probability of a kidney-shaped indentation
    darkness: float  # mean hematoxylin OD of the nucleus
    darkness_sd: float  # log-sd of the darkness between cells
    coarse_texture: float  # amplitude of coarse chromatin clumps
    fine_texture: float  # amplitude of fine chromatin grain
    rim: float  # extra darkness at the nuclear envelope (vesicular chromatin)
    nucleolus_prob: float
    cytoplasm: float  # eosin OD of the cytoplasm halo around the nucleus


NUCLEI = {
    "tumour": _NucleusModel(
        5.3, 4.5, 0.13, 0.08, 0.075, 0.0, 1.05, 0.10, 0.30, 0.06, 0.35, 0.7, 0.55
    ),
    "lymphocyte": _NucleusModel(
        2.8, 2.6, 0.07, 0.04, 0.015, 0.0, 1.70, 0.08, 0.03, 0.05, 0.05, 0.0, 0.0
    ),
    "fibroblast": _NucleusModel(
        6.6, 2.0, 0.11, 0.12, 0.03, 0.0, 1.25, 0.10, 0.05, 0.08, 0.0, 0.0, 0.10
    ),
    "macrophage": _NucleusModel(
        4.6, 3.3, 0.09, 0.08, 0.03, 0.6, 0.80, 0.10, 0.04, 0.16, 0.25, 0.0, 0.40
    ),
}

_N_HARMONICS = 5  # radial harmonics k = 2..6
_COARSE_UM = 4.0  # resolution of the smooth fields (µm per coarse pixel)
_GAP_UM = 0.3  # nuclei are kept at least ~ this far apart (they may nearly touch)
_KIDNEY_WIDTH = 0.5  # angular width (von Mises concentration 1/width^2) of the indentation
_H_VEC, _E_VEC, _D_VEC = (rgb_from_hed[i].astype(np.float32) for i in range(3))


# --- smooth random fields ---------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma`` (px)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    field = cv2.GaussianBlur(
        noise, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
    )
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _sample(coarse: np.ndarray, x_um: np.ndarray, y_um: np.ndarray, order: int = 1) -> np.ndarray:
    """Value of a coarse field at physical positions (µm)."""
    coords = np.stack([np.asarray(y_um) / _COARSE_UM, np.asarray(x_um) / _COARSE_UM])
    return map_coordinates(coarse, coords, order=order, mode="nearest")


@dataclass
class Layout:
    """Tissue layout on the coarse grid (µm-based, independent of the pixel size)."""

    tissue: np.ndarray  # signed tissue level, > 0 inside tissue
    region: np.ndarray  # tissue-region index (into TISSUE_REGIONS)
    eosin: np.ndarray  # extracellular eosin OD
    haze: np.ndarray  # extracellular hematoxylin OD
    stroma: np.ndarray  # weight of fibrous texture (0..1)
    warp: np.ndarray  # phase warp of the collagen fibres (radians)
    fibre_angle: float  # mean direction of the fibre bands' normal
    fibre_wavelength: float  # µm


def make_layout(
    rng: np.random.Generator, extent_um: tuple[float, float], tissue_fraction: float
) -> Layout:
    """Tissue mask, tissue regions (noisy Voronoi) and stroma fibre field on a 4 µm grid."""
    h_um, w_um = extent_um
    shape = (int(np.ceil(h_um / _COARSE_UM)) + 2, int(np.ceil(w_um / _COARSE_UM)) + 2)
    c = _COARSE_UM

    # tissue: a large smooth blob field, thresholded to the requested fraction, minus small
    # round holes (lumina / fat) where the glass shows through
    base = _smooth_field(rng, shape, 140.0 / c)
    holes = _smooth_field(rng, shape, 9.0 / c)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32) * c
    # slightly favour tissue towards the centre so the margin tends to be at the slide border
    rel = np.maximum(np.abs(yy / max(h_um, 1.0) - 0.5), np.abs(xx / max(w_um, 1.0) - 0.5))
    base = base - 2.5 * np.clip(rel - 0.3, 0, None) ** 1.5 * 4
    inside = (slice(1, shape[0] - 1), slice(1, shape[1] - 1))
    hole_level = np.quantile(holes[inside], 0.975)
    holes_free = hole_level - holes  # > 0 away from holes
    frac = float(np.clip(tissue_fraction, 0.05, 1.0))
    if frac >= 1.0:
        tissue = np.minimum(np.full_like(base, 1.0), holes_free)
    else:
        level = np.quantile(base[inside], 1.0 - frac / 0.975)
        tissue = np.minimum(base - level, holes_free)
    tissue = tissue.astype(np.float32)

    # regions: Voronoi of random seeds on domain-warped coordinates (noisy boundaries)
    n_seeds = max(4, round(h_um * w_um / 260.0**2))
    seeds = rng.uniform([0, 0], [w_um, h_um], size=(n_seeds, 2))
    seed_region = rng.choice(len(TISSUE_REGIONS), size=n_seeds, p=_REGION_PROB)
    seed_region[: len(TISSUE_REGIONS)] = rng.permutation(len(TISSUE_REGIONS))
    wx = _smooth_field(rng, shape, 45.0 / c) * 45.0 + _smooth_field(rng, shape, 12.0 / c) * 8.0
    wy = _smooth_field(rng, shape, 45.0 / c) * 45.0 + _smooth_field(rng, shape, 12.0 / c) * 8.0
    px, py = xx + wx, yy + wy
    d2 = np.full(shape, np.inf, dtype=np.float32)
    nearest = np.zeros(shape, dtype=np.int32)
    for k, (sx, sy) in enumerate(seeds):
        dk = ((px - sx) ** 2 + (py - sy) ** 2) / _REGION_SIZE[seed_region[k]] ** 2
        closer = dk < d2
        d2[closer] = dk[closer]
        nearest[closer] = k
    region = seed_region[nearest].astype(np.uint8)

    # extracellular stain levels per region, softened at region borders, with slow variation
    slow = _smooth_field(rng, shape, 60.0 / c)
    eosin = cv2.GaussianBlur(_REGION_EOSIN[region], (0, 0), 6.0 / c) * (1.0 + 0.12 * slow)
    haze = cv2.GaussianBlur(_REGION_HAZE[region], (0, 0), 6.0 / c)
    stroma = (region == 1).astype(np.float32) + 0.5 * (region == 3)
    stroma = cv2.GaussianBlur(stroma, (0, 0), 8.0 / c)
    warp = _smooth_field(rng, shape, 40.0 / c) * 7.0
    fibre_angle = float(rng.uniform(0, np.pi))
    return Layout(
        tissue=tissue,
        region=region,
        eosin=eosin.astype(np.float32),
        haze=haze.astype(np.float32),
        stroma=stroma,
        warp=warp.astype(np.float32),
        fibre_angle=fibre_angle,
        fibre_wavelength=9.0,
    )


# --- nuclei ----------------------------------------------------------------------------------
@dataclass
class Nuclei:
    """Per-nucleus parameters (positions and lengths in µm)."""

    x: np.ndarray
    y: np.ndarray
    cell_type: np.ndarray  # index into CELL_TYPES
    region: np.ndarray  # index into TISSUE_REGIONS
    a: np.ndarray  # semi-axis along the orientation
    b: np.ndarray  # perpendicular semi-axis
    angle: np.ndarray  # orientation (radians, x towards y)
    hc: np.ndarray  # (n, K) cosine coefficients of the radial harmonics k = 2..
    hs: np.ndarray  # (n, K) sine coefficients
    kidney: np.ndarray  # depth of the kidney indentation (0 = none)
    kidney_angle: np.ndarray
    darkness: np.ndarray  # hematoxylin OD scale of the nucleus
    nucleolus: np.ndarray  # nucleolus radius in µm (0 = none)
    nucleolus_dx: np.ndarray  # nucleolus offset from the centre (µm)
    nucleolus_dy: np.ndarray
    priority: np.ndarray  # placement priority (higher wins a conflict)

    def take(self, idx: np.ndarray) -> Nuclei:
        return Nuclei(**{k: v[idx] for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.x)

    def bounding_radius(self) -> np.ndarray:
        """Radius (µm) of a circle around the centre that contains the whole nucleus."""
        return np.maximum(self.a, self.b) * (1.0 + np.abs(self.hc).sum(1) + np.abs(self.hs).sum(1))


def _hex_lattice(
    rng: np.random.Generator, extent_um: tuple[float, float], spacing: float
) -> np.ndarray:
    h_um, w_um = extent_um
    dy = spacing * np.sqrt(3) / 2
    off = rng.uniform(0, spacing, size=2)
    rows = np.arange(-1, h_um / dy + 1)
    cols = np.arange(-1, w_um / spacing + 1)
    jj, ii = np.meshgrid(cols, rows)
    x = off[0] + (jj + 0.5 * (ii % 2)) * spacing
    y = off[1] + ii * dy
    return np.stack([x.ravel(), y.ravel()], axis=1)


def candidate_nuclei(
    rng: np.random.Generator, layout: Layout, extent_um: tuple[float, float], spacing: float
) -> Nuclei:
    """Jittered hexagonal lattices (one per region density) inside the tissue, with types."""
    points, regions = [], []
    for r in range(len(TISSUE_REGIONS)):
        s = spacing * _REGION_SPACING[r]
        xy = _hex_lattice(rng, extent_um, s)
        xy = xy + rng.normal(0, 0.2 * s, size=xy.shape)
        reg = _sample(layout.region, xy[:, 0], xy[:, 1], order=0)
        tis = _sample(layout.tissue, xy[:, 0], xy[:, 1], order=1)
        ok = (reg == r) & (tis > 0.02)
        ok &= (xy[:, 0] >= 0) & (xy[:, 1] >= 0)
        ok &= (xy[:, 0] <= extent_um[1]) & (xy[:, 1] <= extent_um[0])
        points.append(xy[ok])
        regions.append(np.full(int(ok.sum()), r))
    xy = np.concatenate(points)
    region = np.concatenate(regions)
    n = len(xy)

    cum = np.cumsum(_REGION_MIX[region], axis=1)
    cell_type = (rng.random(n)[:, None] > cum[:, :-1]).sum(1)

    models = [NUCLEI[t] for t in CELL_TYPES]

    def per_type(attr: str) -> np.ndarray:
        return np.array([getattr(m, attr) for m in models])[cell_type]

    size = np.exp(rng.normal(0, 1, n) * per_type("size_sd"))
    aspect = np.exp(rng.normal(0, 1, n) * per_type("aspect_sd"))
    a = per_type("semi_major") * size * np.sqrt(aspect)
    b = per_type("semi_minor") * size / np.sqrt(aspect)

    # orientation: fibroblasts follow the collagen bands, others are random
    angle = rng.uniform(0, np.pi, n)
    gy, gx = np.gradient(layout.warp, _COARSE_UM)
    k0 = 2 * np.pi / layout.fibre_wavelength
    phx = k0 * np.cos(layout.fibre_angle) + _sample(gx, xy[:, 0], xy[:, 1])
    phy = k0 * np.sin(layout.fibre_angle) + _sample(gy, xy[:, 0], xy[:, 1])
    along = np.arctan2(phy, phx) + np.pi / 2 + rng.normal(0, 0.15, n)
    fib = cell_type == CELL_TYPES.index("fibroblast")
    angle[fib] = along[fib]

    k = np.arange(2, 2 + _N_HARMONICS)
    amp = per_type("harmonic_amp")[:, None] / np.sqrt(k - 1)[None, :]
    hc = rng.normal(0, 1, (n, _N_HARMONICS)) * amp
    hs = rng.normal(0, 1, (n, _N_HARMONICS)) * amp
    total = np.abs(hc).sum(1) + np.abs(hs).sum(1)
    shrink = np.minimum(1.0, 0.4 / np.maximum(total, 1e-9))[:, None]
    hc *= shrink
    hs *= shrink

    kidney = np.where(rng.random(n) < per_type("kidney_prob"), rng.uniform(0.12, 0.3, n), 0.0)
    kidney_angle = np.where(rng.random(n) < 0.5, np.pi / 2, -np.pi / 2)
    darkness = per_type("darkness") * np.exp(rng.normal(0, 1, n) * per_type("darkness_sd"))
    has_nucleolus = rng.random(n) < per_type("nucleolus_prob")
    nucleolus = np.where(has_nucleolus, rng.uniform(0.5, 0.8, n), 0.0)
    rad = 0.35 * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    nucleolus_dx = rad * np.cos(phi) * np.minimum(a, b)
    nucleolus_dy = rad * np.sin(phi) * np.minimum(a, b)
    priority = rng.permutation(n)
    return Nuclei(
        x=xy[:, 0],
        y=xy[:, 1],
        cell_type=cell_type,
        region=region,
        a=a,
        b=b,
        angle=angle,
        hc=hc,
        hs=hs,
        kidney=kidney,
        kidney_angle=kidney_angle,
        darkness=darkness,
        nucleolus=nucleolus,
        nucleolus_dx=nucleolus_dx,
        nucleolus_dy=nucleolus_dy,
        priority=priority,
    )


def _radial(nuc: Nuclei, idx: np.ndarray, cos1: np.ndarray, sin1: np.ndarray) -> np.ndarray:
    """Boundary radius r(theta) (in units of the semi-axes) for nuclei ``idx``.

    ``cos1``/``sin1`` have the nuclei on the first axis; any further axes are broadcast.
    """
    extra = (slice(None),) + (None,) * (cos1.ndim - 1)
    r = np.ones_like(cos1)
    ck, sk = cos1, sin1
    for j in range(_N_HARMONICS):
        # angle doubling up to k = j + 2
        ck, sk = ck * cos1 - sk * sin1, sk * cos1 + ck * sin1
        r += (
            nuc.hc[idx, j].astype(cos1.dtype)[extra] * ck
            + nuc.hs[idx, j].astype(cos1.dtype)[extra] * sk
        )
    kd = nuc.kidney[idx].astype(cos1.dtype)[extra]
    if np.any(kd):
        ka = nuc.kidney_angle[idx]
        cos_rel = (
            cos1 * np.cos(ka).astype(cos1.dtype)[extra]
            + sin1 * np.sin(ka).astype(cos1.dtype)[extra]
        )
        r -= kd * np.exp((cos_rel - 1.0) / _KIDNEY_WIDTH**2)
    return r


@dataclass
class Raster:
    """Pixels covered by each nucleus (grown by a small gap), as flat image indices."""

    owner: np.ndarray  # nucleus index of each entry
    flat: np.ndarray  # flat pixel index (y * width + x)
    inside: np.ndarray  # True where the pixel is inside the nucleus proper (not only the gap)
    fits: np.ndarray  # per nucleus: True when it lies entirely inside the image


def rasterize(
    nuc: Nuclei, mpp: float, shape: tuple[int, int], max_elems: int = 3_000_000
) -> Raster:
    """Rasterise every nucleus in a small local patch (batched, vectorised over nuclei)."""
    height, width = shape
    # centres in array-index space (the centre of pixel j is at continuous coordinate j + 0.5)
    cx, cy = nuc.x / mpp - 0.5, nuc.y / mpp - 0.5
    a, b = nuc.a / mpp, nuc.b / mpp
    gap = _GAP_UM / mpp / 2
    half = np.ceil(nuc.bounding_radius() / mpp + gap).astype(int) + 1
    reach = nuc.bounding_radius() / mpp + gap
    fits = (cx - reach >= 0) & (cy - reach >= 0)
    fits &= (cx + reach <= width - 1) & (cy + reach <= height - 1)
    order = np.argsort(half, kind="stable")
    out_owner, out_flat, out_inside = [], [], []
    start = 0
    n = len(nuc)
    patch_elems = (2 * half[order] + 1) ** 2  # non-decreasing
    while start < n:
        # grow the batch (nuclei sorted by size) while its patches fit the element budget
        cost = np.arange(1, n - start + 1) * patch_elems[start:]
        stop = start + max(1, int(np.searchsorted(cost, max_elems, side="right")))
        h = int(half[order[stop - 1]])
        p = 2 * h + 1
        idx = order[start:stop]
        ox = np.round(cx[idx]).astype(np.int64) - h
        oy = np.round(cy[idx]).astype(np.int64) - h
        grid = np.arange(p, dtype=np.float32)
        dx = (ox - cx[idx]).astype(np.float32)[:, None] + grid[None, :]  # (m, p)
        dy = (oy - cy[idx]).astype(np.float32)[:, None] + grid[None, :]
        ca = np.cos(nuc.angle[idx]).astype(np.float32)[:, None, None]
        sa = np.sin(nuc.angle[idx]).astype(np.float32)[:, None, None]
        ia = (1.0 / a[idx]).astype(np.float32)[:, None, None]
        ib = (1.0 / b[idx]).astype(np.float32)[:, None, None]
        u = (dx[:, None, :] * ca + dy[:, :, None] * sa) * ia
        v = (dy[:, :, None] * ca - dx[:, None, :] * sa) * ib
        rho = np.sqrt(u * u + v * v)
        # r(theta) lies in [lo, hi]: only the annulus between needs the exact boundary
        wobble = (np.abs(nuc.hc[idx]).sum(1) + np.abs(nuc.hs[idx]).sum(1)).astype(np.float32)
        lo = (1.0 - wobble - nuc.kidney[idx]).astype(np.float32)
        hi = 1.0 + wobble + np.float32(gap) / np.minimum(a[idx], b[idx]).astype(np.float32)
        sure = rho <= lo[:, None, None]
        maybe = (rho <= hi[:, None, None]) & ~sure
        m_b, m_y, m_x = np.nonzero(maybe)
        cell = idx[m_b]
        mu, mv, mr = u[maybe], v[maybe], rho[maybe]
        safe = np.maximum(mr, 1e-6)
        cos1, sin1 = mu / safe, mv / safe
        r = _radial(nuc, cell, cos1, sin1)
        # grow the boundary by ``gap`` pixels along the (approximate) normal
        ac, bc = a[cell].astype(np.float32), b[cell].astype(np.float32)
        grow = np.float32(gap) * np.sqrt((cos1 / ac) ** 2 + (sin1 / bc) ** 2)
        covered = mr <= r + grow
        s_b, s_y, s_x = np.nonzero(sure)
        bi_ = np.concatenate([s_b, m_b[covered]])
        yy = oy[bi_] + np.concatenate([s_y, m_y[covered]])
        xx = ox[bi_] + np.concatenate([s_x, m_x[covered]])
        inside = np.concatenate([np.ones(len(s_b), dtype=bool), (mr <= r)[covered]])
        valid = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        out_owner.append(idx[bi_][valid].astype(np.int32))
        out_flat.append((yy * width + xx)[valid])
        out_inside.append(inside[valid])
        start = stop
    return Raster(
        owner=np.concatenate(out_owner),
        flat=np.concatenate(out_flat),
        inside=np.concatenate(out_inside),
        fits=fits,
    )


def _greedy_independent_set(
    n: int, ei: np.ndarray, ej: np.ndarray, priority: np.ndarray, alive: np.ndarray
) -> np.ndarray:
    """Keep nodes greedily by priority so that no edge joins two kept nodes (vectorised)."""
    alive = alive.copy()
    keep = np.zeros(n, dtype=bool)
    while True:
        m = alive[ei] & alive[ej]
        ei, ej = ei[m], ej[m]
        if ei.size == 0:
            return keep | alive
        beaten = np.zeros(n, dtype=bool)
        i_wins = priority[ei] > priority[ej]
        beaten[ej[i_wins]] = True
        beaten[ei[~i_wins]] = True
        winners = alive & ~beaten
        keep |= winners
        alive &= ~winners
        alive[ej[winners[ei]]] = False
        alive[ei[winners[ej]]] = False


def resolve_overlaps(
    nuc: Nuclei, raster: Raster, shape: tuple[int, int], min_pixels: int = 4
) -> np.ndarray:
    """Boolean mask of the nuclei to keep so that no two (gap-grown) nuclei share a pixel."""
    n = len(nuc)
    inside_count = np.bincount(raster.owner[raster.inside], minlength=n)
    keep = (inside_count >= min_pixels) & raster.fits
    canvas = np.empty(shape[0] * shape[1], dtype=np.int32)
    for _ in range(20):
        sel = keep[raster.owner]
        flat, owner = raster.flat[sel], raster.owner[sel]
        canvas[flat] = owner
        other = canvas[flat]
        clash = other != owner
        if not clash.any():
            break
        keep = _greedy_independent_set(n, owner[clash], other[clash], nuc.priority, keep)
    return keep


def polygons(nuc: Nuclei, mpp: float, n_vertices: int = 64) -> np.ndarray:
    """Shapely polygons of the nucleus boundaries in pixel coordinates."""
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    cos1 = np.broadcast_to(np.cos(theta), (len(nuc), n_vertices))
    sin1 = np.broadcast_to(np.sin(theta), (len(nuc), n_vertices))
    r = _radial(nuc, np.arange(len(nuc)), cos1, sin1)
    fx = (nuc.a / mpp)[:, None] * r * cos1
    fy = (nuc.b / mpp)[:, None] * r * sin1
    ca, sa = np.cos(nuc.angle)[:, None], np.sin(nuc.angle)[:, None]
    x = (nuc.x / mpp)[:, None] + fx * ca - fy * sa
    y = (nuc.y / mpp)[:, None] + fx * sa + fy * ca
    coords = np.stack([x, y], axis=-1)
    coords = np.concatenate([coords, coords[:, :1]], axis=1)
    return shapely.polygons(coords)


# --- image ---------------------------------------------------------------------------------
def _hash_uniform(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random values in [-1, 1) of integer lattice points."""
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= iy.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x27D4EB2D)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 / 2**24) - np.float32(1.0)


def _value_noise(x_um: np.ndarray, y_um: np.ndarray, cell_um: float, salt: int) -> np.ndarray:
    """Smooth value noise (about unit variance) at arbitrary physical positions.

    A pure function of the position, so any subset of pixels (a strip, the pixels of the nuclei)
    can be textured without generating a whole-image random field, at any pixel size.
    """
    gx = np.asarray(x_um, dtype=np.float32) / np.float32(cell_um)
    gy = np.asarray(y_um, dtype=np.float32) / np.float32(cell_um)
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    fx = fx * fx * (3 - 2 * fx)
    fy = fy * fy * (3 - 2 * fy)
    ix = ix.astype(np.int64) + 4096
    iy = iy.astype(np.int64) + 4096
    v00 = _hash_uniform(ix, iy, salt)
    v10 = _hash_uniform(ix + 1, iy, salt)
    v01 = _hash_uniform(ix, iy + 1, salt)
    v11 = _hash_uniform(ix + 1, iy + 1, salt)
    top = v00 + fx * (v10 - v00)
    bottom = v01 + fx * (v11 - v01)
    return (top + fy * (bottom - top)) * np.float32(2.6)


def _resample(
    src: np.ndarray, scale: float, offset_x: float, offset_y: float, out_shape: tuple[int, int]
) -> np.ndarray:
    """Read ``src`` at ``(x * scale + offset_x, y * scale + offset_y)`` for an output grid."""
    matrix = np.array([[scale, 0.0, offset_x], [0.0, scale, offset_y]])
    return cv2.warpAffine(
        src,
        matrix,
        (out_shape[1], out_shape[0]),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` blocks (the last partial blocks are padded by edge values)."""
    if f == 1:
        return a
    h, w = a.shape
    ph, pw = -h % f, -w % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))


class _Painter:
    """Per-type nucleus appearance, evaluated on lists of nucleus pixels."""

    def __init__(self, nuc: Nuclei, mpp: float, salt: int):
        models = [NUCLEI[t] for t in CELL_TYPES]

        def table(attr: str) -> np.ndarray:
            return np.array([getattr(m, attr) for m in models], dtype=np.float32)

        self.nuc, self.mpp, self.salt = nuc, mpp, salt
        t = nuc.cell_type
        self.coarse = table("coarse_texture")[t]
        self.fine = table("fine_texture")[t]
        self.rim = table("rim")[t]
        self.cyto = np.concatenate([[0.0], table("cytoplasm")[t]]).astype(np.float32)
        self.dark = nuc.darkness.astype(np.float32)

    def paint(
        self, cell: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hematoxylin and eosin OD of nucleus pixels (``x``, ``y`` in pixels)."""
        nuc, mpp = self.nuc, self.mpp
        x_um = (x.astype(np.float32) + np.float32(0.5)) * np.float32(mpp)
        y_um = (y.astype(np.float32) + np.float32(0.5)) * np.float32(mpp)
        dx = x_um - nuc.x[cell].astype(np.float32)
        dy = y_um - nuc.y[cell].astype(np.float32)
        ca = np.cos(nuc.angle[cell]).astype(np.float32)
        sa = np.sin(nuc.angle[cell]).astype(np.float32)
        u = (dx * ca + dy * sa) / nuc.a[cell].astype(np.float32)
        v = (dy * ca - dx * sa) / nuc.b[cell].astype(np.float32)
        rho = np.sqrt(u * u + v * v)
        safe = np.maximum(rho, 1e-6)
        q = rho / _radial(nuc, cell, u / safe, v / safe)
        rim = np.clip((q - 0.7) / 0.3, 0.0, 1.0) ** 2
        tex_coarse = _value_noise(x_um, y_um, 1.4, self.salt + 1)
        tex_fine = _value_noise(x_um, y_um, 0.55, self.salt + 2)
        h = self.dark[cell] * (
            1.0
            + self.coarse[cell] * tex_coarse
            + self.fine[cell] * tex_fine
            + self.rim[cell] * (rim - 0.3)
        )
        rad = nuc.nucleolus[cell].astype(np.float32)
        blob = np.zeros_like(h)
        has = rad > 0
        if has.any():
            c = cell[has]
            ddx = dx[has] - nuc.nucleolus_dx[c].astype(np.float32)
            ddy = dy[has] - nuc.nucleolus_dy[c].astype(np.float32)
            blob[has] = np.exp(-(ddx * ddx + ddy * ddy) / (2 * rad[has] ** 2))
        h = np.maximum(h, 0.05) + 0.5 * blob
        e = 0.14 + 0.25 * blob
        return h, e


def render(
    rng: np.random.Generator,
    layout: Layout,
    nuc: Nuclei,
    labels: np.ndarray,
    mpp: float,
    strip: int = 512,
) -> np.ndarray:
    """Render the H&E image as a (3, y, x) uint8 array, strip by strip (bounded memory).

    ``nuc`` are the kept nuclei in label order (label ``i + 1`` is ``nuc[i]``). Everything but the
    final pixel noise is a function of the position, so strips join seamlessly.
    """
    height, width = labels.shape
    salt = int(rng.integers(0, 2**31))
    painter = _Painter(nuc, mpp, salt)

    # eosinophilic cytoplasm around tumour cells and macrophages: blurred at ~1 µm resolution
    f = max(1, round(1.0 / mpp))
    strip = max(f, strip // f * f)
    cyto_low = np.concatenate(
        [_block_mean(painter.cyto[labels[y0 : y0 + strip]], f) for y0 in range(0, height, strip)]
    ).astype(np.float32)
    cyto_low = cv2.GaussianBlur(cyto_low, (0, 0), 2.6 / (f * mpp))

    # tissue texture: smooth noise on a 1.5 µm lattice (µm-based, independent of the pixel size)
    lattice_um = 1.5
    lat_shape = (
        int(np.ceil(height * mpp / lattice_um)) + 2,
        int(np.ceil(width * mpp / lattice_um)) + 2,
    )
    tex_lattice = _smooth_field(rng, lat_shape, 0.8)

    s = mpp / _COARSE_UM
    k0 = 2 * np.pi / layout.fibre_wavelength * mpp
    kx = (np.arange(width, dtype=np.float32) + 0.5) * np.float32(k0 * np.cos(layout.fibre_angle))
    blur = 0.35 / mpp
    halo = int(np.ceil(3 * blur)) + 1
    image = np.empty((3, height, width), dtype=np.uint8)
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        ya, yb = max(0, y0 - halo), min(height, y1 + halo)
        shp = (yb - ya, width)
        alpha = _resample(layout.tissue, s, 0.5 * s, (ya + 0.5) * s, shp)
        alpha = np.clip(alpha / 0.08 + 0.5, 0.0, 1.0)
        sl = mpp / lattice_um
        tex = _resample(tex_lattice, sl, 0.5 * sl, (ya + 0.5) * sl, shp)

        # collagen bands: wavy stripes following the fibre field, in the stroma
        phase = _resample(layout.warp, s, 0.5 * s, (ya + 0.5) * s, shp)
        phase += kx[None, :]
        ky = (np.arange(ya, yb, dtype=np.float32) + 0.5) * np.float32(
            k0 * np.sin(layout.fibre_angle)
        )
        phase += ky[:, None]
        phase += 0.6 * tex
        np.sin(phase, out=phase)
        phase *= _resample(layout.stroma, s, 0.5 * s, (ya + 0.5) * s, shp)
        phase *= 0.22
        phase += 1.0
        phase += 0.10 * tex
        ce = _resample(layout.eosin, s, 0.5 * s, (ya + 0.5) * s, shp)
        ce *= phase
        del phase
        off = -(f - 1) / (2 * f)
        ce += 1.6 * _resample(cyto_low, 1.0 / f, off, off + ya / f, shp)
        ce *= alpha
        ch = _resample(layout.haze, s, 0.5 * s, (ya + 0.5) * s, shp)
        ch *= 1.0 + 0.3 * tex
        ch *= alpha
        del tex

        # nuclei
        lab = labels[ya:yb]
        ys, xs = np.nonzero(lab)
        if len(ys):
            h_nuc, e_nuc = painter.paint(lab[ys, xs] - 1, xs, ys + ya)
            e_nuc += 0.1 * ce[ys, xs]
            ch[ys, xs] = h_nuc
            ce[ys, xs] = e_nuc

        # residual stain, Beer-Lambert mixing, optical blur and sensor noise
        cd = alpha
        cd *= 0.12
        cd += 0.03
        noise = rng.standard_normal((3, y1 - y0, width), dtype=np.float32)
        for channel in range(3):
            od = ch * _H_VEC[channel]
            od += ce * _E_VEC[channel]
            od += cd * _D_VEC[channel]
            od = cv2.GaussianBlur(od, (0, 0), blur)[y0 - ya : y1 - ya]
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= 255.0
            od += 2.5 * noise[channel]
            np.clip(od, 0, 255, out=od)
            image[channel, y0:y1] = np.rint(od)
    return image
