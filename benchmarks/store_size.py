"""The newcomer path on a real her2st section: `scellst run`, the size of its output store with
the default (JPEG) and the lossless image codec, and the data model's spatialdata-plot snippet.

    python benchmarks/store_size.py --sample C3 [--hest ../shared/data/her2st] [--json out.json]

1. ``scellst run --hest ROOT --sample ID --out TMP/run.zarr --quiet`` (the README's command, in a
   subprocess, timed; default settings, the image stored as JPEG);
2. the same store rewritten by ``sst.io.write_zarr(..., image_codec="lossless")`` with the
   slide's own pixels: the size the store had before JPEG became the default;
3. the sizes of both stores by element kind, against the size of the slide file, and the PSNR of
   the stored full-resolution image against the slide's pixels;
4. the spatialdata-plot snippet of ``docs/data_model.md`` on the whole section (datashader path
   above 10,000 cells), timed, read back from the JPEG store.

Prints a table and writes the figures as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_HEST = HERE.parents[1] / "shared" / "data" / "her2st"
KINDS = ("images", "labels", "shapes", "points", "tables", "scellst")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sizes(store: Path) -> dict[str, int]:
    out = {k: dir_bytes(store / k) for k in KINDS if (store / k).is_dir()}
    out["total"] = dir_bytes(store)
    return out


def psnr(stored, source, step: int = 4) -> float:
    """PSNR (dB) of the stored level 0 against the source, on every ``step``-th row."""
    a = np.asarray(stored[:, ::step, :]).astype(np.float64)
    b = np.asarray(source[:, ::step, :]).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hest", type=Path, default=DEFAULT_HEST)
    parser.add_argument("--sample", default="C3")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.hest / "st" / f"{args.sample}.h5ad").is_file():
        sys.exit(f"her2st data not found at {args.hest} (../shared beside the repository)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401

    import scellst as sst
    from scellst._sdata import image_level0

    tiff = next((args.hest / "wsis").glob(f"{args.sample}.*"))
    results: dict = {"sample": args.sample, "slide_file_bytes": tiff.stat().st_size}
    results["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run.zarr"
        command = [
            *(sys.executable, "-m", "scellst.cli", "run", "--hest", str(args.hest)),
            *("--sample", args.sample),
            *("--out", str(run), "--quiet"),
        ]
        t = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results["scellst_run_seconds"] = time.perf_counter() - t
        results["load_after_run"] = os.getloadavg()
        results["jpeg"] = sizes(run)

        back = sd.read_zarr(run)
        source = sst.io.read_hest(args.hest, args.sample)
        results["psnr_db"] = psnr(image_level0(back, "he").data, image_level0(source, "he").data)
        exact = sd.SpatialData(
            images={"he": source["he"]},
            shapes=dict(back.shapes),
            tables=dict(back.tables),
            attrs=dict(back.attrs),
        )
        lossless = Path(tmp) / "lossless.zarr"
        t = time.perf_counter()
        sst.io.write_zarr(exact, lossless, image_codec="lossless")
        results["lossless_write_seconds"] = time.perf_counter() - t
        results["lossless"] = sizes(lossless)
        jpeg = Path(tmp) / "jpeg.zarr"
        t = time.perf_counter()
        sst.io.write_zarr(exact, jpeg)
        results["jpeg_write_seconds"] = time.perf_counter() - t
        results["jpeg_write_bytes"] = dir_bytes(jpeg)

        gene = back["sst_expression"].var_names[0]
        t = time.perf_counter()
        (
            back.pl.render_images("he")
            .pl.render_shapes("sst_cells", color=gene, table_name="sst_expression")
            .pl.show(coordinate_systems="microns")
        )
        results["snippet_seconds"] = time.perf_counter() - t
        results["n_cells"] = len(back["sst_cells"])
        plt.close("all")
    results["load_after"] = os.getloadavg()

    mb = 1e6
    slide = results["slide_file_bytes"]
    print(f"{args.sample}: slide file {slide / mb:.1f} MB, {results['n_cells']} cells")
    print(f"{'store':10s} " + " ".join(f"{k:>8s}" for k in (*KINDS, "total")) + "  x slide")
    for codec in ("lossless", "jpeg"):
        row = results[codec]
        cells = " ".join(f"{row.get(k, 0) / mb:8.1f}" for k in (*KINDS, "total"))
        print(f"{codec:10s} {cells}  {row['total'] / slide:6.2f}")
    print(f"stored image PSNR vs the slide: {results['psnr_db']:.1f} dB")
    print(
        f"scellst run {results['scellst_run_seconds']:.1f} s; write_zarr lossless "
        f"{results['lossless_write_seconds']:.1f} s, jpeg {results['jpeg_write_seconds']:.1f} s; "
        f"spatialdata-plot snippet {results['snippet_seconds']:.1f} s"
    )
    print("load (1, 5, 15 min):", results["load_before"], "->", results["load_after"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
