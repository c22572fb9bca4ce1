"""Which neighbourhood context helps the per-cell model on real tissue (her2st patient C).

Sections C2-C5 are read, segmented, assigned and embedded once **without** context
(``sst.tl.embed(context_um=0)``, cached under ``--cache``); each setting then appends the
neighbourhood context exactly as ``sst.tl.embed(context_um=..., context_stats=...)`` does
(:func:`scellst.embedding.context.context_features` on the whole section's µm centroids), so
that the crops are read once. For every setting and held-out section (leave-one-section-out:
train on three sections, predict the fourth): ``sst.tl.leave_one_slide_out`` with the
``sst.tl.fit`` defaults, 50 HVGs selected on the training sections; per-gene Pearson across the
held-out section's spots, mean over genes. Printed beside it, in the same run, on the same
cells, genes and features: a ridge (standardised, RidgeCV, alpha by leave-one-out) on each
spot's mean embedding + log(1 + number of cells), i.e. the mean-pooled linear special case.

``--time-embed C2`` also times the full default ``sst.tl.embed`` (crops + context) of that
section (its segmentation cached), with the load average.

Usage: python benchmarks/context_her2st.py [--shared ../shared] [--cache /tmp/sst_feat/cache]
       [--settings 0 30:mean 30:mean,sd ... 200:mean,sd 30+200:mean,sd] [--genes 50]
       [--time-embed C2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from mil_her2st import BAG_KW, pooled_mean_sd, prepare, ridge_scores

import scellst as sst
from scellst._tables import cells_on_image
from scellst.constants import EMBEDDING_OBSM, UNS_KEY
from scellst.embedding.context import context_feature_names, context_features
from scellst.io._scale import microns_per_pixel
from scellst.mil.spots import measured_spots, slide_bags

SECTIONS = ["C2", "C3", "C4", "C5"]


def own_features(sdata):
    """The cached context-free embedding and the cells' centroids in µm."""
    table = sdata["sst_embedding"]
    info = table.uns[UNS_KEY]["embedding"]
    _, image_key, _, centroids = cells_on_image(sdata, info["cells_key"], info["image_key"])
    xy = centroids * microns_per_pixel(sdata, image_key)
    return np.asarray(table.obsm[EMBEDDING_OBSM], np.float32), list(info["feature_names"]), xy


def set_context(sdata, own, names, xy, radii, stats) -> None:
    """Replace the embedding by own features + their context (what ``embed`` would store)."""
    table = sdata["sst_embedding"]
    info = table.uns[UNS_KEY]["embedding"]
    if radii:
        table.obsm[EMBEDDING_OBSM] = np.concatenate(
            [own, context_features(xy, own, radii, stats)], axis=1
        )
        info["feature_names"] = names + context_feature_names(names, radii, stats)
    else:
        table.obsm[EMBEDDING_OBSM] = own
        info["feature_names"] = list(names)
    info["context"] = {"radii_um": list(radii), "stats": list(stats) if radii else []}


def spot_mean_ridge(bags: dict, train: list[str], test: str, genes: list[str]):
    """Ridge on each spot's mean embedding + log(1 + cells), scored on the held-out spots."""

    def design(b):
        n = b.spots.n_obs
        mean = pooled_mean_sd(b.features, b.bag, n)[:, : b.features.shape[1]]
        return np.column_stack([mean, np.log1p(np.bincount(b.bag, minlength=n))])

    X = np.vstack([design(bags[n]) for n in train])
    y = np.vstack([measured_spots(bags[n], genes) for n in train])
    measured = measured_spots(bags[test], genes)
    scores, _ = ridge_scores(X, y, design(bags[test]), measured, genes)
    return scores.attrs["mean_pearson"]


