"""A JPEG serializer for the RGB image arrays of a zarr v3 store (compact output stores).

An H&E image stored losslessly takes 5-10x the room of its (JPEG-compressed) slide file. Its
pyramid is therefore written by default with :class:`JpegCodec`, a zarr v3 array-to-bytes codec
that encodes each ``(3, y, x)`` uint8 chunk as one baseline JPEG (imagecodecs' libjpeg-turbo).

zarr finds the codec by its name ``"scellst_jpeg"``: scellst registers it on import and declares
it as a ``zarr.codecs`` entry point (``pyproject.toml``), so a plain
:func:`spatialdata.read_zarr` (or :func:`zarr.open`) reads such a store in any environment where
scellst is installed, without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

#: Name of the codec in the arrays' zarr.json (and of its entry point).
JPEG_CODEC_NAME = "scellst_jpeg"
#: Default JPEG quality (libjpeg scale, 1-100): visually lossless on H&E.
JPEG_QUALITY = 90


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Each ``(3, y, x)`` uint8 chunk of an RGB image as a JPEG of quality ``level``."""

    is_fixed_size = False

    level: int

    def __init__(self, *, level: int = JPEG_QUALITY) -> None:
        level = int(level)
        if not 1 <= level <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {level}.")
        object.__setattr__(self, "level", level)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, configuration = parse_named_configuration(
            data, JPEG_CODEC_NAME, require_configuration=False
        )
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC_NAME, "configuration": {"level": self.level}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if native != np.uint8 or len(shape) != 3 or shape[0] != 3:
            raise ValueError(
                f"{JPEG_CODEC_NAME} stores (3, y, x) uint8 RGB images only, not shape {shape} "
                f"{native}."
            )

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        yxc = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes())
        cyx = np.ascontiguousarray(np.moveaxis(yxc, -1, 0)).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(cyx)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        cyx = np.asarray(chunk_array.as_numpy_array())
        yxc = np.ascontiguousarray(np.moveaxis(cyx, 0, -1))
        encoded = imagecodecs.jpeg8_encode(yxc, level=self.level)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG chunks have no fixed encoded size.")


register_codec(JPEG_CODEC_NAME, JpegCodec)
