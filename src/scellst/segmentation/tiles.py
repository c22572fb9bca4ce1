"""Cut an image into overlapping tiles, and run a function on each with bounded memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

T = TypeVar("T")


@dataclass(frozen=True)
class Tile:
    """A tile: its ``core`` partitions the image, its extended window adds ``margin`` around it.

    An object is owned by the one tile whose core contains its centroid; the margin (larger than
    the largest object) makes sure such an object lies whole inside the extended window.
    """

    y0: int
    y1: int
    x0: int
    x1: int  # core, half-open
    wy0: int
    wy1: int
    wx0: int
    wx1: int  # extended window, clipped to the image

    def owns(self, y, x):
        """Boolean mask: which points (image pixel coordinates) fall in this tile's core."""
        return (y >= self.y0) & (y < self.y1) & (x >= self.x0) & (x < self.x1)


def tile_grid(shape_yx: tuple[int, int], tile_size: int, margin: int) -> list[Tile]:
    if tile_size <= 0 or margin < 0:
        raise ValueError(f"tile_size must be > 0 and margin >= 0, got {tile_size}, {margin}.")
    h, w = shape_yx
    tiles = []
    for y0 in range(0, h, tile_size):
        for x0 in range(0, w, tile_size):
            y1, x1 = min(y0 + tile_size, h), min(x0 + tile_size, w)
            tiles.append(
                Tile(
                    y0, y1, x0, x1,
                    max(0, y0 - margin), min(h, y1 + margin),
                    max(0, x0 - margin), min(w, x1 + margin),
                )
            )  # fmt: skip
    return tiles


def active_client():
    """The active dask.distributed client, or None."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def map_tiles(
    fn: Callable[[Tile], T],
    tiles: list[Tile],
    *,
    n_jobs: int | None = None,
    desc: str = "tiles",
    progress: bool = True,
) -> Iterator[T]:
    """Apply ``fn`` to each tile and yield the results in order, with a progress bar.

    Locally the tiles run in threads (NumPy/OpenCV/scikit-image release the GIL); when a
    ``dask.distributed`` client is active they are submitted to its workers instead. Either way at
    most ``2 * workers`` tiles are in flight, so memory is bounded by the tile size.
    """
    client = active_client()
    if client is not None:
        limit = 2 * max(1, sum(client.nthreads().values()))
        bar = tqdm(
            total=len(tiles), desc=f"{desc} (dask.distributed)", disable=not progress, unit="tile"
        )
        with bar:
            yield from _bounded(lambda t: client.submit(fn, t, pure=False), tiles, limit, bar)
        return
    n_jobs = n_jobs or min(len(tiles), os.cpu_count() or 1) or 1
    bar = tqdm(total=len(tiles), desc=desc, disable=not progress, unit="tile")
    with bar:
        if n_jobs == 1:
            for t in tiles:
                yield fn(t)
                bar.update()
            return
        with ThreadPoolExecutor(n_jobs, initializer=_one_openmp_thread) as pool:
            yield from _bounded(lambda t: pool.submit(fn, t), tiles, 2 * n_jobs, bar)


def _one_openmp_thread() -> None:
    """Run a tile worker's OpenMP regions on one thread: the workers are the parallelism.

    OpenMP's thread count is a per-thread setting, so this leaves the caller's own (e.g. a
    torch encoder consuming the tiles in the main thread) untouched. BLAS limits are
    process-wide and are left alone: a global limit would also throttle the caller.
    """
    threadpool_limits(1, user_api="openmp")


def release_free_memory() -> None:
    """Give the allocator's free pages back to the system (glibc only; a no-op elsewhere).

    Building a tile's polygons frees many small temporaries between the nuclei that stay; glibc
    keeps those holes, so over thousands of tiles the process grows far beyond what it holds.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _bounded(submit, tiles, limit, bar):
    """Submit tiles keeping at most ``limit`` in flight; yield results in order."""
    pending: deque = deque()
    for t in tiles:
        pending.append(submit(t))
        if len(pending) >= limit:
            yield pending.popleft().result()
            bar.update()
    while pending:
        yield pending.popleft().result()
        bar.update()
