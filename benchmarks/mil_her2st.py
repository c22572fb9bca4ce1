"""Spot-level accuracy on real tissue: leave-one-section-out on her2st patient C, and B4.

Sections C2-C5 (serial sections of one HER2+ tumour, legacy ST, 100 µm spots) are read,
segmented, assigned and embedded (``--encoder``, default the morphology features). For each
held-out section the others train and the held-out section's spots are scored: per-gene Pearson
(and Spearman, MSE) across its spots between predicted and measured log-normalised expression
(``log1p`` of counts per 10,000), mean over genes. Genes: the top N HVGs (seurat_v3) of the
training sections of each fold (``--genes 50 250``). B4 (another patient, ~15x shallower) is
scored by a model trained on all of C2-C5. Methods, in the same run, on the same genes:

- ``mil_linear`` / ``mil_log``: ``sst.tl.leave_one_slide_out`` with the ``sst.tl.fit`` defaults
  (MSE, mean over the cells), the cells pooled as expression (default) or as log values
  (sCellST), ``--spaces``;
- ``patch``: a spot-level baseline that sees the whole spot instead of its cells one by one: a
  handcrafted descriptor of the spot (below) -> standardised -> ridge regression (RidgeCV,
  alpha chosen by leave-one-out on the training spots), one output per gene;
- ``mean``: the mean training expression of each gene for every spot (constant: its Pearson is
  undefined, its MSE is the reference).

The patch descriptor, for the default morphology encoder (83 numbers per spot): mean and standard
deviation over the spot's cells of their embeddings (30 + 30), log(1 + number of cells), and
colour/texture statistics of the spot disk's pixels: RGB mean and standard deviation (6),
hematoxylin and eosin optical densities (Ruifrok colour deconvolution): mean, standard
deviation, 10/50/90th percentiles (10), fraction of tissue pixels (1), mean gradient magnitude
and standard deviation of the Laplacian of the grey image at 1x and 4x downsampling (4) and the
mean optical density (1) — i.e. what a
patch-level model can read from the spot without seeing cells individually. With another
``--encoder`` the cell part uses that encoder's embeddings.

With a torch encoder (a saved ``sst.tl.train_encoder`` folder, a torchvision name with
``--weights``, or ``ssl``) a second baseline, ``patch_cnn``, embeds the spot's image itself with
the same network, without segmentation: the spot disk is tiled by squares of the network's
input size (12 µm at 0.25 µm/px by default; a tile belongs to the spot when its centre is in the
disk, ~55 per 100 µm spot), each tile is embedded, and the mean and standard deviation of the
tile embeddings over the spot -> standardised -> RidgeCV.

``--encoder ssl`` trains a self-supervised encoder (``sst.tl.train_encoder`` defaults, MoCo v3,
``--ssl-cells`` cells, ``--ssl-epochs`` epochs) for each fold **on the training sections of
that fold only** (the held-out section's images are never seen in training, unlike sCellST,
whose SSL encoder also trained on its test slides), then embeds every section of the fold
with it. ``--ssl-normalization slide`` trains and embeds with per-slide colour statistics.

Wall time and peak RSS are measured per fold (fit + scoring of all methods).

Usage: python benchmarks/mil_her2st.py [--shared ../shared] [--genes 50 250]
       [--sections C2 C3 C4 C5] [--cross B4] [--encoder morphology] [--cache DIR]
       [--spaces linear log] [--torch-threads 1] [--json out]
       [--ssl-cells 6000 --ssl-epochs 5 --ssl-normalization fixed|slide]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import spatialdata as sd
from scipy import ndimage
from skimage.color import rgb2hed
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst
from scellst._sdata import image_level0, read_rgb
from scellst.embedding.crops import iter_crops
from scellst.embedding.encoder import resolve_encoder
from scellst.io._scale import microns_per_pixel
from scellst.mil.assign import spot_geometry
from scellst.mil.evaluate import score_genes
from scellst.mil.spots import measured_spots, slide_bags

BAG_KW = dict(cells_key="sst_cells", embedding_key="sst_embedding", spots_key=None, min_counts=20)


def prepare(
    root: Path, name: str, encoder: str, weights: str | None, cache: Path | None, **embed_kw
):
    """read_hest -> segment -> assign_cells -> embed, or the cached result of a previous run.

    ``encoder="ssl"``: embedded with the morphology features for now; each fold re-embeds.
    ``embed_kw``: more arguments of ``sst.tl.embed`` (part of the cache file's name).
    """
    encoder = "morphology" if encoder == "ssl" else encoder
    tag = "".join(f"_{k}{v}" for k, v in sorted(embed_kw.items()))
    path = cache / f"{name}_{encoder.replace('/', '_')}{tag}.zarr" if cache else None
    if path is not None and path.exists():
        return sd.read_zarr(path), 0.0
    t = time.perf_counter()
    sdata = sst.io.read_hest(root, name)
    sst.pp.segment(sdata, progress=False)
    sst.pp.assign_cells(sdata)
    sst.tl.embed(sdata, encoder=encoder, weights=weights, progress=False, **embed_kw)
    seconds = time.perf_counter() - t
    if path is not None:
        sst.io.write_zarr(sdata, path)
        sdata = sd.read_zarr(path)
    return sdata, seconds


def patch_descriptor(sdata, bags) -> np.ndarray:
    """Per kept spot: cell-embedding statistics + colour/texture statistics of the spot disk."""
    n = bags.spots.n_obs
    counts = np.bincount(bags.bag, minlength=n).astype(np.float64)
    mean_sd = pooled_mean_sd(bags.features, bags.bag, n)
    ids, centres, radii = spot_geometry(sdata, bags.spots_key, "he")
    where = pd.Index(ids).get_indexer(bags.instance)
    img = image_level0(sdata, "he")
    h, w = img.sizes["y"], img.sizes["x"]
    texture = []
    for (cx, cy), r in zip(centres[where], radii[where], strict=True):
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
        rgb = read_rgb(img, y0, y1, x0, x1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r**2
        texture.append(_colour_texture(rgb, disk))
    return np.column_stack([mean_sd, np.log1p(counts), np.array(texture)])


def pooled_mean_sd(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2 d)``: the mean and the standard deviation of the rows of each group 0..n-1."""
    values = np.asarray(values, np.float64)
    count = np.bincount(group, minlength=n)[:, None].astype(np.float64)
    mean = np.zeros((n, values.shape[1]))
    np.add.at(mean, group, values)
    mean /= count
    sq = np.zeros_like(mean)
    np.add.at(sq, group, values**2)
    return np.column_stack([mean, np.sqrt(np.maximum(sq / count - mean**2, 0))])


def patch_cnn_descriptor(sdata, bags, encoder) -> np.ndarray:
    """Per kept spot: mean and SD of the embeddings of the encoder-input-sized tiles covering
    the spot disk (the spot's image embedded by the same network, without segmentation)."""
    ids, centres, radii = spot_geometry(sdata, bags.spots_key, "he")
    where = pd.Index(ids).get_indexer(bags.instance)
    mpp = microns_per_pixel(sdata, "he")
    step = encoder.input_size_um / mpp  # tile side in slide pixels
    points, owner = [], []
    for k, ((cx, cy), r) in enumerate(zip(centres[where], radii[where], strict=True)):
        m = int(np.ceil(r / step))
        off = np.arange(-m, m + 1) * step
        gx, gy = np.meshgrid(off, off)
        keep = gx**2 + gy**2 <= r**2
        points.append(np.column_stack([cx + gx[keep], cy + gy[keep]]))
        owner.append(np.full(int(keep.sum()), k))
    points, owner = np.vstack(points), np.concatenate(owner)
    emb = np.zeros((len(points), encoder.dim), np.float32)
    stats = sdata["sst_embedding"].uns["scellst"]["embedding"]["channel_stats"]
    for batch in iter_crops(
        image_level0(sdata, "he"), mpp, points, crop_size_um=encoder.input_size_um,
        crop_mpp=encoder.crop_mpp, masks=False, channel_stats=stats, progress=False,
    ):  # fmt: skip
        emb[batch.index] = encoder.encode(batch)
    return pooled_mean_sd(emb, owner, bags.spots.n_obs)


def ridge_scores(X_train, y_train, X_test, measured, genes):
    """Standardise -> RidgeCV (alpha by leave-one-out) -> scores on the held-out spots."""
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 25)))
    ridge.fit(X_train, y_train)
    return score_genes(ridge.predict(X_test), measured, genes), float(ridge[-1].alpha_)


