"""The learned nucleus segmenter: shipped weights, tile inference, save/load, fine-tuning.

:class:`NucleusSegmenter` is a segmenter like the watershed (a callable ``(rgb tile, µm/px) ->
labels`` run by :func:`scellst.pp.segment` with the same tiling and stitching). It resamples each
tile to its working resolution (default 0.5 µm/px), runs :class:`~.nucleus_net.NucleusNet` in
overlapping windows and turns the class probabilities into instances.

The weights that ship in the package (``weights/nucleus_net/``) were trained by
``python benchmarks/train_nucleus_net.py`` from the ImageNet EfficientNet-Lite0 encoder
(Apache-2.0) on the DSB2018 H&E crops (CC0), self-trained on unannotated her2st and CMU H&E;
see ``NOTICE``. :func:`train_segmenter` fine-tunes them (or starts from ImageNet) on a user's
own annotations, and can self-train on a user's own unannotated slides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .resize import resample, resize_labels
from .stains import TISSUE_OD
from .watershed import ALIGN, WatershedParams, tissue_mask

if TYPE_CHECKING:
    from spatialdata import SpatialData

log = logging.getLogger(__name__)

#: The weights shipped inside the package (a state dict and its settings).
SHIPPED = Path(__file__).parent / "weights" / "nucleus_net"
_WEIGHTS, _CONFIG = "weights.pt", "config.json"
_IN_MEMORY = "<in memory: not saved>"


class NucleusSegmenter:
    """Learned nucleus segmentation of H&E (``sst.pp.segment(sdata, method="learned")``).

    Parameters
    ----------
    path
        A directory written by :meth:`save` (or :func:`scellst.pp.train_segmenter`'s model).
        Default: the weights shipped with scellst, trained on DSB2018 H&E (CC0).
    min_area_um2, max_area_um2
        Nuclei outside this area range are dropped (defaults: the watershed's).
    tissue_od
        Tiles (and the parts of a tile) without tissue above this optical density are skipped.
    device
        ``"cpu"``, ``"cuda"``, ... Default: CUDA when available.
    window
        Largest side, in working pixels, of the windows the network is run on (memory per
        window). Default: :data:`~.nucleus_net.WINDOW`.
    precision
        ``"bfloat16"`` runs the network's convolutions in bfloat16 (2.1x faster on a CPU with
        AMX, the same MoNuSeg scores to 0.001), ``"float32"`` not. Default ``"auto"``:
        bfloat16 where the device computes it natively (CUDA; CPUs with AMX or AVX-512 BF16),
        where elsewhere it would be emulated and slower.

    Examples
    --------
    >>> sst.pp.segment(sdata, method="learned")
    >>> seg = sst.pp.NucleusSegmenter("my_segmenter/")  # fine-tuned by sst.pp.train_segmenter
    >>> sst.pp.segment(sdata, method=seg)
    """

    name = "learned"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        min_area_um2: float = WatershedParams.min_area_um2,
        max_area_um2: float = WatershedParams.max_area_um2,
        tissue_od: float = TISSUE_OD,
        device: str | None = None,
        window: int | None = None,
        precision: str = "auto",
    ):
        import torch

        from .._torch import resolve_device

        path = SHIPPED if path is None else Path(path)
        weights, config = path / _WEIGHTS, path / _CONFIG
        if not weights.is_file() or not config.is_file():
            where = "the shipped weights are missing: reinstall scellst" if path == SHIPPED else (
                "write one with NucleusSegmenter.save or sst.pp.train_segmenter"
            )  # fmt: skip
            raise FileNotFoundError(f"{path} holds no {_WEIGHTS} and {_CONFIG}: {where}.")
        cfg = json.loads(config.read_text())
        net = _network(cfg)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self._setup(net, cfg, path, resolve_device(device), precision, window)
        self.min_area_um2, self.max_area_um2 = float(min_area_um2), float(max_area_um2)
        self.tissue_od = float(tissue_od)

    def _setup(
        self, net, config: dict, path: Path, device, precision: str = "auto", window=None
    ) -> None:
        from .nucleus_net import WINDOW, native_bfloat16

        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}."
            )
        if precision == "auto":
            precision = "bfloat16" if native_bfloat16(device) else "float32"
        self.config, self.path, self.device, self.precision = config, path, device, precision
        self.window = int(window or WINDOW)
        self.net = net.to(device).eval()
        self.work_mpp = float(config["work_mpp"])
        self.sha256 = state_sha256(net.state_dict())
        # on the CPU the tiles run in threads, each single-threaded; a GPU takes one at a time
        self._lock = threading.Lock() if device.type != "cpu" else None

    @classmethod
    def _in_memory(cls, net, config: dict, device) -> NucleusSegmenter:
        """A segmenter around a network just trained (not saved yet), with the defaults."""
        model = cls.__new__(cls)
        model._setup(net, config, Path(_IN_MEMORY), device)
        model.min_area_um2 = WatershedParams.min_area_um2
        model.max_area_um2 = WatershedParams.max_area_um2
        model.tissue_od = TISSUE_OD
        return model

    @property
    def max_diameter_um(self) -> float:
        return float(2.0 * np.sqrt(self.max_area_um2 / np.pi))

    @property
    def margin_um(self) -> float:
        """Tile overlap: the largest nucleus plus the network's context."""
        return self.max_diameter_um + 16.0

    @property
    def params(self) -> dict:
        """Settings recorded in the cells table's provenance."""
        return {
            "weights": str(self.path) if self.path != SHIPPED else "shipped:" + SHIPPED.name,
            "weights_sha256": self.sha256,
            "work_mpp": self.work_mpp,
            "min_area_um2": self.min_area_um2,
            "max_area_um2": self.max_area_um2,
            "tissue_od": self.tissue_od,
            "precision": self.precision,
            "trained_on": self.config.get("trained_on"),
        }

    def probabilities(
        self, rgb: np.ndarray, microns_per_pixel: float, tissue: np.ndarray | None = None
    ) -> np.ndarray:
        """Class probabilities (background, interior, boundary) of an RGB image, at the
        working resolution; windows without ``tissue`` (a mask of ``rgb``) are not run."""
        from .nucleus_net import probabilities

        f = microns_per_pixel / self.work_mpp
        small = resample(np.ascontiguousarray(rgb[..., :3]), f)
        if tissue is not None:
            tissue = resize_labels(tissue.astype(np.uint8), small.shape[:2]).astype(bool)
        kw = dict(window=self.window, device=self.device, mask=tissue, precision=self.precision)
        if self._lock is None:
            return probabilities(self.net, small, **kw)
        with self._lock:
            return probabilities(self.net, small, **kw)

    def __call__(self, rgb: np.ndarray, microns_per_pixel: float) -> np.ndarray:
        from .nucleus_net import instances

        mpp = float(microns_per_pixel)
        labels = np.zeros(rgb.shape[:2], np.int32)
        tissue = tissue_mask(rgb, mpp, self.tissue_od, WatershedParams.tissue_smooth_um)
        rows, cols = np.flatnonzero(tissue.any(1)), np.flatnonzero(tissue.any(0))
        if rows.size == 0:  # glass: nothing to segment
            return labels
        pad = int(np.ceil(self.margin_um / mpp))
        y0 = max(rows[0] - pad, 0) // ALIGN * ALIGN
        x0 = max(cols[0] - pad, 0) // ALIGN * ALIGN
        y1, x1 = min(rows[-1] + pad + 1, rgb.shape[0]), min(cols[-1] + pad + 1, rgb.shape[1])
        part = rgb[y0:y1, x0:x1]
        area_px = self.work_mpp**2
        found = instances(
            self.probabilities(part, mpp, tissue[y0:y1, x0:x1]),
            self.min_area_um2 / area_px,
            self.max_area_um2 / area_px,
        )
        back = resize_labels(found, part.shape[:2])
        labels[y0:y1, x0:x1] = back
        return labels

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the weights (``weights.pt``, a plain state dict) and ``config.json`` to a
        directory; :class:`NucleusSegmenter` ``(path)`` reads them back."""
        import torch

        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} is not empty; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, path / _WEIGHTS)
        (path / _CONFIG).write_text(json.dumps(self.config, indent=1))
        if str(self.path) == _IN_MEMORY:  # provenance now names where it lives
            self.path = path

    def __repr__(self) -> str:
        return f"NucleusSegmenter({self.params['weights']!r}, work_mpp={self.work_mpp})"


def _network(config: dict):
    """The network a config describes (folders written before the full-resolution branch have
    no ``fine_width``: 0)."""
    from .nucleus_net import NucleusNet

    return NucleusNet(int(config.get("decoder_width", 32)), int(config.get("fine_width", 0)))


def state_sha256(state: dict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (not of a file's bytes, which
    also depend on how it was written)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def train_segmenter(
    images: Sequence[np.ndarray | str | Path],
    labels: Sequence[np.ndarray | str | Path],
    microns_per_pixel: float | Sequence[float],
    *,
    base: str | Path | NucleusSegmenter | None = "shipped",
    unlabeled: Sequence[SpatialData | np.ndarray] | None = None,
    unlabeled_microns_per_pixel: float | Sequence[float] | None = None,
    teacher: str | Path | NucleusSegmenter | None = None,
    patches_per_slide: int = 90,
    steps: int = 1000,
    batch_size: int = 8,
    patch_px: int = 160,
    learning_rate: float | None = None,
    work_mpp: float = 0.5,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> NucleusSegmenter:
    """Train the learned nucleus segmenter on annotated H&E images, optionally self-training
    on unannotated slides.

    Parameters
    ----------
    images
        RGB images: arrays ``(y, x, 3)`` or image files (TIFF, PNG, JPEG).
    labels
        One per image: an instance label image (array or TIFF/PNG file; 0 = background, one
        integer per nucleus) or a GeoJSON file of nucleus polygons in the image's pixel
        coordinates (e.g. a QuPath export).
    microns_per_pixel
        The images' scale, one value or one per image. The model works at ``work_mpp``.
    base
        Where training starts: ``"shipped"`` (the weights shipped with scellst), a
        :class:`NucleusSegmenter` or a directory it was saved to, or ``None`` for the ImageNet
        EfficientNet-Lite0 encoder (needs ``pip install 'scellst[lite0]'``).
    unlabeled
        Unannotated H&E slides (``SpatialData`` objects with one H&E image, or ``(y, x, 3)``
        arrays). Their eosin (cytoplasm, stroma) is painted into half of the annotated patches
        and, when there is a teacher, ``patches_per_slide`` patches of each are labelled where
        the watershed and the teacher agree and make half of every batch (see
        :mod:`scellst.segmentation.self_training`). Your own slides adapt the model to your
        stain and scanner without any annotation.
    unlabeled_microns_per_pixel
        The scale of array slides (one value or one per slide); ``SpatialData`` slides carry
        their own.
    teacher
        The network that labels ``unlabeled`` (same forms as ``base``). Default: ``base`` when
        that is a trained model; with ``base=None`` and no teacher, ``unlabeled`` only lends
        its eosin.
    patches_per_slide
        Pseudo-labelled patches drawn from each unannotated slide.
    steps, batch_size, patch_px
        Optimisation length, patches per step, patch side in working pixels.
    learning_rate
        Default: 1e-3 from ImageNet, 3e-4 when fine-tuning trained weights.
    work_mpp
        Working resolution of a model trained from ImageNet (a fine-tuned one keeps its base's).
    seed
        Random seed (patch sampling, augmentation, decoder initialisation).
    device
        Default: CUDA when available, else the CPU.
    progress
        Show progress bars.

    Returns
    -------
    NucleusSegmenter
        The trained model; :meth:`~NucleusSegmenter.save` it, then
        ``sst.pp.segment(sdata, method=model)``.

    Examples
    --------
    >>> model = sst.pp.train_segmenter(["tile1.tif"], ["tile1_labels.tif"], 0.25, steps=500)
    >>> model.save("my_segmenter")
    >>> sst.pp.segment(sdata, method=sst.pp.NucleusSegmenter("my_segmenter"))

    Adapt the shipped model to your own slides, with the same annotations:

    >>> model = sst.pp.train_segmenter(["tile1.tif"], ["tile1_labels.tif"], 0.25,
    ...                                unlabeled=[sdata1, sdata2], steps=2000)
    """
    import torch

    from .._torch import resolve_device
    from .nucleus_net import NucleusNet, load_imagenet_encoder
    from .nucleus_training import TrainingSettings, prepare, train_nucleus_net

    images, labels = list(images), list(labels)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"train_segmenter needs one label image per image; got {len(images)} images and "
            f"{len(labels)} label images."
        )
    mpps = np.broadcast_to(np.asarray(microns_per_pixel, float), (len(images),))
    if not np.all(np.isfinite(mpps) & (mpps > 0)):
        raise ValueError("microns_per_pixel must be positive (one value or one per image).")
    slides = _unlabeled_slides(unlabeled, unlabeled_microns_per_pixel)
    dev = resolve_device(device)
    if base is None:
        from .._bundled import bundled_weights_path

        net = NucleusNet()
        imagenet = bundled_weights_path("efficientnet_lite0")  # checked against its SHA-256
        load_imagenet_encoder(net, torch.load(imagenet, map_location="cpu", weights_only=True))
        config = {
            "work_mpp": float(work_mpp),
            "decoder_width": 32,
            "fine_width": net.fine_width,
            "base": "imagenet-lite0",
        }
        lr = 1e-3
    else:
        start = _as_segmenter(base, dev)
        net = _network(start.config)
        net.load_state_dict(start.net.state_dict())
        arch = ("work_mpp", "decoder_width", "fine_width", "backbone")  # not its training record
        config = {k: start.config[k] for k in arch if k in start.config}
        config.update(base=start.params["weights"], base_sha256=start.sha256)
        lr = 3e-4
    data, n_nuclei = [], 0
    for img, lab, mpp in zip(images, labels, mpps, strict=True):
        rgb = _read_rgb(img)
        lab = _read_labels(lab, rgb.shape[:2])
        n_nuclei += int(len(np.unique(lab)) - 1)
        data.append(prepare(rgb, lab, float(mpp), config["work_mpp"]))
    if n_nuclei == 0:
        raise ValueError("The label images hold no nuclei (all 0): nothing to learn from.")
    textures = None
    if slides:
        from .self_training import eosin_textures

        textures = eosin_textures(slides, config["work_mpp"], seed=seed)
        config["eosin_textures"] = len(textures)
    if slides and (teacher is not None or base is not None):
        from .self_training import PseudoLabelSettings, pseudo_labelled

        judge = start if teacher is None else _as_segmenter(teacher, dev)
        if judge.work_mpp != config["work_mpp"]:
            raise ValueError(
                f"The teacher works at {judge.work_mpp} µm/px and the model at "
                f"{config['work_mpp']}: pass a teacher trained at {config['work_mpp']} µm/px, "
                f"or base=None with work_mpp={judge.work_mpp}."
            )
        pseudo = pseudo_labelled(
            slides,
            judge,
            PseudoLabelSettings(patches_per_image=int(patches_per_slide)),
            seed=seed,
            progress=progress,
        )
        config["self_training"] = {
            "teacher": judge.params["weights"],
            "teacher_sha256": judge.sha256,
            "n_slides": len(slides),
            "n_patches": len(pseudo),
        }
        data += pseudo
    settings = TrainingSettings(
        steps=int(steps),
        batch_size=int(batch_size),
        patch_px=int(patch_px),
        learning_rate=float(learning_rate or lr),
        seed=int(seed),
    )
    torch.manual_seed(seed)
    record = train_nucleus_net(
        net, data, settings, textures=textures, device=dev, progress=progress
    )
    config["training"] = {**record, "n_images": len(images), "n_nuclei": n_nuclei,
                          **{k: v for k, v in vars(settings).items() if k != "steps"}}  # fmt: skip
    config["trained_on"] = "user annotations"  # what it started from is in "base"
    return NucleusSegmenter._in_memory(net, config, dev)


def _as_segmenter(model, device=None) -> NucleusSegmenter:
    """A NucleusSegmenter from ``"shipped"``, a saved directory or a NucleusSegmenter."""
    if isinstance(model, NucleusSegmenter):
        return model
    return NucleusSegmenter(None if model == "shipped" else model, device=device or "cpu")


def _unlabeled_slides(unlabeled, microns_per_pixel) -> list:
    """Readers of the unannotated slides (see :data:`.self_training.Slide`)."""
    from spatialdata import SpatialData

    from .._sdata import image_key, image_level0, read_rgb
    from .self_training import array_slide

    slides = list(unlabeled or [])
    arrays = [i for i, sl in enumerate(slides) if not isinstance(sl, SpatialData)]
    if arrays and microns_per_pixel is None:
        raise ValueError(
            "unlabeled arrays need unlabeled_microns_per_pixel (one value or one per slide)."
        )
    mpps = np.broadcast_to(np.asarray(microns_per_pixel or 0.0, float), (len(slides),))
    out = []
    for sl, mpp in zip(slides, mpps, strict=True):
        if isinstance(sl, SpatialData):
            from ..io import microns_per_pixel as scale_of

            key = image_key(sl)
            img = image_level0(sl, key)
            shape = (int(img.sizes["y"]), int(img.sizes["x"]))
            out.append((lambda y0, y1, x0, x1, img=img: read_rgb(img, y0, y1, x0, x1), shape,
                        scale_of(sl, key)))  # fmt: skip
        else:
            if not (np.isfinite(mpp) and mpp > 0):
                raise ValueError("unlabeled_microns_per_pixel must be positive.")
            out.append(array_slide(_read_rgb(sl), float(mpp)))
    return out


def _read_rgb(img) -> np.ndarray:
    from .._sdata import to_rgb_uint8

    if isinstance(img, (str, Path)):
        img = _read_array(Path(img))
    return to_rgb_uint8(np.asarray(img))


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import cv2

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError(f"{path}: not an image OpenCV can read (use TIFF or PNG).")
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB) if a.ndim == 3 else a


def _read_labels(lab, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(lab, (str, Path)) and Path(lab).suffix.lower() in (".geojson", ".json"):
        return _rasterize_geojson(Path(lab), shape)
    a = _read_array(Path(lab)) if isinstance(lab, (str, Path)) else np.asarray(lab)
    if a.ndim != 2 or a.shape != tuple(shape):
        raise ValueError(
            f"A label image must be 2-D with its image's shape {tuple(shape)}; got {a.shape}."
        )
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"Label images hold integers (0 = background); got {a.dtype}.")
    return a.astype(np.int32)


def _rasterize_geojson(path: Path, shape: tuple[int, int]) -> np.ndarray:
    import geopandas as gpd

    from .rasterize import burn_polygons

    shapes = gpd.read_file(path)
    polys = shapes.geometry[shapes.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if len(polys) == 0:
        raise ValueError(f"{path} holds no polygons.")
    return burn_polygons(np.asarray(polys), shape)
