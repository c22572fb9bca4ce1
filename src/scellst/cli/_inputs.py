"""What each command reads: checked options, the recorded input settings, and the reading."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import spatialdata as sd
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .. import datasets, io
from .._sdata import image_key, spots_key, table_for_element
from ..constants import (
    CELLS_KEY,
    EMBEDDING_KEY,
    EXPRESSION_KEY,
    MICRONS_CS,
    UNS_KEY,
    cells_table_key,
)
from ..io._common import is_tiff, tiff_microns_per_pixel
from ._errors import CLIError
from ._options import RUN_SOURCES
from ._store import RECORD_KEY

log = logging.getLogger("scellst")

#: Elements a command computes: an input store's own copies are not carried over.
COMPUTED = (CELLS_KEY, cells_table_key(CELLS_KEY), EMBEDDING_KEY, EXPRESSION_KEY)


def check_options(args: argparse.Namespace) -> None:
    """Required options and combinations, after the config file and the flags are merged."""
    if args.out is None:
        raise CLIError("--out is required (the output zarr store), as a flag or `out` in --config.")
    if args.command == "run":
        given = [s for s in RUN_SOURCES if getattr(args, s) is not None]
        if len(given) != 1:
            raise CLIError(
                "Give exactly one input: --hest DIR --sample ID, --visium DIR --fullres-image TIF, "
                f"or --zarr STORE (got {', '.join('--' + s for s in given) or 'none'})."
            )
        if args.hest is not None and not args.sample:
            raise CLIError("--hest needs --sample ID (the sample's file name in st/, e.g. C2).")
        if args.sample and args.hest is None:
            raise CLIError("--sample goes with --hest.")
        if args.visium is not None and args.fullres_image is None:
            raise CLIError(
                "--visium needs --fullres-image TIF: nuclei are segmented at full resolution, "
                "which Space Ranger's hires/lowres PNGs lack."
            )
        if args.fullres_image is not None and args.visium is None:
            raise CLIError("--fullres-image goes with --visium.")
        if args.mpp is not None and args.visium is not None:
            raise CLIError(
                "--mpp does not apply to --visium: the pixel size comes from the spot diameter in "
                "Space Ranger's scalefactors_json.json."
            )
        parse_genes(args.genes)
        if args.zarr is not None and _same_path(args.zarr, args.out):
            raise CLIError("--out must differ from the input --zarr store (it is not modified).")
    if args.command == "predict":
        for name in ("model", "image"):
            if getattr(args, name) is None:
                raise CLIError(f"--{name} is required, as a flag or `{name}` in --config.")
    if args.command != "predict":
        if args.train_encoder_epochs < 0 or args.train_encoder_cells < 2:
            raise CLIError("--train-encoder-epochs must be >= 0 and --train-encoder-cells >= 2.")
        if args.train_encoder_epochs > 0 and (
            args.encoder != "morphology" or args.weights is not None
        ):
            raise CLIError(
                "--train-encoder-epochs trains the encoder that embeds the cells: drop --encoder "
                "and --weights, or drop --train-encoder-epochs."
            )
    if args.weights is not None and args.encoder == "morphology":
        raise CLIError("--weights goes with a torchvision --encoder; 'morphology' has none.")
    if args.stop_after == "train_encoder" and not args.train_encoder_epochs:
        raise CLIError("--stop-after train_encoder goes with --train-encoder-epochs N.")
    parse_seg_params(args.seg_param, args.segment_method)
    if args.cellpose_weights is not None and args.segment_method != "cellpose":
        raise CLIError("--cellpose-weights goes with --segment-method cellpose.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda, but torch sees no CUDA GPU: use --device cpu or auto.")


#: Segmentation parameters that have their own flag.
_SEG_FLAGS = {"pretrained_model": "--cellpose-weights", "device": "--device"}


def parse_seg_params(items: list[str] | None, method: str) -> dict:
    """``--seg-param KEY=VALUE`` flags as a dict (numbers, true/false/none converted), with the
    keys checked against the segmentation method's parameters."""
    params: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--seg-param {item!r}: expected KEY=VALUE, e.g. min_area_um2=12.")
        params[key] = _seg_value(raw.strip())
    if method == "watershed":
        from ..segmentation.watershed import WatershedParams

        valid = set(WatershedParams.__dataclass_fields__)
        unknown = sorted(set(params) - valid)
        if unknown:
            raise CLIError(
                f"--seg-param: unknown watershed parameter(s) {', '.join(unknown)}. Valid: "
                f"{', '.join(sorted(valid))} (sizes in µm, areas in µm²)."
            )
    if method == "learned":
        valid = {"path", "min_area_um2", "max_area_um2", "tissue_od", "window", "precision"}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise CLIError(
                f"--seg-param: unknown parameter(s) {', '.join(unknown)} of the learned "
                f"segmenter. Valid: {', '.join(sorted(valid))} (path: a model folder written by "
                "sst.pp.train_segmenter)."
            )
    for key, flag in _SEG_FLAGS.items():
        if key in params:
            raise CLIError(f"--seg-param {key}=...: use {flag} instead.")
    return params


