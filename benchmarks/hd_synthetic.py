"""Visium HD bins vs Visium spots on the same synthetic tissue, centroid vs overlap-aware pooling.

For each seed s, one training tissue ``sst.datasets.synthetic(shape=(size, size), seed=s)`` is
measured three ways with the same image and cells (the generator draws them before the spots):
Visium 55 µm spots, and Visium HD-like square bins of 8 and 16 µm (``bins_um=``; each cell is
its nucleus dilated by 3 µm and spreads its transcripts over the bins by area). The slide is
segmented and embedded once (``--encoder``, default the morphology features) and the cells are
shared by the three measurements. A test tissue (seed s + 100, ``--test-size``) is segmented and
embedded the same way; every model is scored there at cell level (Pearson across the segmented
cells matched to the true nucleus under their centroid, ``sst.tl.evaluate(level="cell")``),
averaged over the marker genes and over all genes.

Methods (``--configs``; ``name=geometry:pooling[:dilation_um][:bin_um]``):

- ``visium``: ``sst.tl.fit`` on the 55 µm spots (centroid bags);
- ``hd8-centroid`` / ``hd16-centroid``: bins of 8 / 16 µm, each cell in the bin of its centroid;
- ``hd8-overlap0`` / ``hd8-overlap3``...: overlap-aware pooling, each cell weighted by the
  fraction of its nucleus (dilated by 0 / 3 µm) in each bin;
- ``hd8to16-...``: 8 µm bins coarsened to 16 µm by ``fit(bin_um=16)``.

Visium models train on 128 spots per batch (``--batch-size``, fit's default), HD models on 1024
bins per batch (``--hd-batch-size``): a slide has ~130x more 8 µm bins than Visium spots, and
early stopping counts epochs.

Each is reported with its **oracle ratio** (MIL markers / oracle markers): the oracle is the
same network and settings trained on the true per-cell expression of the cells of its training
bags (the cells in a Visium spot for ``visium``, the cells with their centroid in a bin for HD),
as in ``benchmarks/mil_synthetic.py``.

Usage: python benchmarks/hd_synthetic.py [--size 4096] [--test-size 2048] [--seeds 0 1]
       [--configs ...] [--batch-size 128] [--hd-batch-size 1024] [--torch-threads 1]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import time

from mil_synthetic import cell_scores, embedded_slide, oracle, report, run_seeds

import scellst as sst

DEFAULT_CONFIGS = (
    "visium=visium:centroid",
    "hd8-centroid=8:centroid",
    "hd8-overlap0=8:overlap:0",
    "hd8-overlap3=8:overlap:3",
    "hd16-centroid=16:centroid",
    "hd16-overlap3=16:overlap:3",
    "hd8to16-overlap3=8:overlap:3:16",
)


def parse_config(text: str) -> dict:
    name, _, spec = text.partition("=")
    parts = spec.split(":")
    geometry = parts[0]
    out = {
        "name": name,
        "geometry": geometry,
        "pooling": parts[1] if len(parts) > 1 else "centroid",
    }
    fit = {}
    if geometry != "visium":
        fit["pooling"] = out["pooling"]
        if len(parts) > 2:
            fit["cell_dilation_um"] = float(parts[2])
        if len(parts) > 3:
            fit["bin_um"] = float(parts[3])
    out["fit"] = fit
    return out


def measured(base, size: int, seed: int, geometry: str):
    """The tissue of ``base`` (segmented and embedded) measured with Visium spots or HD bins."""
    kw = {} if geometry == "visium" else {"bins_um": float(geometry)}
    sdata = sst.datasets.synthetic(shape=(size, size), seed=seed, **kw)
    for key in ("sst_cells", "sst_embedding"):
        sdata[key] = base[key]
    sdata["sst_cells_table"] = base["sst_cells_table"].copy()
    sst.pp.assign_cells(sdata, overwrite=True)
    return sdata


def run_seed(args, seed: int, results: list) -> None:
    t0 = time.perf_counter()
    base = embedded_slide(args.size, seed, args.encoder, None)
    test = embedded_slide(args.test_size, seed + 100, args.encoder, None)
    print(f"seed {seed}: slides segmented and embedded in {time.perf_counter() - t0:.0f} s")
    configs = [parse_config(c) for c in args.configs]
    slides = {}
    for g in dict.fromkeys(c["geometry"] for c in configs):
        t = time.perf_counter()
        slides[g] = measured(base, args.size, seed, g)
        print(f"  {g}: measured in {time.perf_counter() - t:.0f} s", flush=True)
    genes = list(base["truth_expression"].var_names)
    oracles: dict[str, float] = {}
    print(
        "seed config               bags  cells/bag  markers   all   oracle  ratio  epochs     s",
        flush=True,
    )
    for c in configs:
        sdata = slides[c["geometry"]]
        batch = args.batch_size if c["geometry"] == "visium" else args.hd_batch_size
        kw = dict(genes=genes, progress=False, seed=0, batch_size=batch, **c["fit"])
        t = time.perf_counter()
        model = sst.tl.fit(sdata, **kw)
        seconds = time.perf_counter() - t
        sc = cell_scores(test, model)
        okey = "visium" if c["geometry"] == "visium" else "hd"
        if okey not in oracles:
            orc, n_cells = oracle(sdata, model, seed=0)
            osc = cell_scores(test, orc)
            oracles[okey] = osc["markers"]
            print(
                f"{seed:4d} oracle-{okey:14s} {n_cells:6d} cells     {osc['markers']:+.3f}  "
                f"{osc['all']:+.3f}", flush=True,
            )  # fmt: skip
            results.append({"seed": seed, "config": f"oracle-{okey}", "n_cells": n_cells, **osc})
        cfg = model.config
        ratio = sc["markers"] / oracles[okey]
        print(
            f"{seed:4d} {c['name']:18s} {cfg['n_train_spots'] + cfg['n_val_spots']:7d} "
            f"{cfg['median_cells_per_spot']:9.2f}  {sc['markers']:+.3f}  {sc['all']:+.3f}  "
            f"{oracles[okey]:+.3f}  {ratio:.3f}  {cfg['epochs_run']:6d} {seconds:5.0f}",
            flush=True,
        )
        results.append(
            {
                "seed": seed,
                "config": c["name"],
                "n_bags": cfg["n_train_spots"] + cfg["n_val_spots"],
                "median_cells_per_bag": cfg["median_cells_per_spot"],
                **sc,
                "oracle_markers": oracles[okey],
                "ratio": ratio,
                "epochs": cfg["epochs_run"],
                "seconds": seconds,
            }
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096, help="training slide side (px, 0.5 µm/px)")
    p.add_argument("--test-size", type=int, default=2048, help="test slide side (px)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    p.add_argument("--batch-size", type=int, default=128, help="Visium spots per batch (fit)")
    p.add_argument("--hd-batch-size", type=int, default=1024, help="HD bins per batch (fit)")
    p.add_argument("--encoder", default="morphology")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    table, t0 = run_seeds(args, run_seed)
    cols = [c for c in ("markers", "all", "spot_markers", "ratio") if c in table]
    report(table.groupby("config", sort=False)[cols].agg(["mean", "std"]), table, t0, args.json)


if __name__ == "__main__":
    main()
