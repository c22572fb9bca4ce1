"""Nucleus segmentation of H&E with the installed cellpose (v4, ``CellposeModel``).

Cellpose segments best when objects are about 30 pixels across. The slide's microns per pixel
and a nominal nucleus diameter in µm give the nucleus diameter in pixels, which cellpose uses to
rescale each tile (by ``30 / diameter_px``) before its network, and to bring the masks back to
the tile's own resolution.

Weights are never downloaded: the weights file must already be on disk (cellpose's model folder,
or a path given as ``pretrained_model``). Its presence is checked before cellpose is even
imported, so a missing file fails at once with the exact path to fill, instead of cellpose
trying (and, offline, hanging on) a download.
"""

from __future__ import annotations

import inspect
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .stains import TISSUE_OD, total_od

#: Environment variable naming cellpose's model folder (read by cellpose itself too).
MODELS_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
#: Default weights: cellpose-SAM, the built-in model of cellpose 4 (a file named exactly so).
DEFAULT_MODEL = "cpsam_v2"
#: Where cellpose would download its built-in models from (we do not; this is for the message).
MODEL_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"
#: Names of cellpose 4's built-in models (files of these names in the model folder).
BUILTIN_MODELS = ("cpsam_v2", "cpsam", "cpdino", "cpdino-vitb")
#: Object diameter (pixels) cellpose rescales images to before its network.
CELLPOSE_DIAMETER_PX = 30.0

#: ``CellposeModel.eval`` arguments set by the segmenter itself (2D RGB tiles, rescaled from µm).
_RESERVED = {
    "x",
    "batch_size",
    "channels",
    "channel_axis",
    "z_axis",
    "diameter",
    "rescale",
    "do_3D",
    "anisotropy",
    "flow3D_smooth",
    "stitch_threshold",
    "compute_masks",
    "progress",
}


def models_dir() -> Path:
    """Cellpose's model folder: ``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``.

    Read at call time (cellpose reads it once, when imported); the resolved file is handed to
    cellpose as a full path, so both agree.
    """
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


def resolve_weights(pretrained_model: str | os.PathLike | None = None) -> Path:
    """The weights file for ``pretrained_model``, checked to exist; never downloads.

    ``None`` means cellpose 4's default model (``cpsam_v2``). A bare name (e.g. ``"cpsam"`` or a
    user model) is looked up in :func:`models_dir`; anything else is a path to a weights file.

    Raises
    ------
    FileNotFoundError
        Naming the exact file to place, where, and the environment variable to point elsewhere.
    """
    name = DEFAULT_MODEL if pretrained_model is None else os.fspath(pretrained_model)
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve()
    bare = given.name == name and name not in ("", ".", "..")
    target = models_dir() / name if bare else given
    if target.is_file():
        return target.resolve()
    env = os.environ.get(MODELS_ENV)
    env_state = f"currently {env!r}" if env else "currently unset"
    if target.is_dir():
        problem = f"{target} is a folder; the cellpose weights must be a file"
    else:
        problem = f"weights file {target} does not exist"
    lines = [f"Cellpose weights not found: {problem}."]
    if bare:
        source = (
            f" (cellpose's built-in model {name!r}, about 1.2 GB, published at {MODEL_URL}{name})"
            if name in BUILTIN_MODELS
            else ""
        )
        lines.append(
            f"Place the weights file named exactly {name!r}{source} at {target}, or put it in "
            f"another folder and set the environment variable {MODELS_ENV} to that folder "
            f"({env_state}), or pass pretrained_model='/full/path/to/{name}'."
        )
    else:
        lines.append(
            f"Place the weights file at {target}, or pass pretrained_model=<name> to use a file "
            f"of that name in cellpose's model folder {models_dir()} (set by the environment "
            f"variable {MODELS_ENV}, {env_state})."
        )
    lines.append("scellst never downloads weights (nor lets cellpose try).")
    raise FileNotFoundError(" ".join(lines))


def cellpose_diameter_px(nucleus_diameter_um: float, microns_per_pixel: float) -> float:
    """Nucleus diameter in the tile's pixels, the ``diameter`` given to ``CellposeModel.eval``.

    Cellpose then resizes the tile by ``30 / diameter_px`` (e.g. 8 µm at 0.25 µm/px: 32 px,
    resized by 0.94; at 0.5 µm/px: 16 px, resized by 1.875).
    """
    if not (nucleus_diameter_um > 0 and microns_per_pixel > 0):
        raise ValueError(
            f"nucleus_diameter_um and microns_per_pixel must be > 0, got "
            f"{nucleus_diameter_um} and {microns_per_pixel}."
        )
    return float(nucleus_diameter_um) / float(microns_per_pixel)


