"""Writing a SpatialData object to a zarr store without clobbering anything."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from spatialdata import SpatialData


def write_zarr(sdata: SpatialData, path: str | Path, *, overwrite: bool = False) -> None:
    """Write ``sdata`` to the zarr store ``path``.

    Parameters
    ----------
    sdata
        The SpatialData object (lazy images are streamed chunk by chunk).
    path
        Destination ``.zarr`` directory.
    overwrite
        Replace an existing store; without it an existing path raises ``FileExistsError``.

    Returns
    -------
    None
        Read the store back with :func:`spatialdata.read_zarr`.

    Examples
    --------
    >>> sst.io.write_zarr(sdata, "result.zarr")
    >>> import spatialdata as sd
    >>> sdata = sd.read_zarr("result.zarr")
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
        shutil.rmtree(path)
    with warnings.catch_warnings():
        # spatialdata/zarr announce a future default on every array written; not actionable here
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        sdata.write(path)
