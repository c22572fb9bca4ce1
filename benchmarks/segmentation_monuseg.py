"""Nucleus segmentation accuracy on the MoNuSeg 2018 training images (13 hand-annotated tiles).

For each image: sst.io.read_image -> sst.pp.segment (default parameters unless --params) ->
sst.pp.rasterize_cells -> sst.tl.segmentation_metrics against the reference labels. Prints F1
(IoU > 0.5), AJI and PQ per image and their mean over images (the usual MoNuSeg protocol).

Usage: python benchmarks/segmentation_monuseg.py [--shared ../shared] [--params '{"threshold": 0.3}']
       [--method watershed] [--images TCGA-21-5784-01Z-00-DX1 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import tifffile

import scellst as sst

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASET = Path("data") / "nuclei" / "monuseg_train"
#: MoNuSeg tiles are 40x scans; used when the manifest has no pixel size for an image.
DEFAULT_MPP = 0.25
SCORES = ("f1", "aji", "pq", "precision", "recall", "dq", "sq")


def load_manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_image(root: Path, row: dict, method: str, params: dict | None, n_jobs: int | None) -> dict:
    image_id = Path(row["image"]).stem
    mpp = float(row["mpp_um_per_px"]) if row.get("mpp_um_per_px") else DEFAULT_MPP
    truth = tifffile.imread(root / row["label"])
    t0 = time.perf_counter()
    sdata = sst.io.read_image(root / row["image"], microns_per_pixel=mpp)
    try:
        sst.pp.segment(sdata, method=method, params=params, n_jobs=n_jobs, progress=False)
        pred = sst.pp.rasterize_cells(sdata)
    except ValueError as e:  # nothing found: score an empty prediction
        print(f"  {image_id}: {e}", flush=True)
        pred = np.zeros(truth.shape, dtype=np.int32)
    seconds = time.perf_counter() - t0
    m = sst.tl.segmentation_metrics(truth, pred)
    return {
        "id": image_id,
        "mpp": mpp,
        "mpp_from_manifest": bool(row.get("mpp_um_per_px")),
        **m,
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="the ../shared folder")
    p.add_argument("--method", default="watershed", help="segmentation method of sst.pp.segment")
    p.add_argument("--params", type=json.loads, default=None, help="JSON dict for params=")
    p.add_argument("--images", nargs="+", default=None, help="only these image ids")
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()

    root = args.shared / DATASET
    if not (root / "manifest.csv").is_file():
        raise SystemExit(f"MoNuSeg not found at {root} (pass --shared)")
    rows = load_manifest(root)
    if args.images:
        rows = [r for r in rows if Path(r["image"]).stem in set(args.images)]

    print(f"method={args.method} params={json.dumps(args.params)}")
    header = (
        f"{'image':<28} {'n_true':>6} {'n_pred':>6} {'F1':>6} {'AJI':>6} {'PQ':>6} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for row in rows:
        r = run_image(root, row, args.method, args.params, args.n_jobs)
        note = "" if r["mpp_from_manifest"] else f"  (no mpp in manifest: {r['mpp']} assumed)"
        print(
            f"{r['id']:<28} {r['n_true']:>6d} {r['n_pred']:>6d} {r['f1']:>6.3f} {r['aji']:>6.3f} "
            f"{r['pq']:>6.3f} {r['seconds']:>8.2f}{note}",
            flush=True,
        )
        results.append(r)
    mean = {k: float(np.mean([r[k] for r in results])) for k in (*SCORES, "seconds")}
    print("-" * len(header))
    print(
        f"{'mean':<28} {sum(r['n_true'] for r in results):>6d} "
        f"{sum(r['n_pred'] for r in results):>6d} {mean['f1']:>6.3f} {mean['aji']:>6.3f} "
        f"{mean['pq']:>6.3f} {mean['seconds']:>8.2f}"
    )
    print(
        f"(mean precision {mean['precision']:.3f}, recall {mean['recall']:.3f}, "
        f"DQ {mean['dq']:.3f}, SQ {mean['sq']:.3f}; total {sum(r['seconds'] for r in results):.1f} s)"
    )
    if args.json:
        out = {"method": args.method, "params": args.params, "images": results, "mean": mean}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
