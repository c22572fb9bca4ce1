"""The options of ``scellst run``, ``scellst predict`` and ``scellst demo`` (argparse).

Defaults are written into each help text with ``%(default)s`` so that ``--help`` shows them; a
test checks them against the library functions' own defaults.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from .._version import __version__

#: The stages of each command, in order (``--stop-after`` choices are all but the last).
STAGES = {
    "run": ("segment", "train_encoder", "embed", "fit", "predict"),
    "demo": ("segment", "train_encoder", "embed", "fit", "predict"),
    "predict": ("segment", "embed", "predict"),
}
#: Options that name where the slide comes from (``scellst run``): exactly one is needed. With
#: the options that only go with each (a source given as a flag replaces the config file's).
RUN_SOURCES = {"hest": ("sample",), "visium": ("fullres_image",), "zarr": ()}

_DESCRIPTIONS = {
    "run": (
        "Run the whole pipeline on one slide with spot transcriptomics: read the data, segment "
        "the nuclei, assign them to spots, embed every cell, train the per-cell model and "
        "predict every cell. The output SpatialData zarr store is written stage by stage; "
        "running the same command again resumes after the last finished stage."
    ),
    "predict": (
        "Predict the expression of every cell of an H&E-only slide (no transcriptomics) with a "
        "model trained by `scellst run` (or saved with MILModel.save): read the slide, segment "
        "the nuclei, embed them with the model's encoder and predict. Resumable like `run`."
    ),
    "demo": (
        "Run the whole pipeline on the built-in synthetic slide, whose single-cell truth is "
        "known, and log the per-cell Pearson correlation of the predictions with the truth. "
        "Needs no data and no network."
    ),
}
_HELP = {
    "run": "whole pipeline on a HEST sample, a Visium folder or a SpatialData store",
    "predict": "predict every cell of an H&E-only slide with a trained model",
    "demo": "whole pipeline on the built-in synthetic slide (known single-cell truth)",
}
_EPILOG = """\
Options can also come from a TOML file (--config FILE): the same names with '_' for '-'
(e.g. max_epochs = 100, genes = ["ERBB2", "CD3E"], quiet = true); options given on the command
line override the file. Relative paths are relative to the current directory.
"""


_WIDTH = 100


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=_WIDTH)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``scellst`` parser and its subcommand parsers (by command name)."""
    parser = argparse.ArgumentParser(
        prog="scellst",
        description=textwrap.fill(
            "Single-cell gene expression from H&E histology (sCellST) on SpatialData. "
            "Run `scellst COMMAND --help` for the options of a command.",
            _WIDTH,
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"scellst {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name in ("run", "predict", "demo"):
        p = sub.add_parser(
            name,
            help=_HELP[name],
            description=textwrap.fill(_DESCRIPTIONS[name], _WIDTH),
            epilog=_EPILOG,
            formatter_class=_Formatter,
        )
        p.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML file with options (names as below, '_' for '-'); flags override it",
        )
        if name == "run":
            _run_input(p)
        elif name == "predict":
            _predict_input(p)
        else:
            _demo_input(p)
        _segmentation(p)
        _encoder(p, name)
        if name != "predict":
            _training(p, name)
        _output(p, name)
        subparsers[name] = p
    return parser, subparsers


def _run_input(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input (exactly one of --hest, --visium, --zarr)")
    g.add_argument(
        "--hest",
        type=Path,
        metavar="DIR",
        help="HEST-1k folder holding st/, wsis/ and metadata/ (with --sample)",
    )
    g.add_argument("--sample", metavar="ID", help="HEST sample id, e.g. C2 (with --hest)")
    g.add_argument("--visium", type=Path, metavar="DIR", help="Space Ranger 'outs' folder")
    g.add_argument(
        "--fullres-image",
        type=Path,
        metavar="TIF",
        help="full-resolution H&E TIFF given to Space Ranger (required with --visium)",
    )
    g.add_argument(
        "--zarr",
        type=Path,
        metavar="STORE",
        help="an existing SpatialData zarr store with an H&E image, spot circles and their "
        "counts table (read, not modified)",
    )
    g.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="pixel size of the slide in µm/px, with --hest (overrides the metadata) or --zarr "
        "(when its image has no scale). Default: read from the data",
    )


def _predict_input(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="model directory written by `scellst run` (OUT/scellst/model or --model-dir) or "
        "MILModel.save (required)",
    )
    g.add_argument(
        "--image",
        type=Path,
        metavar="SLIDE",
        help="the H&E slide: TIFF, BigTIFF, OME-TIFF or Aperio SVS (required)",
    )
    g.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="pixel size in µm/px (e.g. 0.25 at 40x, 0.5 at 20x). Default: read from the file's "
        "metadata; required when the file has none",
    )