def _plain(value: Any) -> Any:
    """A value writable to the table's ``uns`` (no None, numbers and strings as such)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: Tiles thinner than this are padded with glass before cellpose runs on them.
MIN_SIDE_PX = 16


class CellposeSegmenter:
    """Callable ``(rgb_tile, microns_per_pixel) -> labels`` running cellpose 4 on H&E tiles.

    Use it through ``sst.pp.segment(sdata, method="cellpose", params={...})`` (``params`` are
    this class' arguments) or pass an instance as ``method``.

    Parameters
    ----------
    pretrained_model
        Weights: a path to a weights file, or the name of a file in cellpose's model folder
        (``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``). Default ``"cpsam_v2"``
        (cellpose-SAM). The file must exist: it is checked here, nothing is downloaded.
    nucleus_diameter_um
        Typical nucleus diameter in µm; with the slide's µm/px it sets cellpose's ``diameter``
        in pixels, hence the rescaling to cellpose's 30-pixel objects.
    min_area_um2
        Smallest nucleus kept (cellpose's ``min_size``, converted to pixels per slide).
    batch_size
        256×256 patches per network pass (default 32 on GPU, 8 on CPU).
    device
        ``"cuda"``, ``"cpu"``, ``"mps"``, ``"cuda:1"``...; default: CUDA when
        ``torch.cuda.is_available()``, else CPU.
    use_bfloat16
        Network weights in bfloat16 (default: on GPU only; on CPU it is no faster).
    tissue_od
        Tiles with fewer pixels of optical density above this than the smallest nucleus are glass:
        they get no nuclei without running the network. ``None`` runs every tile.
    **eval_kwargs
        Other arguments of ``cellpose.models.CellposeModel.eval``, e.g. ``flow_threshold``,
        ``cellprob_threshold``, ``niter``, ``augment``, ``normalize``.

    Notes
    -----
    The network runs on one tile at a time (a lock; on CPU torch already uses every core, on a
    GPU one model serves all tiles), while reading tiles and tracing polygons run in parallel.
    Each tile is normalised by cellpose (1st–99th percentile per channel).

    Examples
    --------
    >>> seg = sst.pp.CellposeSegmenter("/models/cpsam_v2", device="cuda")  # a local file
    >>> sst.pp.segment(sdata, method=seg)
    >>> sst.pp.segment(sdata, method="cellpose", key_added="cp")  # $CELLPOSE_LOCAL_MODELS_PATH
    """

    name = "cellpose"

    def __init__(
        self,
        pretrained_model: str | os.PathLike | None = None,
        *,
        nucleus_diameter_um: float = 8.0,
        min_area_um2: float = 8.0,
        batch_size: int | None = None,
        device: str | None = None,
        use_bfloat16: bool | None = None,
        tissue_od: float | None = TISSUE_OD,
        **eval_kwargs: Any,
    ):
        # first, before importing cellpose (torch): fail fast on missing weights
        self.weights = resolve_weights(pretrained_model)
        cellpose_diameter_px(nucleus_diameter_um, 1.0)  # validates
        if min_area_um2 < 0:
            raise ValueError(f"min_area_um2 must be >= 0, got {min_area_um2}.")
        reserved = sorted(set(eval_kwargs) & _RESERVED)
        if reserved:
            raise TypeError(
                f"{reserved} are set by CellposeSegmenter (2D RGB tiles rescaled from "
                "nucleus_diameter_um and the slide's µm/px); use nucleus_diameter_um / "
                "batch_size instead."
            )
        if "min_size" in eval_kwargs:
            raise TypeError("Give the smallest nucleus as min_area_um2 (µm²), not min_size.")
        from cellpose.models import CellposeModel

        from .._torch import resolve_device  # torch is loaded with cellpose anyway

        valid = set(inspect.signature(CellposeModel.eval).parameters) - _RESERVED - {"self"}
        unknown = sorted(set(eval_kwargs) - valid)
        if unknown:
            raise TypeError(
                f"Unknown cellpose eval arguments {unknown}; valid ones are {sorted(valid)}."
            )
        self.nucleus_diameter_um = float(nucleus_diameter_um)
        self.min_area_um2 = float(min_area_um2)
        self.device = str(resolve_device(device))
        on_gpu = not self.device.startswith("cpu")
        self.batch_size = int(batch_size) if batch_size else (32 if on_gpu else 8)
        self.use_bfloat16 = on_gpu if use_bfloat16 is None else bool(use_bfloat16)
        self.tissue_od = tissue_od
        self.eval_kwargs = eval_kwargs
        self._model = None
        self._lock = threading.Lock()

    # -- hints for sst.pp.segment -------------------------------------------------------------

    @property
    def max_diameter_um(self) -> float:
        """Largest nucleus expected (3× the nominal diameter)."""
        return 3.0 * self.nucleus_diameter_um

    @property
    def margin_um(self) -> float:
        """Tile overlap: the largest nucleus plus one nucleus of context around it."""
        return self.max_diameter_um + self.nucleus_diameter_um

    @property
    def params(self) -> dict:
        """What ran, recorded in the cells table's ``uns["scellst"]["segmentation"]["params"]``."""
        try:
            cp_version = version("cellpose")
        except PackageNotFoundError:  # pragma: no cover
            cp_version = "unknown"
        return _plain(
            {
                "pretrained_model": str(self.weights),
                "nucleus_diameter_um": self.nucleus_diameter_um,
                "min_area_um2": self.min_area_um2,
                "batch_size": self.batch_size,
                "device": self.device,
                "use_bfloat16": self.use_bfloat16,
                "tissue_od": self.tissue_od,
                "cellpose_version": cp_version,
                **self.eval_kwargs,
            }
        )

    # -- running ------------------------------------------------------------------------------

    @property
    def model(self):
        """The ``cellpose.models.CellposeModel`` (loaded on first use, once)."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self):
        import torch
        from cellpose.models import CellposeModel

        if not self.weights.is_file():  # removed since __init__: still never let cellpose fetch
            resolve_weights(self.weights)
        return CellposeModel(
            pretrained_model=str(self.weights),
            device=torch.device(self.device),
            use_bfloat16=self.use_bfloat16,
        )

    def eval_args(self, microns_per_pixel: float) -> dict:
        """Keyword arguments of ``CellposeModel.eval`` for a tile at this scale."""
        return {
            "batch_size": self.batch_size,
            "channel_axis": -1,
            "diameter": cellpose_diameter_px(self.nucleus_diameter_um, microns_per_pixel),
            "min_size": int(round(self.min_area_um2 / microns_per_pixel**2)),
            **self.eval_kwargs,
        }

    def is_glass(self, rgb: np.ndarray, microns_per_pixel: float) -> bool:
        """Whether a tile has fewer tissue pixels than the smallest nucleus (nothing to find)."""
        if self.tissue_od is None:
            return False
        n_tissue = int((total_od(rgb) > self.tissue_od).sum())
        return n_tissue < max(1.0, self.min_area_um2 / microns_per_pixel**2)

    def __call__(self, rgb: np.ndarray, microns_per_pixel: float) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise ValueError(f"Expected an RGB tile of shape (y, x, 3), got {rgb.shape}.")
        rgb = np.ascontiguousarray(rgb[..., :3])
        shape = rgb.shape[:2]
        if min(shape) == 0 or self.is_glass(rgb, microns_per_pixel):
            return np.zeros(shape, np.int32)
        args = self.eval_args(microns_per_pixel)
        model = self.model
        # a sliver of a tile (at a slide's edge) is padded with glass: cellpose divides by the
        # side length minus one when it normalises its flows
        pad = [(0, max(0, MIN_SIDE_PX - n)) for n in shape]
        if any(after for _, after in pad):
            rgb = np.pad(rgb, [*pad, (0, 0)], constant_values=255)
        with self._lock:
            masks = model.eval(rgb, **args)[0]
        masks = np.asarray(masks)
        if masks.size == 0:  # pragma: no cover - compute_masks=False is reserved
            return np.zeros(shape, np.int32)
        # cellpose squeezes its output: a tile one pixel wide comes back 1-D
        masks = masks.reshape(rgb.shape[:2])[: shape[0], : shape[1]]
        return np.ascontiguousarray(masks, dtype=np.int32)

    def __repr__(self) -> str:
        return (
            f"CellposeSegmenter({str(self.weights)!r}, nucleus_diameter_um="
            f"{self.nucleus_diameter_um}, device={self.device!r})"
        )
