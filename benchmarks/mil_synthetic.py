"""MIL vs an oracle and a shuffled control, at cell level on an independent synthetic slide.

Two synthetic slides (``sst.datasets.synthetic``): a training slide and a test slide with another
seed (other tissue, other cells). Both are segmented and embedded (``--encoder``, default the
morphology features). On the test slide every segmented cell is matched to the true nucleus
under its centroid and scored per gene (Pearson across cells, ``sst.tl.evaluate(level="cell")``),
averaged over the marker genes and over all genes. In the same run:

- ``mil``: ``sst.tl.fit`` on the training slide's spots (the method);
- ``oracle``: the same MLP, same settings, trained on the same cells of the training slide with
  each cell's true expression as its own target (bags of one cell): the ceiling that the
  embedding allows;
- ``shuffled``: MIL after randomly re-assigning the training cells to spots (bag sizes kept):
  no signal should survive (reported over ``--shuffles`` permutations).

The spot diameter (``--diameters``) sets the number of cells per spot; the loss is ``--losses``.

Usage: python benchmarks/mil_synthetic.py [--size 3072] [--test-size 2048] [--seed 0]
       [--diameters 30 55 90] [--losses mse nb] [--shuffles 3] [--encoder morphology]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import scellst as sst
from scellst.tl._evaluate import match_truth_cells
from scellst.tl._split import split_spots
from scellst.tl._training import _Tensors, fit_tensors


def embedded_slide(size: int, seed: int, encoder: str, weights: str | None):
    sdata = sst.datasets.synthetic(shape=(size, size), seed=seed)
    sst.pp.segment(sdata, progress=False)
    sst.tl.embed(sdata, encoder=encoder, weights=weights, progress=False)
    return sdata


def with_spots(base, size: int, seed: int, diameter: float):
    """The segmented/embedded slide ``base`` with the spots (and their counts) of another
    spot diameter: same image and cells (the generator draws them before the spots)."""
    sdata = sst.datasets.synthetic(shape=(size, size), seed=seed, spot_diameter_um=diameter)
    sdata["sst_cells"] = base["sst_cells"]
    sdata["sst_cells_table"] = base["sst_cells_table"].copy()
    sdata["sst_embedding"] = base["sst_embedding"]
    sst.pp.assign_cells(sdata, overwrite=True)
    return sdata


def markers_of(sdata) -> list[str]:
    return [g for genes in sdata["truth_expression"].uns["marker_genes"].values() for g in genes]


def cell_scores(test, model) -> dict:
    s = sst.tl.evaluate(test, model, level="cell")
    spot = sst.tl.evaluate(test, model, level="spot")
    return {
        "markers": float(s.loc[markers_of(test), "pearson"].mean()),
        "all": s.attrs["mean_pearson"],
        "spot_markers": float(spot.loc[markers_of(test), "pearson"].mean()),
        "spot_all": spot.attrs["mean_pearson"],
    }


def oracle(train, mil_model, seed: int):
    """The MIL model's network and settings, trained on single cells with their true expression
    (the cells of the training spots, split spatially 80/20 like the spots)."""
    emb = train["sst_embedding"]
    rows, truth_rows = match_truth_cells(train, "sst_embedding")
    in_spot = train["sst_cells_table"].obs["spot"].to_numpy()[rows] >= 0
    rows, truth_rows = rows[in_spot], truth_rows[in_spot]
    genes = mil_model.genes
    target = np.asarray(train["truth_expression"][:, genes].X)[truth_rows]
    xy_um = np.asarray(emb.obsm["spatial"])[rows] * sst.io.microns_per_pixel(train)
    val = split_spots(xy_um, 0.2, "spatial", np.random.default_rng(seed))
    n = len(rows)
    data = _Tensors(
        np.asarray(emb.obsm["X_sst"])[rows],
        np.arange(n),
        np.zeros((n, len(genes)), np.float32),
        np.ones(n, np.float32),
        val,
        np.zeros(n, int),
        torch.device("cpu"),
        logn=target,
    )
    keys = (
        "genes", "n_features", "feature_names", "encoder", "encoder_info", "hidden", "dropout",
        "lr", "weight_decay", "batch_size", "max_epochs", "patience", "smoothing",
        "seed", "scale_targets",
    )  # fmt: skip
    config = {k: mil_model.config[k] for k in keys}
    config.update(loss="mse", aggregation="mean", split="spatial", validation="spatial")
    if config["scale_targets"] == "slide":
        config["scale_targets"] = "global"
    return fit_tensors(data, config), n


def shuffled_fit(train, seed: int, **kw):
    obs = train["sst_cells_table"].obs
    original = obs["spot"].to_numpy().copy()
    inside = original >= 0
    permuted = original.copy()
    permuted[inside] = np.random.default_rng(seed).permutation(original[inside])
    obs["spot"] = permuted
    try:
        return sst.tl.fit(train, **kw)
    finally:
        obs["spot"] = original


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=3072, help="training slide side (px)")
    p.add_argument("--test-size", type=int, default=2048, help="test slide side (px)")
    p.add_argument("--seed", type=int, default=0, help="training slide seed (test: seed + 100)")
    p.add_argument("--diameters", type=float, nargs="+", default=[55.0])
    p.add_argument("--losses", nargs="+", default=["mse", "nb"])
    p.add_argument("--shuffles", type=int, default=3)
    p.add_argument("--encoder", default="morphology", help="passed to sst.tl.embed")
    p.add_argument("--weights", default=None, help="weights file for a torch encoder")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    t0 = time.perf_counter()
    base_train = embedded_slide(args.size, args.seed, args.encoder, args.weights)
    base_test = embedded_slide(args.test_size, args.seed + 100, args.encoder, args.weights)
    print(f"slides segmented and embedded in {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    header = (
        "diam  cells/spot spots loss  method        markers  all    spot-markers spot-all"
        "  epochs  s"
    )
    print(header, flush=True)
    for diameter in args.diameters:
        train = with_spots(base_train, args.size, args.seed, diameter)
        test = with_spots(base_test, args.test_size, args.seed + 100, diameter)
        genes = list(train["truth_expression"].var_names)
        for loss in args.losses:
            rows = []
            t = time.perf_counter()
            mil = sst.tl.fit(train, genes=genes, loss=loss, progress=False, seed=0)
            rows.append(("mil", cell_scores(test, mil), mil, time.perf_counter() - t))
            if loss == args.losses[0]:
                t = time.perf_counter()
                orc, _ = oracle(train, mil, seed=0)
                rows.append(("oracle", cell_scores(test, orc), orc, time.perf_counter() - t))
            for k in range(args.shuffles):
                t = time.perf_counter()
                sh = shuffled_fit(train, seed=k, genes=genes, loss=loss, progress=False)
                rows.append((f"shuffled{k}", cell_scores(test, sh), sh, time.perf_counter() - t))
            for name, s, model, seconds in rows:
                c = mil.config
                print(
                    f"{diameter:4.0f}  {c['median_cells_per_spot']:10.1f} {c['n_train_spots'] + c['n_val_spots']:5d}"
                    f" {loss:5s} {name:12s}  {s['markers']:+.3f}   {s['all']:+.3f}  {s['spot_markers']:+.3f}"
                    f"       {s['spot_all']:+.3f}    {model.config['epochs_run']:4d}  {seconds:4.0f}",
                    flush=True,
                )
                results.append(
                    {
                        "diameter_um": diameter,
                        "median_cells_per_spot": c["median_cells_per_spot"],
                        "n_spots": c["n_train_spots"] + c["n_val_spots"],
                        "loss": loss,
                        "method": name,
                        **s,
                        "epochs": model.config["epochs_run"],
                        "seconds": seconds,
                    }
                )
            mil_m = rows[0][1]["markers"]
            sh = [s["markers"] for name, s, _, _ in rows if name.startswith("shuffled")]
            if sh:
                print(f"      shuffled markers: mean {np.mean(sh):+.3f}, sd {np.std(sh):.3f}")
            orc_rows = [
                r for r in results if r["method"] == "oracle" and r["diameter_um"] == diameter
            ]
            if orc_rows:
                print(f"      MIL / oracle on markers: {mil_m / orc_rows[-1]['markers']:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
