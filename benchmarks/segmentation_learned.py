"""The learned nucleus segmenter (issue 14) against the watershed, every figure in one run.

``--monuseg``: the shipped model and the watershed on the 13 MoNuSeg training tiles (never
trained on), per image: F1@0.5, AJI, PQ and the model's Mpx/s of the tile's own pixels.
``--extra NAME=DIR``: other model folders scored in the same run (e.g. the stage-1 network of
``train_nucleus_net.py --teacher-out``).

``--finetune K``: leave-images-out fine-tuning on MoNuSeg: K folds; each fold fine-tunes the
shipped model with ``sst.pp.train_segmenter`` (``--steps``) on the other folds' tiles and
scores its own tiles; the watershed and the shipped model are scored on the same tiles.

``--slides``: the same defaults (no per-image tuning) on whole slides: her2st sections (0.69
µm/px, ``--sections``) and the CMU SVS (0.5 µm/px): nuclei, fraction on tissue, Mpx/s of the
slide's own pixels, peak RSS, and a PNG of a 400 µm window with both outlines (``--figdir``).

Usage: python benchmarks/segmentation_learned.py [--monuseg] [--finetune 3 --steps 600]
       [--slides --sections C3] [--shared ../shared] [--figdir bench_out] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure
from segmentation_monuseg import DATASET, DEFAULT_MPP, load_manifest, run_image

import scellst as sst

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _fmt(r: dict) -> str:
    return f"F1 {r['f1']:.3f}  AJI {r['aji']:.3f}  PQ {r['pq']:.3f}"


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def monuseg(root: Path, out: dict, extra: dict[str, str]) -> None:
    rows = load_manifest(root)
    table = []
    for row in rows:
        ws = run_image(root, row, "watershed", None, None)
        ln = run_image(root, row, "learned", None, None)
        mpx = row_mpx(root, row)
        others = {k: run_image(root, row, "learned", {"path": d}, None) for k, d in extra.items()}
        table.append({"id": ws["id"], "watershed": ws, "learned": ln, **others,
                      "learned_mpx_per_s": mpx / ln["seconds"]})  # fmt: skip
        print(f"{ws['id']}: watershed {_fmt(ws)} | learned {_fmt(ln)} "
              f"({mpx / ln['seconds']:.2f} Mpx/s incl. reading)"
              + "".join(f" | {k} {_fmt(r)}" for k, r in others.items()), flush=True)  # fmt: skip
    for m in ("watershed", "learned", *extra):
        print(
            f"mean {m}: " + _fmt({k: _mean([t[m] for t in table], k) for k in ("f1", "aji", "pq")})
        )
    out["monuseg"] = table


def row_mpx(root: Path, row: dict) -> float:
    return int(row["height"]) * int(row["width"]) / 1e6


def finetune(root: Path, k: int, steps: int, out: dict) -> None:
    rows = load_manifest(root)
    folds = [rows[i::k] for i in range(k)]
    table = []
    for i, test in enumerate(folds):
        train = [r for j, f in enumerate(folds) if j != i for r in f]
        images = [tifffile.imread(root / r["image"])[..., :3] for r in train]
        labels = [tifffile.imread(root / r["label"]) for r in train]
        mpps = [float(r["mpp_um_per_px"] or DEFAULT_MPP) for r in train]
        t = time.perf_counter()
        model = sst.pp.train_segmenter(images, labels, mpps, steps=steps, seed=i, progress=False)
        seconds = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as d:
            model.save(d, overwrite=True)
            for row in test:
                tuned = run_image(root, row, "learned", {"path": d}, None)
                ws = run_image(root, row, "watershed", None, None)
                shipped = run_image(root, row, "learned", None, None)
                table.append({"id": tuned["id"], "fold": i, "tuned": tuned, "shipped": shipped,
                              "watershed": ws})  # fmt: skip
                print(f"fold {i} {tuned['id']}: tuned {_fmt(tuned)} | shipped {_fmt(shipped)} "
                      f"| watershed {_fmt(ws)}", flush=True)  # fmt: skip
        print(f"fold {i}: fine-tuned on {len(train)} tiles, {steps} steps in {seconds:.0f} s",
              flush=True)  # fmt: skip
    for m in ("tuned", "shipped", "watershed"):
        print(
            f"mean {m} (leave-images-out, {k} folds): "
            + _fmt({key: _mean([t[m] for t in table], key) for key in ("f1", "aji", "pq")})
        )
    out["finetune"] = {"folds": k, "steps": steps, "images": table}


def slides(shared: Path, sections: list[str], figdir: Path, out: dict) -> None:
    her2st = shared / "data" / "her2st"
    inputs = [(s, lambda s=s: sst.io.read_hest(her2st, s)) for s in sections]
    svs = shared / "data" / "he_small" / "cmu_small_region.svs"
    if svs.is_file():
        inputs.append(("CMU", lambda: sst.io.read_image(svs)))
    res = out.setdefault("slides", {})
    for name, read in inputs:
        sdata = read()
        img = sdata.images["he"] if "he" in sdata.images else next(iter(sdata.images.values()))
        key = "he" if "he" in sdata.images else next(iter(sdata.images))
        level0 = img if not hasattr(img, "keys") else img["scale0"].image
        mpx = int(level0.sizes["y"]) * int(level0.sizes["x"]) / 1e6
        res[name] = {"mpx": mpx, "mpp": sst.io.microns_per_pixel(sdata, key)}
        for method in ("watershed", "learned"):
            timing: dict = {}
            with measure(timing, f"{name} {method}"):
                sst.pp.segment(sdata, key, method=method, key_added=f"cells_{method}",
                               progress=False)  # fmt: skip
            table = sdata.tables[f"cells_{method}_table"]
            r = {**timing[f"{name} {method}"], "n_nuclei": int(table.n_obs),
                 "fraction_on_tissue": float(table.obs["on_tissue"].mean()),
                 "median_area_um2": float(table.obs["area_um2"].median())}  # fmt: skip
            r["mpx_per_s"] = mpx / r["seconds"]
            res[name][method] = r
            print(f"{name} ({mpx:.0f} Mpx at {res[name]['mpp']:.3f} µm/px) {method}: "
                  f"{r['n_nuclei']} nuclei, {r['fraction_on_tissue']:.1%} on tissue, median "
                  f"{r['median_area_um2']:.1f} µm², {r['mpx_per_s']:.2f} Mpx/s, "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)  # fmt: skip
        figure(sdata, key, name, figdir)


def figure(sdata, key: str, name: str, figdir: Path) -> None:
    """Both segmentations outlined on a 400 µm window at the densest nuclei."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shapely

    from scellst._sdata import image_level0, read_rgb

    mpp = sst.io.microns_per_pixel(sdata, key)
    side = int(400 / mpp)
    xy = sdata.tables["cells_watershed_table"].obsm["spatial"]
    grid = np.floor(xy / side).astype(int)
    cells, counts = np.unique(grid, axis=0, return_counts=True)
    gx, gy = cells[np.argmax(counts)] * side
    img = image_level0(sdata, key)
    rgb = read_rgb(img, gy, gy + side, gx, gx + side)
    fig, axes = plt.subplots(1, 2, figsize=(14, 7))
    for ax, method, colour in zip(axes, ("watershed", "learned"), ("lime", "cyan"), strict=True):
        ax.imshow(rgb, extent=(gx, gx + rgb.shape[1], gy + rgb.shape[0], gy))
        geoms = sdata.shapes[f"cells_{method}"].geometry.values
        box = shapely.box(gx, gy, gx + side, gy + side)
        for g in geoms[shapely.intersects(geoms, box)]:
            x, y = g.exterior.xy
            ax.plot(x, y, color=colour, lw=0.6)
        ax.set_title(f"{name}: {method}")
        ax.set_axis_off()
    figdir.mkdir(parents=True, exist_ok=True)
    fig.savefig(figdir / f"segmentation_learned_{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--monuseg", action="store_true")
    p.add_argument("--extra", nargs="*", default=[], help="NAME=DIR: more model folders")
    p.add_argument("--finetune", type=int, default=0, help="number of leave-images-out folds")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--slides", action="store_true")
    p.add_argument("--sections", nargs="*", default=["C3"])
    p.add_argument("--figdir", type=Path, default=Path("bench_out"))
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    root = a.shared / DATASET
    if not root.is_dir():
        raise SystemExit(f"MoNuSeg tiles not found at {root}: pass --shared")
    print(f"load before {os.getloadavg()}", flush=True)
    out: dict = {}
    if a.monuseg:
        monuseg(root, out, dict(e.split("=", 1) for e in a.extra))
    if a.finetune:
        finetune(root, a.finetune, a.steps, out)
    if a.slides:
        slides(a.shared, a.sections, a.figdir, out)
    print(f"load after {os.getloadavg()}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
