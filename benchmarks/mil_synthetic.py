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

The spot diameter (``--diameters``) sets the number of cells per spot; the loss is ``--losses``;
with MSE, the cells of a spot are pooled as log values (sCellST) or as expression
(``--spaces log linear``, ``sst.tl.fit(aggregation_space=...)``). ``--seeds`` repeats the whole
comparison on other pairs of slides (training seed s, test seed s + 100).

Usage: python benchmarks/mil_synthetic.py [--size 4096] [--test-size 2048] [--seeds 0 1 2]
       [--diameters 30 55 90] [--losses mse nb] [--spaces log linear] [--shuffles 3]
       [--encoder morphology] [--torch-threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

import scellst as sst
from scellst.mil.evaluate import match_truth_cells
from scellst.mil.split import split_spots
from scellst.mil.training import _Tensors, fit_tensors


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


def shuffled_fit(train, permutation_seed: int, **kw):
    obs = train["sst_cells_table"].obs
    original = obs["spot"].to_numpy().copy()
    inside = original >= 0
    permuted = original.copy()
    permuted[inside] = np.random.default_rng(permutation_seed).permutation(original[inside])
    obs["spot"] = permuted
    try:
        return sst.tl.fit(train, **kw)
    finally:
        obs["spot"] = original


def run_seed(args, seed: int, results: list) -> None:
    t0 = time.perf_counter()
    base_train = embedded_slide(args.size, seed, args.encoder, args.weights)
    base_test = embedded_slide(args.test_size, seed + 100, args.encoder, args.weights)
    print(f"seed {seed}: slides segmented and embedded in {time.perf_counter() - t0:.0f} s")
    print(
        "seed diam cells/spot spots loss  space   method      markers   all  spot-mark spot-all"
        "  epochs   s",
        flush=True,
    )
    for diameter in args.diameters:
        train = with_spots(base_train, args.size, seed, diameter)
        test = with_spots(base_test, args.test_size, seed + 100, diameter)
        genes = list(train["truth_expression"].var_names)
        oracle_markers = None
        for loss in args.losses:
            for space in args.spaces if loss == "mse" else ["linear"]:
                kw = dict(genes=genes, loss=loss, progress=False, seed=0)
                if loss == "mse":
                    kw["aggregation_space"] = space
                rows = []
                t = time.perf_counter()
                mil = sst.tl.fit(train, **kw)
                rows.append(("mil", cell_scores(test, mil), mil, time.perf_counter() - t))
                if oracle_markers is None:
                    t = time.perf_counter()
                    orc, _ = oracle(train, mil, seed=0)
                    rows.append(("oracle", cell_scores(test, orc), orc, time.perf_counter() - t))
                    oracle_markers = rows[-1][1]["markers"]
                for k in range(args.shuffles):
                    t = time.perf_counter()
                    sh = shuffled_fit(train, k, **kw)
                    rows.append(
                        (f"shuffled{k}", cell_scores(test, sh), sh, time.perf_counter() - t)
                    )
                c = mil.config
                for name, sc, model, seconds in rows:
                    print(
                        f"{seed:4d} {diameter:4.0f} {c['median_cells_per_spot']:10.1f} "
                        f"{c['n_train_spots'] + c['n_val_spots']:5d} {loss:5s} "
                        f"{space if name != 'oracle' else '-':7s} {name:10s} {sc['markers']:+.3f}  "
                        f"{sc['all']:+.3f}   {sc['spot_markers']:+.3f}   {sc['spot_all']:+.3f}  "
                        f"{model.config['epochs_run']:6d} {seconds:4.0f}",
                        flush=True,
                    )
                    results.append(
                        {
                            "seed": seed,
                            "diameter_um": diameter,
                            "median_cells_per_spot": c["median_cells_per_spot"],
                            "n_spots": c["n_train_spots"] + c["n_val_spots"],
                            "loss": loss,
                            "space": space if name != "oracle" else "",
                            "method": name,
                            **sc,
                            "epochs": model.config["epochs_run"],
                            "seconds": seconds,
                        }
                    )
                sh = [sc["markers"] for name, sc, _, _ in rows if name.startswith("shuffled")]
                print(
                    f"     MIL / oracle on markers {rows[0][1]['markers'] / oracle_markers:.3f}; "
                    f"shuffled markers mean {np.mean(sh) if sh else float('nan'):+.3f} "
                    f"(sd {np.std(sh) if sh else float('nan'):.3f})",
                    flush=True,
                )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096, help="training slide side (px)")
    p.add_argument("--test-size", type=int, default=2048, help="test slide side (px)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training slide seeds")
    p.add_argument("--diameters", type=float, nargs="+", default=[55.0])
    p.add_argument("--losses", nargs="+", default=["mse", "nb"])
    p.add_argument("--spaces", nargs="+", default=["log", "linear"], help="MSE pooling")
    p.add_argument("--shuffles", type=int, default=3)
    p.add_argument("--encoder", default="morphology", help="passed to sst.tl.embed")
    p.add_argument("--weights", default=None, help="weights file for a torch encoder")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    table, t0 = run_seeds(args, run_seed)
    table["method"] = table["method"].str.replace(r"shuffled\d+", "shuffled", regex=True)
    summary = table.groupby(["diameter_um", "loss", "space", "method"])[
        ["median_cells_per_spot", "markers", "all", "spot_markers", "spot_all"]
    ].agg(["mean", "std"])
    report(summary, table, t0, args.json)


def run_seeds(args, run_seed) -> tuple[pd.DataFrame, float]:
    """Set torch's threads, run ``run_seed(args, seed, results)`` for each of ``args.seeds``;
    the results as a table, and the start time."""
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    results: list[dict] = []
    for seed in args.seeds:
        run_seed(args, seed, results)
    return pd.DataFrame(results), t0


def report(summary: pd.DataFrame, table: pd.DataFrame, t0: float, json_path: str | None) -> None:
    """Print the summary, the time and the load; write the per-run table as JSON."""
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", None)
    print(summary.round(3))
    print(f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    if json_path:
        table.to_json(json_path, orient="records", indent=1)


if __name__ == "__main__":
    main()