def _seg_value(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_genes(genes: str) -> str | list[str]:
    """``"hvg:N"``/``"svg:N"`` as such, otherwise a comma-separated list of names."""
    if genes.lower().startswith(("hvg:", "svg:")):
        return genes
    names = [g.strip() for g in genes.split(",") if g.strip()]
    if not names:
        raise CLIError(f"--genes {genes!r} names no gene: use hvg:N, svg:N or GENE1,GENE2,...")
    return names


def input_settings(args: argparse.Namespace) -> dict:
    """What the command reads, as recorded in the output store (compared when resuming)."""
    if args.command == "demo":
        return {
            "command": "demo",
            "size": args.size,
            "spot_pitch_um": args.spot_pitch_um,
            "seed": args.seed,
        }
    if args.command == "predict":
        return {"command": "predict", "image": _abs(args.image), "mpp": args.mpp}
    return {
        "command": "run",
        **{k: _abs(getattr(args, k)) for k in ("hest", "visium", "fullres_image", "zarr")},
        "sample": args.sample,
        "mpp": args.mpp,
    }


def read_input(args: argparse.Namespace, missing_ok: bool = False) -> SpatialData | None:
    """The command's input as a new SpatialData object (lazy images). With ``missing_ok``
    (resuming), an input that cannot be read any more gives None and a log line."""
    try:
        return _read(args)
    except (FileNotFoundError, ValueError, CLIError) as e:
        if missing_ok:
            log.info("the input cannot be read any more (%s): using the store's copy of it", e)
            return None
        if isinstance(e, CLIError):
            raise
        raise type(e)(cli_advice(str(e))) from e


def _read(args: argparse.Namespace) -> SpatialData:
    if args.command == "demo":
        return datasets.synthetic(
            shape=(args.size, args.size), spot_pitch_um=args.spot_pitch_um, seed=args.seed
        )
    if args.command == "predict":
        return _read_slide(args.image, args.mpp)
    if args.hest is not None:
        return io.read_hest(args.hest, args.sample, microns_per_pixel=args.mpp)
    if args.visium is not None:
        image = args.fullres_image.expanduser()
        # relative to the current directory, as every path of the command line (the reader
        # would look in the Visium folder first); one found only there is read from there
        image = image.resolve() if image.exists() else image
        return io.read_visium(args.visium, fullres_image_file=image)
    return _read_store(args.zarr, args.mpp)


#: Advice of the library's messages that a command-line user follows with a flag instead.
_CLI_ADVICE = (
    ("with `microns_per_pixel=`", "with --mpp"),
    ("`microns_per_pixel=`", "--mpp"),
    ("microns_per_pixel=", "--mpp "),
)


def cli_advice(message: str) -> str:
    """A library error message with its Python advice put as command-line advice."""
    for python, flag in _CLI_ADVICE:
        message = message.replace(python, flag)
    return message


def check_genes(sdata: SpatialData, genes: str | list[str]) -> None:
    """Before any work: the genes named by ``--genes`` are measured in the input's spots
    table."""
    try:
        table = sdata.tables[table_for_element(sdata, spots_key(sdata))]
    except (KeyError, ValueError):  # no circles (e.g. square bins): tl.fit checks them
        return
    if isinstance(genes, str):  # hvg:N / svg:N: resolved by the fit
        return
    names = set(table.var_names)
    missing = [g for g in genes if g not in names]
    if missing:
        close = sorted(n for n in names if any(n.upper() == g.upper() for g in missing))
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise CLIError(
            f"--genes: {len(missing)} of {len(genes)} genes are not measured in the input's spots "
            f"table ({len(names)} genes): {shown}."
            + (f" Same name in other case: {', '.join(close)}." if close else "")
            + " Check the spelling, drop them, or use hvg:N / svg:N."
        )


def _read_slide(path: Path, mpp: float | None) -> SpatialData:
    if path.is_file() and not is_tiff(path):
        raise CLIError(
            f"--image {str(path)!r} is not a TIFF: scellst reads TIFF, BigTIFF, OME-TIFF and "
            "Aperio SVS slides. Convert it to a TIFF first, e.g. `vips tiffsave "
            f"{path.name} {path.stem}.tif --tile --pyramid --compression jpeg` (libvips) or "
            f"`convert {path.name} {path.stem}.tif` (ImageMagick), and give its pixel size "
            "with --mpp UM (e.g. 0.25 at 40x, 0.5 at 20x)."
        )
    if mpp is None and path.is_file():
        found, note = tiff_microns_per_pixel(path)
        if found is None:
            raise CLIError(
                f"No pixel size in the metadata of {str(path)!r} ({note}). Pass --mpp with the "
                "scanner's resolution in µm per pixel (e.g. 0.25 at 40x, 0.5 at 20x)."
            )
    return io.read_image(path, microns_per_pixel=mpp)


def _read_store(path: Path, mpp: float | None) -> SpatialData:
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise CLIError(f"--zarr {path} is not a zarr store (no zarr.json in it).")
    sdata = sd.read_zarr(path)
    present = [k for k in COMPUTED if k in sdata]
    if present:
        log.info("not copying %s of %s: this run computes its own", ", ".join(present), path)
    for key in present:
        del sdata[key]  # from this object only, not from the input store
    attrs = sdata.attrs.get(UNS_KEY)
    if isinstance(attrs, dict):  # an earlier run's record is not this run's
        sdata.attrs[UNS_KEY] = {k: v for k, v in attrs.items() if k != RECORD_KEY}
    key = image_key(sdata)
    if mpp is not None:
        io.set_microns_per_pixel(sdata, key, mpp)
    elif MICRONS_CS not in get_transformation(sdata[key], get_all=True):
        raise CLIError(
            f"--zarr {path}: the image {key!r} has no pixel size (no 'microns' transformation). "
            "Pass --mpp with the scanner's resolution in µm per pixel (e.g. 0.25 at 40x, 0.5 "
            "at 20x)."
        )
    return sdata


def _abs(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _same_path(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
