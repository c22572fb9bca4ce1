"""Self-supervised encoder on real tissue: training time on her2st sections, then embedding speed.

Segments the sections (default watershed), trains ``sst.tl.train_encoder`` (MoCo v3, small
ResNet) on ``--cells`` cells drawn from all of them, saves it to ``--out`` and embeds the first
section with it. Prints wall and CPU time of each step.

Usage: python benchmarks/ssl_her2st.py [--shared ../shared] [--sections C2 C3 C4 C5]
       [--cells 6000] [--epochs 5] [--out /tmp/her2st_moco]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import scellst as sst


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    p.add_argument("--cells", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--method", default="moco", choices=["moco", "byol"])
    p.add_argument("--out", type=Path, default=Path("/tmp/her2st_moco"))
    args = p.parse_args()
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()}")
    slides = []
    for name in args.sections:
        sdata = sst.io.read_hest(root, name)
        sst.pp.segment(sdata, progress=False)
        slides.append(sdata)
        print(f"{name}: {len(sdata['sst_cells'])} nuclei", flush=True)
    t, c = time.perf_counter(), cpu()
    enc = sst.tl.train_encoder(
        slides, method=args.method, max_cells=args.cells, epochs=args.epochs, out_dir=args.out,
        progress=False,
    )  # fmt: skip
    print(
        f"train_encoder {args.method}: {enc.config['n_cells']} cells x {args.epochs} epochs in "
        f"{time.perf_counter() - t:.0f} s wall, {cpu() - c:.0f} s CPU; saved to {args.out}"
    )
    n = len(slides[0]["sst_cells"])
    t, c = time.perf_counter(), cpu()
    sst.tl.embed(slides[0], encoder=enc, key_added="emb_ssl", progress=False)
    s = time.perf_counter() - t
    print(
        f"embed {args.sections[0]}: {n} cells in {s:.1f} s ({n / s:.0f} cells/s), {cpu() - c:.0f} s CPU"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
