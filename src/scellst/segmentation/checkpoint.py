"""Per-tile results on disk, so an interrupted segmentation resumes without redoing tiles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import shapely

from .tiles import Tile

_META = "run.json"
#: Version of the tile files' contents: bumped when a tile records other measurements, so a
#: directory from an older version is refused instead of mixing tiles that differ.
FORMAT = 2


class TileCheckpoint:
    """A directory holding one ``.npz`` per finished tile plus the run's settings.

    Resuming with different settings (image size, method, parameters, tiling) would mix
    incompatible tiles, so it is refused with an error naming the directory.
    """

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / _META
        settings = json.loads(json.dumps({**settings, "format": FORMAT}, default=str))
        if meta.exists():
            previous = json.loads(meta.read_text())
            if previous != settings:
                raise ValueError(
                    f"Checkpoint directory {str(self.path)!r} belongs to a run with other settings "
                    f"({_diff(previous, settings)}). Delete it or pass another `checkpoint`."
                )
        else:
            meta.write_text(json.dumps(settings, indent=1))

    def _file(self, tile: Tile) -> Path:
        return self.path / f"tile_y{tile.y0}_x{tile.x0}.npz"

    def load(self, tile: Tile) -> dict[str, np.ndarray] | None:
        f = self._file(tile)
        if not f.exists():
            return None
        with np.load(f) as z:
            offsets = (z["ring_offsets"], z["geom_offsets"])
            geometry = shapely.from_ragged_array(shapely.GeometryType.POLYGON, z["coords"], offsets)
            return {"geometry": geometry, **{k: z[k] for k in z.files if k.startswith("obs_")}}

    def save(self, tile: Tile, result: dict[str, np.ndarray]) -> None:
        geometry = result["geometry"]
        if len(geometry):
            _, coords, (ring_offsets, geom_offsets) = shapely.to_ragged_array(geometry)
        else:
            coords, ring_offsets, geom_offsets = (
                np.empty((0, 2)),
                np.zeros(1, int),
                np.zeros(1, int),
            )
        tmp = self._file(tile).with_suffix(".tmp.npz")
        np.savez(tmp, coords=coords, ring_offsets=ring_offsets, geom_offsets=geom_offsets,
                 **{k: v for k, v in result.items() if k.startswith("obs_")})  # fmt: skip
        os.replace(tmp, self._file(tile))  # a tile file is complete or absent


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4])
