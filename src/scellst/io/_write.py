"""Writing a SpatialData object to a zarr store: compact images, nothing clobbered or half-written.

The store is written beside its destination (``.NAME.writing-*``) and moved into place only when
complete, so a write that fails part-way (a full disk, an interrupt, an element that cannot be
stored) leaves any earlier store at ``path`` as it was and nothing that reads back as complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from spatialdata import SpatialData
from zarr.codecs import BloscCodec

from .._sdata import image_levels
from ..constants import UNS_KEY
from ._codecs import JPEG_QUALITY, JpegCodec

#: ``image_codec`` values: RGB images as JPEG chunks (default), or every array lossless (zstd).
IMAGE_CODECS = ("jpeg", "lossless")
#: Default mantissa bits kept in the float arrays of the tables scellst computed (of float32's
#: 23): a relative error of at most 2**-13 (about 1.22e-4), far below any model's error.
TABLE_BITS = 12


def write_zarr(
    sdata: SpatialData,
    path: str | Path,
    *,
    overwrite: bool = False,
    image_codec: str = "jpeg",
    table_bits: int | None = TABLE_BITS,
) -> None:
    """Write ``sdata`` to the zarr store ``path``.

    The store is first written beside ``path`` and then moved into place: a write that fails
    part-way leaves an existing store at ``path`` untouched (also with ``overwrite=True``) and
    no partial store behind.

    Parameters
    ----------
    sdata
        The SpatialData object (lazy images are streamed chunk by chunk).
    path
        Destination ``.zarr`` directory.
    overwrite
        Replace an existing store (once the new one is complete); without it an existing path
        raises ``FileExistsError``.
    image_codec
        How RGB uint8 images are stored. ``"jpeg"`` (default): every chunk of every pyramid
        level as a JPEG of quality 90, visually lossless on H&E and 5-10x smaller than
        ``"lossless"``, which stores every pixel exactly (zstd, spatialdata's default). Labels,
        shapes, points and other images are always stored exactly (tables: ``table_bits``). A JPEG store is read by
        :func:`spatialdata.read_zarr` wherever scellst is installed (the codec ``scellst_jpeg`` is
        registered with zarr through an entry point).
    table_bits
        Mantissa bits kept (of float32's 23) in the float32 arrays (``X``, layers, ``obsm``) of
        the tables scellst computed (embeddings, predicted expression and its spread: those
        whose ``uns["scellst"]`` holds ``"embedding"`` or ``"prediction"``), stored with
        bitshuffle + zstd. The default 12 bounds the relative error by 2**-13 (about 1.22e-4;
        3-4 significant digits, far below any model's error) and makes these tables 2-3x
        smaller. ``None``: exact. Other tables (the measured spots, cell measurements) are
        always exact, and the values stay float32 for every reader.

    Returns
    -------
    None
        Read the store back with :func:`spatialdata.read_zarr`.

    Raises
    ------
    ValueError
        If ``sdata`` has no element (nothing to write) or ``image_codec`` is unknown.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> sst.io.write_zarr(sdata, "result.zarr")
    >>> sst.io.write_zarr(sdata, "exact.zarr", image_codec="lossless")
    >>> import spatialdata as sd
    >>> sdata = sd.read_zarr("result.zarr")
    """
    if image_codec not in IMAGE_CODECS:
        raise ValueError(
            f"image_codec={image_codec!r} is not one of {', '.join(map(repr, IMAGE_CODECS))}."
        )
    if not any(True for _ in sdata.gen_elements()):
        raise ValueError(
            "The SpatialData object has no element (no image, labels, points, shapes or table): "
            "there is nothing to write. Add elements first (e.g. sst.io.read_image(...))."
        )
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    if table_bits is not None and not (
        isinstance(table_bits, int) and not isinstance(table_bits, bool) and 1 <= table_bits <= 23
    ):
        raise ValueError(f"table_bits must be None (exact) or an integer 1-23, got {table_bits!r}.")
    with written_aside(path) as tmp:
        write_store(sdata, tmp, image_codec=image_codec, table_bits=table_bits)


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write a store into; on success it replaces ``path``
    (an existing store is removed only then), on failure it is removed and ``path`` is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.writing-", dir=path.parent))
    tmp.rmdir()  # the store is created by the writer
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(new: Path, path: Path) -> None:
    """Move the directory ``new`` to ``path``, replacing what is there only once ``new`` is in
    place (two renames in the same folder)."""
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_store(
    sdata: SpatialData,
    path: Path,
    *,
    image_codec: str = "jpeg",
    table_bits: int | None = TABLE_BITS,
) -> None:
    """Write ``sdata`` as a new store at ``path`` (no swap), RGB images with ``image_codec``,
    the tables scellst computed with ``table_bits`` mantissa bits."""
    jpeg = _jpeg_images(sdata) if image_codec == "jpeg" else {}
    if jpeg:  # written as zeros (zarr skips chunks equal to the fill value), then re-encoded
        sdata = SpatialData(
            images={k: _zeros_like(v) if k in jpeg else v for k, v in sdata.images.items()},
            labels=dict(sdata.labels),
            points=dict(sdata.points),
            shapes=dict(sdata.shapes),
            tables=dict(sdata.tables),
            attrs=dict(sdata.attrs),
        )
    with quiet_zarr():
        sdata.write(path, update_sdata_path=False)
        for key, levels in jpeg.items():
            _store_jpeg(path / "images" / key, levels)
        compact = [] if table_bits is None else computed_tables(sdata)
        for key in compact:
            _store_compact(path / "tables" / key, sdata.tables[key], table_bits)
        if jpeg or compact:
            zarr.consolidate_metadata(str(path))


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's notices on every array written and on consolidated metadata (a future
    default, parquet files in the hierarchy: not actionable here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
        yield


def _jpeg_images(sdata: SpatialData) -> dict[str, list[da.Array]]:
    """The (c, y, x) uint8 RGB images of ``sdata``, as their levels (finest first)."""
    out = {}
    for key in sdata.images:
        levels = image_levels(sdata, key)
        first = levels[0]
        if first.dims == ("c", "y", "x") and first.shape[0] == 3 and first.dtype == "uint8":
            out[key] = [lv.data for lv in levels]
    return out


def _zeros_like(element: xr.DataArray | xr.DataTree) -> xr.DataArray | xr.DataTree:
    def blank(arr: xr.DataArray) -> xr.DataArray:
        return arr.copy(data=da.zeros(arr.shape, dtype=arr.dtype, chunks=arr.data.chunks))

    if isinstance(element, xr.DataArray):
        return blank(element)
    return element.map_over_datasets(lambda ds: ds.map(blank, keep_attrs=True))


def _store_jpeg(group_path: Path, levels: list[da.Array]) -> None:
    """Replace the arrays ``s0, s1, ...`` of an image group by JPEG-coded ones of ``levels``."""
    group = zarr.open_group(str(group_path), mode="r+")
    for i, level in enumerate(levels):
        old = group[f"s{i}"]
        assert isinstance(old, zarr.Array) and old.shape == level.shape
        chunks, attrs = (3, *old.chunks[1:]), dict(old.attrs)  # one JPEG per (y, x) tile
        names = old.metadata.dimension_names
        new = group.create_array(
            f"s{i}",
            shape=old.shape,
            dtype=old.dtype,
            chunks=chunks,
            serializer=JpegCodec(level=JPEG_QUALITY),
            compressors=None,
            fill_value=0,
            dimension_names=names,
            attributes=attrs,
            overwrite=True,
        )
        da.store(level.rechunk(chunks), new, lock=False)


#: ``uns["scellst"]`` entries that mark a table as computed by scellst (compacted on write).
COMPUTED_MARKS = ("embedding", "prediction")


def computed_tables(sdata: SpatialData) -> list[str]:
    """Keys of the tables scellst computed: embeddings and predictions."""
    out = []
    for key, table in sdata.tables.items():
        info = table.uns.get(UNS_KEY)
        if isinstance(info, dict) and any(m in info for m in COMPUTED_MARKS):
            out.append(key)
    return out


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``values`` rounded to ``bits`` mantissa bits (round half up on the magnitude;
    the dropped bits become zeros, which bitshuffle + zstd store in almost no room). Non-finite
    values and values that would round past the largest float32 are kept as they are."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    drop = 23 - bits
    if drop <= 0:
        return x
    u = x.view(np.uint32)
    rounded = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF >> drop) << drop)
    out = rounded.view(np.float32)
    keep = ~np.isfinite(x) | ~np.isfinite(out)
    return np.where(keep, x, out)


def _float32_arrays(table) -> list[tuple[str | None, str, np.ndarray]]:
    """``(mapping, name, array)`` of an AnnData's dense float32 ``X`` (mapping None), layers and
    ``obsm``: the arrays :func:`write_store` rounds (named as anndata's zarr groups)."""
    out: list[tuple[str | None, str, np.ndarray]] = []
    if isinstance(table.X, np.ndarray) and table.X.dtype == np.float32:
        out.append((None, "X", table.X))
    for mapping in ("layers", "obsm"):
        for name, value in getattr(table, mapping).items():
            if isinstance(value, np.ndarray) and value.dtype == np.float32:
                out.append((mapping, name, value))
    return out


def round_table(table, bits: int) -> None:
    """Round the arrays of ``table`` in place as :func:`write_store` stores them (so work that
    continues in memory after a write sees the values a later read of the store gives)."""
    for mapping, name, value in _float32_arrays(table):
        if mapping is None:
            table.X = round_mantissa(value, bits)
        else:
            getattr(table, mapping)[name] = round_mantissa(value, bits)


def _store_compact(group_path: Path, table, bits: int) -> None:
    """Re-store the float32 arrays of the AnnData group of ``table`` (just written by anndata,
    whose chunks and attributes are kept) from memory with ``bits`` mantissa bits, bitshuffled
    and zstd-compressed."""
    group = zarr.open_group(str(group_path), mode="r+")
    for mapping, name, value in _float32_arrays(table):
        parent = group if mapping is None else group[mapping]
        old = parent[name]
        parent.create_array(
            name,
            shape=old.shape,
            dtype=np.float32,
            chunks=old.chunks,
            compressors=BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=4),
            fill_value=0.0,
            dimension_names=old.metadata.dimension_names,
            attributes=dict(old.attrs),
            overwrite=True,
        )[...] = round_mantissa(value, bits)