def _colour_texture(rgb: np.ndarray, disk: np.ndarray) -> list[float]:
    px = rgb[disk].astype(np.float64) / 255
    hed = rgb2hed(rgb)
    hem, eos = hed[..., 0][disk], hed[..., 1][disk]
    od = -np.log(np.clip(px, 1 / 255, 1)).sum(1)
    grey = rgb.mean(-1) / 255
    out = [*px.mean(0), *px.std(0)]
    for c in (hem, eos):
        out += [c.mean(), c.std(), *np.percentile(c, [10, 50, 90])]
    out.append(float((od > 0.3).mean()))  # tissue (not glass)
    for step in (1, 4):
        g = grey[::step, ::step]
        d = disk[::step, ::step]
        gy, gx = np.gradient(g)
        out += [np.hypot(gx, gy)[d].mean(), ndimage.laplace(g)[d].std()]
    out.append(od.mean())
    return out


def fold_scores(train_bags, test_bag, train_sdatas, test_sdata, models: dict, encoder=None) -> dict:
    """MIL (one model per setting), patch and mean baselines on the held-out spots, same genes.

    ``encoder``: a torch encoder, for the ``patch_cnn`` baseline (none with morphology)."""
    genes = next(iter(models.values())).genes
    measured = measured_spots(test_bag, genes)
    out = {}
    for name, model in models.items():
        assert model.genes == genes
        pred = model.predict_spots(test_bag.features, test_bag.bag, test_bag.spots.n_obs)
        out[name] = score_genes(pred, measured, genes)
    X_train = np.vstack(
        [patch_descriptor(s, b) for s, b in zip(train_sdatas, train_bags, strict=True)]
    )
    y_train = np.vstack([measured_spots(b, genes) for b in train_bags])
    out["patch"], out["alpha"] = ridge_scores(
        X_train, y_train, patch_descriptor(test_sdata, test_bag), measured, genes
    )
    if encoder is not None:
        X_cnn = np.vstack(
            [
                patch_cnn_descriptor(s, b, encoder)
                for s, b in zip(train_sdatas, train_bags, strict=True)
            ]
        )
        out["patch_cnn"], out["alpha_cnn"] = ridge_scores(
            X_cnn, y_train, patch_cnn_descriptor(test_sdata, test_bag, encoder), measured, genes
        )
    const = np.broadcast_to(y_train.mean(0), measured.shape)
    out["mean"] = score_genes(const, measured, genes)
    return out


