"""Crops per second of ``iter_crops`` on a real her2st section (lazy pyramidal JPEG TIFF).

The section (C2: 9274 x 9911 px at 0.688 µm/px, 20x per its metadata) is read with ``read_hest``
and segmented with the default watershed (about 11 s, ~31k nuclei; ``--cache`` keeps the nuclei
in an ``.npz`` so later runs skip it).
Then every nucleus is cropped with the paper geometry (18 µm resampled to 0.25 µm/px = 72 px)
and the morphology geometry (18 µm at 0.5 µm/px = 36 px), with 1 and 2 worker threads, with and
without nucleus masks. Timings include reading and decoding the slide tile by tile.

Usage: python benchmarks/crops_throughput.py [--sample C2] [--shared ../shared]
       [--cache /tmp/c2_nuclei.npz] [--repeat 3] [--tile-size 2048]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst
from scellst._sdata import apply_matrix, element_to_image_matrix, image_level0
from scellst.constants import CELLS_KEY, SPATIAL_OBSM
from scellst.embedding.crops import exterior_coords, iter_crops
from scellst.io._scale import microns_per_pixel


def nuclei(sdata, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) and exterior rings (object array) in level-0 pixels, cached if asked."""
    if cache is not None and cache.is_file():
        z = np.load(cache)
        rings = np.split(z["coords"], z["offsets"][1:-1])
        out = np.empty(len(rings), dtype=object)
        out[:] = [r if len(r) else None for r in rings]
        return z["centroids"], out
    t0 = time.perf_counter()
    sst.pp.segment(sdata, progress=False)
    print(f"segmentation: {time.perf_counter() - t0:.1f} s", flush=True)
    matrix = element_to_image_matrix(sdata, CELLS_KEY, "he")
    geometry = sdata.shapes[CELLS_KEY].geometry.to_numpy()
    centroids = apply_matrix(matrix, np.asarray(sdata[f"{CELLS_KEY}_table"].obsm[SPATIAL_OBSM]))
    rings = exterior_coords(geometry)  # identity matrix for segment()'s own shapes
    if cache is not None:
        lengths = [0 if r is None else len(r) for r in rings]
        coords = np.concatenate([r for r in rings if r is not None] or [np.zeros((0, 2))])
        np.savez(cache, centroids=centroids, coords=coords, offsets=np.cumsum([0, *lengths]))
    return centroids, rings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", default="C2")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--cache", type=Path, default=None, help="npz file caching the nuclei")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per setting (best is kept)")
    p.add_argument("--tile-size", type=int, default=2048)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="also time the crops from the slide decoded in memory (resampling cost alone)",
    )
    args = p.parse_args()
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        print(f"her2st data not found at {root}; pass --shared. Skipping.")
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}; sample {args.sample}",
        flush=True,
    )
    sdata = sst.io.read_hest(root, args.sample)
    img = image_level0(sdata, "he")
    mpp = microns_per_pixel(sdata, "he")
    centroids, rings = nuclei(sdata, args.cache)
    n = len(centroids)
    print(f"image {img.sizes['x']}x{img.sizes['y']} px at {mpp:.3f} µm/px; {n} nuclei", flush=True)
    images = [("lazy", img)]
    if args.in_memory:
        images.append(("in memory", img.copy(data=np.asarray(img.data))))
    has_masks_option = "masks" in inspect.signature(iter_crops).parameters
    settings = [
        ("paper 18 µm @0.25 µm/px (72 px)", 0.25, True),
        ("paper 18 µm @0.25 µm/px (72 px)", 0.25, False),
        ("morphology 18 µm @0.5 µm/px (36 px)", 0.5, True),
    ]
    if not has_masks_option:  # older API: masks always rasterised
        settings = [s for s in settings if s[2]]
    results: dict = {}
    for (label, crop_mpp, masks), (where, image), n_jobs in itertools.product(
        settings, images, args.jobs
    ):
        kwargs = {"masks": masks} if has_masks_option else {}
        name = f"{crop_mpp}/{int(masks)}/{where}/{n_jobs}"
        best, cpu = np.inf, np.inf
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            with measure(results, name):
                count = sum(
                    len(b.index)
                    for b in iter_crops(
                        image,
                        mpp,
                        centroids,
                        rings,
                        crop_size_um=18.0,
                        crop_mpp=crop_mpp,
                        tile_size=args.tile_size,
                        n_jobs=n_jobs,
                        progress=False,
                        **kwargs,
                    )
                )
            elapsed = time.perf_counter() - t0
            if elapsed < best:
                best, cpu = elapsed, time.process_time() - c0
        assert count == n
        print(
            f"RESULT {label}, masks={masks}, {where}, n_jobs={n_jobs}: {n / best:,.0f} crops/s "
            f"(best of {args.repeat}: {best:.2f} s wall, {cpu:.2f} s CPU for {n} crops; "
            f"peak RSS {results[name]['peak_rss_gb']:.2f} GB; "
            f"load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
