"""Cell-level evidence on real tissue: types of predicted cells vs stereoscope's proportions.

her2st patient C, leave-one-section-out (``--held-out``, default C2-C5): the model is trained
(``sst.tl.fit`` defaults, through ``sst.tl.leave_one_slide_out``) on the other three sections
on the marker genes below, with the default embedding (morphology + neighbourhood context
``--context``, appended as ``sst.tl.embed`` does to the cached context-free features), and
predicts every cell of the held-out section. ``sst.tl.score_cell_types`` (default
``min_score``) types the cells that lie in the section's spots; per spot, the fraction of its
cells of each type is compared with the stereoscope proportions of that spot (the dataset
authors' deconvolution of the spot's expression with scRNA-seq: a reference, never an input)
by Pearson across spots, per type. The control has no single-cell information: every cell of a
spot gets its spot's mean predicted expression, so every cell of a spot gets the same type.
Both are scored on the same cells. Also printed: the Pearson of the spot's mean signature
score (MIL cells) and of the control's score with the proportions.

The paper's check: on all cells of the held-out section, the signature scores of the "small
dark round" nuclei (area below the section's 25th percentile, hematoxylin above its 75th,
circularity above its median: lymphocyte-like) vs the other nuclei.

Markers (standard markers of stereoscope's major types, fixed before any run, not tuned):
see ``MARKERS``.

Usage: python benchmarks/celltypes_her2st.py [--shared ../shared] [--held-out C5 C2]
       [--context 200:mean,sd] [--json out.json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import spatialdata as sd

sys.path.insert(0, str(Path(__file__).parent))
from context_her2st import (
    SECTIONS,
    her2st_parser,
    her2st_sections,
    own_features,
    parse_setting,
    set_context,
)

import scellst as sst
from scellst.constants import CELLS_KEY, SPOT_COLUMN, cells_table_key

MARKERS = {
    "B-cells": ["MS4A1", "CD79A", "CD19"],
    "CAFs": ["COL1A1", "COL1A2", "DCN", "LUM"],
    "Endothelial": ["PECAM1", "VWF", "CDH5"],
    "Epithelial": ["EPCAM", "KRT8", "KRT18", "KRT19"],
    "Myeloid": ["CD68", "CD14", "LYZ", "AIF1"],
    "Plasma Cells": ["JCHAIN", "MZB1", "IGKC"],
    "PVL": ["ACTA2", "RGS5", "MCAM", "PDGFRB"],
    "T-cells": ["CD3E", "CD3D", "CD2", "TRAC"],
}
IMMUNE = ["B-cells", "Myeloid", "Plasma Cells", "T-cells"]


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _typed(X, genes, obs_index):
    """Types and scores of the rows of X with the default ``score_cell_types``."""
    tmp = sd.SpatialData(
        tables={
            "t": ad.AnnData(X=X, obs=pd.DataFrame(index=obs_index), var=pd.DataFrame(index=genes))
        }
    )
    sst.tl.score_cell_types(tmp, MARKERS, table_key="t", key_added="ct")
    return tmp["t"].obs


def fold(slides, test, model, rows, groups) -> None:
    s = slides[test]
    sst.tl.predict(s, model, key_added="pred", overwrite=True)
    pred = s["pred"]
    cells = s[cells_table_key(CELLS_KEY)]
    assert (pred.obs["cell_id"].to_numpy() == cells.obs["cell_id"].to_numpy()).all()
    spot = cells.obs[SPOT_COLUMN].to_numpy()
    spots = s["spots_table"]
    props = pd.DataFrame(
        np.asarray(spots.obsm["stereoscope_major"]),
        index=spots.obs["spot_id"].to_numpy(),
        columns=list(spots.uns["stereoscope_major_names"]),
    )
    props = props[~spots.obs["stereoscope_major_missing"].to_numpy()]
    inside = np.isin(spot, props.index)
    X = np.asarray(pred.X, np.float64)[inside]
    owner = spot[inside]
    genes = list(pred.var_names)
    ids, inv = np.unique(owner, return_inverse=True)
    mean = np.zeros((len(ids), X.shape[1]))
    np.add.at(mean, inv, X)
    mean /= np.bincount(inv)[:, None]
    index = pred.obs_names[inside]
    mil, ctrl = _typed(X, genes, index), _typed(mean[inv], genes, index)
    p = props.loc[ids]
    line = []
    for t in MARKERS:
        frac_mil = pd.Series(mil["ct"].to_numpy() == t).groupby(inv).mean().to_numpy()
        frac_ctrl = pd.Series(ctrl["ct"].to_numpy() == t).groupby(inv).mean().to_numpy()
        sc_mil = pd.Series(mil[f"ct_score_{t}"].to_numpy()).groupby(inv).mean().to_numpy()
        sc_ctrl = pd.Series(ctrl[f"ct_score_{t}"].to_numpy()).groupby(inv).mean().to_numpy()
        rows.append(
            {
                "held_out": test,
                "type": t,
                "n_spots": len(ids),
                "mean_proportion": float(p[t].mean()),
                "mil_fraction_mean": float(frac_mil.mean()),
                "ctrl_fraction_mean": float(frac_ctrl.mean()),
                "mil_fraction_r": _pearson(frac_mil, p[t]),
                "ctrl_fraction_r": _pearson(frac_ctrl, p[t]),
                "mil_score_r": _pearson(sc_mil, p[t]),
                "ctrl_score_r": _pearson(sc_ctrl, p[t]),
            }
        )
        r = rows[-1]
        line.append(f"{t} {r['mil_fraction_r']:.2f}/{r['ctrl_fraction_r']:.2f}")
    sub = pd.DataFrame([r for r in rows if r["held_out"] == test])
    print(
        f"{test}: {inside.sum()} cells in {len(ids)} spots; per-type r of fractions "
        f"(MIL/control): {'; '.join(line)}; mean MIL {sub.mil_fraction_r.mean():.3f} vs "
        f"control {sub.ctrl_fraction_r.mean():.3f} (nan: type never assigned)",
        flush=True,
    )
    # the paper's check: signature scores of small dark round nuclei vs the others
    own, names, _ = own_features(s)
    f = pd.DataFrame(own[:, : len(names)], columns=names)
    sdr = (
        (f.area_um2 < f.area_um2.quantile(0.25))
        & (f.h_mean > f.h_mean.quantile(0.75))
        & (f.circularity > f.circularity.median())
    ).to_numpy()
    allc = _typed(np.asarray(pred.X, np.float64), genes, pred.obs_names)
    diff = {
        t: float(allc[f"ct_score_{t}"][sdr].mean() - allc[f"ct_score_{t}"][~sdr].mean())
        for t in MARKERS
    }
    share = {
        t: float((allc["ct"][sdr] == t).mean()) for t in [*MARKERS, "unassigned"]
    }  # fmt: skip
    groups.append({"held_out": test, "n_sdr": int(sdr.sum()), "n_other": int((~sdr).sum()),
                   "score_diff": diff, "sdr_type_share": share})  # fmt: skip
    print(
        f"{test}: {sdr.sum()} small dark round nuclei vs {(~sdr).sum()} others, mean score "
        f"difference (SD units): "
        + ", ".join(f"{t} {v:+.2f}" for t, v in diff.items())
        + f"; immune mean {np.mean([diff[t] for t in IMMUNE]):+.2f}, non-immune mean "
        f"{np.mean([v for t, v in diff.items() if t not in IMMUNE]):+.2f}",
        flush=True,
    )


def main() -> None:
    p = her2st_parser()
    p.add_argument("--held-out", nargs="+", default=SECTIONS)
    p.add_argument("--context", default="200:mean,sd", help="RADII:STATS as in context_her2st")
    p.add_argument(
        "--max-epochs", type=int, default=None, help="smoke tests only (not fit's default)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    slides = her2st_sections(args)
    for n in SECTIONS:
        set_context(slides[n], *own_features(slides[n]), *parse_setting(args.context))
    genes = [g for m in MARKERS.values() for g in m]
    kw = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    cv = sst.tl.leave_one_slide_out(slides, genes=genes, held_out=args.held_out, **kw)
    print(cv.summary[["pearson", "spearman", "seconds"]].round(3), flush=True)
    rows, groups = [], []
    for test in args.held_out:
        fold(slides, test, cv.models[test], rows, groups)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.groupby("type")[["mil_fraction_r", "ctrl_fraction_r", "mil_score_r",
                                 "ctrl_score_r", "mean_proportion", "mil_fraction_mean"]]
          .mean().round(3))  # fmt: skip
    r = table.fillna({c: 0.0 for c in table.columns if c.endswith("_r")})
    print(
        "mean over types and folds (a type never assigned counts as r = 0): fractions MIL "
        f"{r.mil_fraction_r.mean():.3f} vs control {r.ctrl_fraction_r.mean():.3f}; "
        f"scores MIL {r.mil_score_r.mean():.3f} vs control {r.ctrl_score_r.mean():.3f}"
    )
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        pd.DataFrame(rows).to_json(args.json, orient="records", indent=1)
        pd.DataFrame(groups).to_json(args.json.replace(".json", "_groups.json"), orient="records")


if __name__ == "__main__":
    main()