def run_fold(names, test, slides, bags, n_genes, spaces, rows, encoder=None, extra=None):
    res: dict = {}
    train = [n for n in names if n != test]
    models, cvs = {}, {}
    with measure(res, f"{test} hvg:{n_genes}"):
        for space in spaces:
            cvs[space] = sst.tl.leave_one_slide_out(
                {n: slides[n] for n in [*train, test]},
                genes=f"hvg:{n_genes}",
                held_out=[test],
                aggregation_space=space,
            )
            models[f"mil_{space}"] = cvs[space].models[test]
        scores = fold_scores(
            [bags[n] for n in train], bags[test], [slides[n] for n in train], slides[test], models,
            encoder,
        )  # fmt: skip
    r = res[f"{test} hvg:{n_genes}"]
    first = models[f"mil_{spaces[0]}"]
    row = {
        "held_out": test,
        "train": ",".join(train),
        "genes": n_genes,
        "n_train_spots": first.config["n_train_spots"] + first.config["n_val_spots"],
        "n_test_spots": bags[test].spots.n_obs,
        "seconds": r["seconds"],
        "peak_rss_gb": r["peak_rss_gb"],
        "ridge_alpha": scores.pop("alpha"),
        **({"ridge_alpha_cnn": scores.pop("alpha_cnn")} if "alpha_cnn" in scores else {}),
        **(extra or {}),
    }
    for space in spaces:
        row[f"mil_{space}_epochs"] = models[f"mil_{space}"].config["epochs_run"]
        row[f"mil_{space}_seconds"] = float(cvs[space].summary.loc[test, "seconds"])
        # the same number straight from the public helper: a consistency check
        assert abs(cvs[space].summary.loc[test, "pearson"] - scores[f"mil_{space}"].attrs[
            "mean_pearson"
        ]) < 1e-9  # fmt: skip
    for method, sc in scores.items():
        row[f"{method}_pearson"] = sc.attrs["mean_pearson"]
        row[f"{method}_spearman"] = sc.attrs["mean_spearman"]
        row[f"{method}_mse"] = float(sc["mse"].mean())
    rows.append(row)
    mil = " | ".join(
        f"MIL-{sp} r={row[f'mil_{sp}_pearson']:.3f} rho={row[f'mil_{sp}_spearman']:.3f} "
        f"mse={row[f'mil_{sp}_mse']:.3f} ({row[f'mil_{sp}_epochs']} ep)"
        for sp in spaces
    )
    cnn = (
        f" | patch_cnn r={row['patch_cnn_pearson']:.3f} mse={row['patch_cnn_mse']:.3f}"
        if "patch_cnn_pearson" in row
        else ""
    )
    print(
        f"{test:4s} hvg:{n_genes:<4d} spots {row['n_train_spots']:4d}->{row['n_test_spots']:3d}  "
        f"{mil} | patch r={row['patch_pearson']:.3f} rho={row['patch_spearman']:.3f} "
        f"mse={row['patch_mse']:.3f}{cnn} | mean mse={row['mean_mse']:.3f} | "
        f"{row['seconds']:.0f} s {row['peak_rss_gb']:.2f} GB",
        flush=True,
    )


