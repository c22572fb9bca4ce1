"""The encoder interface: anything that turns a batch of cell crops into feature vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from ._crops import CropBatch


@runtime_checkable
class Encoder(Protocol):
    """An encoder maps a :class:`~scellst.tl.CropBatch` to an ``(n, dim)`` float array.

    ``prepare`` (optional) sees the whole cells table first, for features that need every cell
    at once (e.g. neighbourhood statistics). ``provenance`` is stored in the table's ``uns``.
    """

    name: str

    def feature_names(self) -> list[str]:
        """Names of the output features, in column order."""
        ...

    def encode(self, batch: CropBatch) -> np.ndarray:
        """Features of the cells of ``batch``, shape ``(len(batch.index), dim)``."""
        ...


class CallableEncoder:
    """Wrap ``f(crops: (n, S, S, 3) uint8) -> (n, d)`` as an encoder."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self._dim: int | None = None

    def feature_names(self) -> list[str]:
        return [f"{self.name}_{i}" for i in range(self._dim or 0)]

    def encode(self, batch: CropBatch) -> np.ndarray:
        out = np.asarray(self.fn(batch.images), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(batch.index):
            raise ValueError(
                f"Encoder {self.name!r} returned shape {out.shape} for {len(batch.index)} crops; "
                "it must return one feature vector per crop, shape (n_crops, dim)."
            )
        self._dim = out.shape[1]
        return out


def resolve_encoder(encoder) -> Encoder:
    from ._morphology import MorphologyEncoder

    if isinstance(encoder, str):
        if encoder == "morphology":
            return MorphologyEncoder()
        raise ValueError(
            f"Unknown encoder {encoder!r}. Available: 'morphology' (handcrafted, weight-free), "
            "an Encoder object, or a callable f(crops) -> features."
        )
    if isinstance(encoder, Encoder):
        return encoder
    if callable(encoder):
        return CallableEncoder(encoder)
    raise TypeError(
        f"`encoder` must be a name, an Encoder or a callable, got {type(encoder).__name__}."
    )