def run_setting(slides, raw, radii, stats, n_genes, rows, label=None, held_out=SECTIONS):
    if label is None:
        label = "none" if not radii else f"{'+'.join(f'{r:g}' for r in radii)} µm {','.join(stats)}"
    t = time.perf_counter()
    for n in SECTIONS:
        set_context(slides[n], *raw[n], radii, stats)
    bags = {n: slide_bags(slides[n], **BAG_KW) for n in SECTIONS}
    t_ctx = time.perf_counter() - t
    cv = sst.tl.leave_one_slide_out(slides, genes=f"hvg:{n_genes}", held_out=held_out)
    for test in held_out:
        train = [n for n in SECTIONS if n != test]
        model = cv.models[test]
        rows.append(
            {
                "context": label,
                "radii_um": list(radii),
                "stats": ",".join(stats),
                "held_out": test,
                "genes": n_genes,
                "n_features": int(bags[test].features.shape[1]),
                "mil_pearson": float(cv.summary.loc[test, "pearson"]),
                "ridge_pearson": spot_mean_ridge(bags, train, test, list(model.genes)),
                "fit_seconds": float(cv.summary.loc[test, "seconds"]),
            }
        )
        r = rows[-1]
        print(
            f"{label:22s} {test}: MIL r={r['mil_pearson']:.3f}  spot-mean ridge "
            f"r={r['ridge_pearson']:.3f}  ({r['n_features']} features, fit "
            f"{r['fit_seconds']:.0f} s)",
            flush=True,
        )
    sub = pd.DataFrame([r for r in rows if r["context"] == label])
    print(
        f"{label:22s} MEAN: MIL {sub.mil_pearson.mean():.3f}  ridge {sub.ridge_pearson.mean():.3f}"
        f"  ratio {sub.mil_pearson.mean() / sub.ridge_pearson.mean():.3f}  (context for 4 "
        f"sections in {t_ctx:.1f} s; load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def time_embed(root: Path, name: str, cache: Path) -> None:
    """The default ``sst.tl.embed`` (with its context) of a cached, segmented section."""
    sdata, _ = prepare(root, name, "morphology", None, cache, context_um=0)
    n = sdata["sst_cells_table"].n_obs
    load0 = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    sst.tl.embed(sdata, progress=False, overwrite=True)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    info = sdata["sst_embedding"].uns[UNS_KEY]["embedding"]
    print(
        f"default embed of {name}: {n} cells x {sdata['sst_embedding'].obsm[EMBEDDING_OBSM].shape[1]}"
        f" features (context {info['context']}) in {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"({n / wall:.0f} cells/s); load average before {load0}, after {os.getloadavg()}",
        flush=True,
    )


def her2st_parser() -> argparse.ArgumentParser:
    """The arguments every her2st benchmark of this family takes: ``--shared``, ``--cache``."""
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--cache", type=Path, default=Path("/tmp/sst_feat/cache"))
    return p


def her2st_sections(args) -> dict:
    """C2-C5 segmented and embedded without context (cached), after printing the load."""
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    if getattr(args, "time_embed", None):
        time_embed(root, args.time_embed, args.cache)
    return {n: prepare(root, n, "morphology", None, args.cache, context_um=0)[0] for n in SECTIONS}


def parse_setting(text: str) -> tuple[list[float], list[str]]:
    """``"30+200:mean,sd"`` -> radii in µm and statistics (``"0"``: no context)."""
    radii, _, stats = text.partition(":")
    radii = [float(r) for r in radii.split("+") if float(r)]
    return radii, stats.split(",") if radii else []


def main() -> None:
    p = her2st_parser()
    p.add_argument(
        "--settings",
        nargs="+",
        default=["0", *(f"{r}:{s}" for r in (30, 60, 100, 200) for s in ("mean", "mean,sd"))],
        help="RADII:STATS in the order run, e.g. 0 (no context) 200:mean,sd 30+200:mean",
    )
    p.add_argument("--genes", type=int, default=50)
    p.add_argument("--time-embed", default=None, metavar="SECTION")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    slides = her2st_sections(args)
    raw = {n: own_features(slides[n]) for n in SECTIONS}
    rows: list[dict] = []
    for radii, stats in map(parse_setting, args.settings):
        run_setting(slides, raw, radii, stats, args.genes, rows)
        if args.json:
            pd.DataFrame(rows).to_json(args.json, orient="records", indent=1)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    wide = table.pivot_table(index="context", columns="held_out", values="mil_pearson", sort=False)
    wide["mean"] = wide.mean(1)
    wide["ridge mean"] = table.groupby("context", sort=False)["ridge_pearson"].mean()
    print(wide.round(3))
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