def fold_encoder(names, test, slides, bags, args):
    """Train an SSL encoder on the fold's training sections, embed all the fold's sections."""
    train = [n for n in names if n != test]
    res: dict = {}
    with measure(res, f"ssl {test}"):
        enc = sst.tl.train_encoder(
            [slides[n] for n in train], max_cells=args.ssl_cells, epochs=args.ssl_epochs,
            normalization=args.ssl_normalization, progress=False,
        )  # fmt: skip
    with measure(res, f"embed {test}"):
        for n in names:
            sst.tl.embed(slides[n], encoder=enc, progress=False, overwrite=True)
            bags[n] = slide_bags(slides[n], **BAG_KW)
    extra = {
        "ssl_train_seconds": res[f"ssl {test}"]["seconds"],
        "ssl_embed_seconds": res[f"embed {test}"]["seconds"],
        "ssl_final_loss": enc.history["loss"][-1],
    }
    print(
        f"fold {test}: SSL encoder trained on {','.join(train)} ({enc.config['n_cells']} cells x "
        f"{args.ssl_epochs} epochs, {args.ssl_normalization} normalisation) in "
        f"{extra['ssl_train_seconds']:.0f} s; {len(names)} sections embedded in "
        f"{extra['ssl_embed_seconds']:.0f} s",
        flush=True,
    )
    return enc, extra


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    p.add_argument("--cross", nargs="*", default=["B4"], help="other-patient test sections")
    p.add_argument("--genes", type=int, nargs="+", default=[50, 250])
    p.add_argument(
        "--encoder",
        default="morphology",
        help="passed to sst.tl.embed; 'ssl': a MoCo encoder trained per fold on its training sections",
    )
    p.add_argument("--ssl-cells", type=int, default=6000, help="with --encoder ssl")
    p.add_argument("--ssl-epochs", type=int, default=5, help="with --encoder ssl")
    p.add_argument("--ssl-normalization", default="fixed", choices=["fixed", "slide"])
    p.add_argument("--weights", default=None, help="weights file for a torch encoder")
    p.add_argument("--cache", type=Path, default=None, help="keep segmented slides here")
    p.add_argument("--spaces", nargs="+", default=["linear", "log"], help="MIL MSE pooling")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; load average {os.getloadavg()}", flush=True)
    slides, bags = {}, {}
    for name in [*args.sections, *args.cross]:
        slides[name], seconds = prepare(root, name, args.encoder, args.weights, args.cache)
        bags[name] = slide_bags(slides[name], **BAG_KW)
        cells = slides[name]["sst_cells_table"].n_obs
        print(
            f"{name}: {cells} cells, {bags[name].spots.n_obs} spots with cells "
            f"({len(bags[name].features)} cells in them), prepared in {seconds:.0f} s",
            flush=True,
        )
    encoder = None
    if args.encoder not in ("morphology", "ssl"):
        encoder = resolve_encoder(args.encoder, args.weights)
    rows: list[dict] = []
    folds = [(args.sections, t) for t in args.sections]
    folds += [([*args.sections, t], t) for t in args.cross]
    for names, test in folds:
        extra = {}
        if args.encoder == "ssl":  # an encoder that never saw the held-out section
            encoder, extra = fold_encoder(names, test, slides, bags, args)
        for n_genes in args.genes:
            run_fold(names, test, slides, bags, n_genes, args.spaces, rows, encoder, extra)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", None)
    cols = [c for c in table.columns if c.endswith(("pearson", "spearman", "mse"))]
    print(table.groupby(["genes", table["held_out"].isin(args.sections)])[cols].mean().round(3))
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        table.to_json(args.json, orient="records", indent=1)


if __name__ == "__main__":
    main()
