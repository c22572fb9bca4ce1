"""Command line: ``scellst demo`` and ``scellst run``, writing a SpatialData zarr store."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("scellst")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scellst", description="Single-cell expression from H&E (sCellST) on SpatialData."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--out", required=True, type=Path, help="output SpatialData zarr store")
        sp.add_argument(
            "--model-dir", type=Path, help="also save the trained model in this directory"
        )
        sp.add_argument(
            "--loss",
            default="mse",
            choices=["mse", "nb", "poisson"],
            help="training loss (default mse)",
        )
        sp.add_argument(
            "--max-epochs", type=int, default=400, help="training epochs at most (default 400)"
        )
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument(
            "--overwrite", action="store_true", help="replace an existing --out store / --model-dir"
        )
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser(
        "demo", help="run the whole pipeline on the built-in synthetic slide (known truth)"
    )
    common(d)
    d.add_argument(
        "--size", type=int, default=2048, help="synthetic slide side in pixels (default 2048)"
    )
    d.add_argument(
        "--spot-pitch-um",
        type=float,
        default=70.0,
        help="spot centre-to-centre distance (default 70)",
    )

    r = sub.add_parser(
        "run", help="run the pipeline on a HEST sample or a Visium Space Ranger folder"
    )
    common(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--hest", type=Path, help="HEST-1k root folder (with st/, wsis/, metadata/)")
    src.add_argument("--visium", type=Path, help="Space Ranger output folder")
    r.add_argument("--sample", help="HEST sample id (with --hest)")
    r.add_argument("--fullres-image", type=Path, help="full-resolution H&E TIFF (with --visium)")
    r.add_argument(
        "--genes", default="hvg:50", help="'hvg:N' or a comma-separated gene list (default hvg:50)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    import scellst as sst

    progress = not args.quiet
    t0 = time.time()
    if args.command == "demo":
        sdata = sst.datasets.synthetic(
            shape=(args.size, args.size), spot_pitch_um=args.spot_pitch_um, seed=args.seed
        )
        genes: str | list[str] = list(sdata["truth_expression"].var_names)
    else:
        if args.hest is not None:
            if not args.sample:
                print("error: --hest needs --sample <id>", file=sys.stderr)
                return 2
            sdata = sst.io.read_hest(args.hest, args.sample)
        else:
            if args.fullres_image is None:
                print(
                    "error: --visium needs --fullres-image <full-resolution H&E TIFF>: nuclei are "
                    "segmented at full resolution, which Space Ranger's hires/lowres PNGs lack.",
                    file=sys.stderr,
                )
                return 2
            sdata = sst.io.read_visium(args.visium, fullres_image_file=args.fullres_image)
        genes = (
            args.genes
            if args.genes.lower().startswith("hvg:")
            else [g.strip() for g in args.genes.split(",") if g.strip()]
        )

    steps = [
        ("segment", lambda: sst.pp.segment(sdata, progress=progress)),
        ("assign_cells", lambda: sst.pp.assign_cells(sdata)),
        ("embed", lambda: sst.tl.embed(sdata, progress=progress)),
    ]
    for name, step in steps:
        t = time.time()
        step()
        log.info("%s done in %.1f s", name, time.time() - t)
    t = time.time()
    model = sst.tl.fit(
        sdata,
        genes=genes,
        loss=args.loss,
        max_epochs=args.max_epochs,
        seed=args.seed,
        progress=progress,
    )
    log.info("fit done in %.1f s: %s", time.time() - t, model)
    sst.tl.predict(sdata, model)
    if args.model_dir is not None:
        model.save(args.model_dir, overwrite=args.overwrite)
    if args.command == "demo":
        from .tl._evaluate import score_against_truth

        scores = score_against_truth(sdata)
        summary = {k: round(scores[k], 3) for k in ("markers", "morphology", "all")}
        log.info("per-cell Pearson vs truth (mean by gene group): %s", json.dumps(summary))
    t = time.time()
    sst.io.write_zarr(sdata, args.out, overwrite=args.overwrite)
    log.info("wrote %s in %.1f s (total %.1f s)", args.out, time.time() - t, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