def _demo_input(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthetic slide")
    g.add_argument(
        "--size",
        type=int,
        default=2048,
        metavar="PX",
        help="side of the square slide in pixels, at 0.5 µm/px (default: %(default)s)",
    )
    g.add_argument(
        "--spot-pitch-um",
        type=float,
        default=70.0,
        metavar="UM",
        help="centre-to-centre distance of the spots in µm (default: %(default)s)",
    )


def _segmentation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation")
    g.add_argument(
        "--segment-method",
        choices=("watershed", "learned", "cellpose"),
        default="watershed",
        help="nucleus segmentation: weight-free watershed, the nucleus network shipped with "
        "scellst (learned; --seg-param path=DIR for one fine-tuned by sst.pp.train_segmenter), "
        "or cellpose 4 from local weights (default: %(default)s)",
    )
    g.add_argument(
        "--cellpose-weights",
        metavar="FILE",
        help="cellpose weights: a file, or a model name in $CELLPOSE_LOCAL_MODELS_PATH (never "
        "downloaded). Default: cpsam_v2 in that folder",
    )
    g.add_argument(
        "--seg-param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter of the segmentation method, repeatable: for watershed one of "
        "sst.pp.WatershedParams (sizes in µm, e.g. --seg-param min_area_um2=12 --seg-param "
        "tissue_od=0.08), for cellpose an option of sst.pp.CellposeSegmenter (e.g. "
        'nucleus_diameter_um=9). In --config: seg_param = ["min_area_um2=12"] or a table '
        "[run.seg_param]. Default: the method's defaults",
    )
    g.add_argument(
        "--tile-size",
        type=int,
        default=2048,
        metavar="PX",
        help="segmentation tile side in pixels; memory per worker grows with its square "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--n-jobs",
        type=int,
        metavar="N",
        help="worker threads for segmentation and crop reading (default: all cores)",
    )


def _radii(text: str | float) -> list[float]:
    """``--context-um``: comma-separated radii in µm; ``0`` for none."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected radii in µm such as 200 or 30,200 (0: none), got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"radii must be positive µm (0: none), got {text!r}")
    return [v for v in values if v > 0]


def _encoder(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("cell embedding")
    if command == "predict":
        g.add_argument(
            "--encoder",
            metavar="NAME|DIR",
            help="the encoder the model was trained with. Default: 'morphology' models rebuild "
            "it; for a model whose encoder `scellst run` trained it is found in the model "
            "directory; other models need it here (a torchvision name with --weights, or the "
            "folder of a trained encoder)",
        )
    else:
        g.add_argument(
            "--encoder",
            default="morphology",
            metavar="NAME|DIR",
            help="'morphology' (handcrafted, weight-free), a torchvision model name such as "
            "resnet50 (with --weights), or the folder of an encoder trained by "
            "sst.tl.train_encoder (default: %(default)s)",
        )
    g.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="local weights file of the torchvision model named by --encoder (never "
        "downloaded). Default: $SCELLST_WEIGHTS_DIR/NAME.pth",
    )
    if command != "predict":
        g.add_argument(
            "--context-um",
            type=_radii,
            default=[200.0],  # sst.tl.embed's context_um (tested)
            metavar="R[,R...]",
            help="add to each cell's features the mean and SD of its neighbours' features within "
            "these radii in µm (0: none; `predict` uses the model's) (default: %(default)s)",
        )
        g.add_argument(
            "--train-encoder-epochs",
            type=int,
            default=0,
            metavar="N",
            help="first train a self-supervised encoder (MoCo v3, small ResNet) on this slide's "
            "cells for N epochs and embed with it; it is saved in OUT/scellst/encoder and with "
            "the model. 0: no training (default: %(default)s)",
        )
        g.add_argument(
            "--train-encoder-cells",
            type=int,
            default=20000,
            metavar="N",
            help="cells drawn for the encoder training (default: %(default)s)",
        )


def _training(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("model training")
    if command == "run":
        g.add_argument(
            "--genes",
            default="hvg:50",
            metavar="GENES",
            help="genes to train on and predict: 'hvg:N' (N highly variable genes), 'svg:N' (N "
            "spatially variable genes) or a comma-separated list such as ERBB2,CD3E "
            "(default: %(default)s)",
        )
    g.add_argument(
        "--loss",
        choices=("mse", "nb", "poisson"),
        default="mse",
        help="training loss: squared error on log-normalised spots, or the negative binomial / "
        "Poisson likelihood of the counts (default: %(default)s)",
    )
    g.add_argument(
        "--aggregation",
        choices=("mean", "sum"),
        default="mean",
        help="how the cells of a spot are pooled (default: %(default)s)",
    )
    g.add_argument(
        "--aggregation-space",
        choices=("linear", "log"),
        default="linear",
        help="with --loss mse: pool the cells' expression (linear) or their log-normalised "
        "values (log, as sCellST) (default: %(default)s)",
    )
    g.add_argument(
        "--max-epochs",
        type=int,
        default=400,
        metavar="N",
        help="training epochs at most; training stops earlier when the validation loss stops "
        "improving (default: %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        metavar="RATE",
        help="AdamW learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="random seed of the training"
        + (" and of the synthetic slide" if command == "demo" else "")
        + " (default: %(default)s)",
    )


def _output(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("output and execution")
    g.add_argument(
        "--out",
        type=Path,
        metavar="STORE",
        help="output SpatialData zarr store (required); an existing one written by the same "
        "command is resumed",
    )
    if command != "predict":
        g.add_argument(
            "--model-dir",
            type=Path,
            metavar="DIR",
            help="also save the model here (it is always saved in OUT/scellst/model); a model "
            "already there that was trained with the same settings is reused",
        )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where torch runs (training, torch encoders, cellpose): auto picks a GPU when "
        "there is one (default: %(default)s)",
    )
    g.add_argument(
        "--stop-after",
        choices=STAGES[command][:-1],
        metavar="STAGE",
        help=f"stop after this stage ({', '.join(STAGES[command][:-1])}); run again without it "
        "to finish",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start from scratch: replace the --out store of an earlier scellst run"
        + (" and the model in --model-dir" if command != "predict" else ""),
    )
    g.add_argument(
        "--image-codec",
        choices=("jpeg", "lossless"),
        default="jpeg",
        help="how the H&E is copied into --out: JPEG chunks of quality 90 (visually lossless, "
        "about the size of the slide file) or every pixel exactly (5-10x larger). The stages "
        "always compute on the slide's own pixels (default: %(default)s)",
    )
    g.add_argument(
        "--exact-tables",
        action="store_true",
        help="store the embedding and predicted expression exactly; by default their float "
        "values keep 12 mantissa bits (relative error <= 2**-13, about 1.22e-4), 2-3x smaller",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full Python traceback (for bug reports)",
    )
