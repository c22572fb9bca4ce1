"""sst.io.write_zarr: compact images by default, lossless on request, nothing lost on faults."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import zarr
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

import scellst as sst
from scellst._sdata import image_level0, image_levels
from scellst.io import _write
from scellst.io._pyramid import multiscale_element

ROOT = Path(__file__).resolve().parents[1]


def _level0(sdata, key="he"):
    return np.asarray(image_level0(sdata, key).values)


def _codecs(store: Path, key="he") -> set[str]:
    names = set()
    for meta in (store / "images" / key).glob("s*/zarr.json"):
        names |= {c["name"] for c in json.loads(meta.read_text())["codecs"]}
    return names


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def slide():
    sdata = sst.datasets.synthetic(shape=(1536, 1536), seed=3)
    # a multiscale copy of the H&E (every level is re-encoded)
    he = sdata["he"].data
    sdata.images["pyr"] = multiscale_element(
        [he, he[:, ::2, ::2].rechunk(256), he[:, ::4, ::4]],
        get_transformation(sdata["he"], get_all=True),
    )
    return sdata


def test_default_jpeg_is_compact_and_reads_back(slide, tmp_path):
    sst.io.write_zarr(slide, tmp_path / "jpeg.zarr")
    sst.io.write_zarr(slide, tmp_path / "exact.zarr", image_codec="lossless")
    assert _codecs(tmp_path / "jpeg.zarr") == {"scellst_jpeg"}
    assert "scellst_jpeg" not in _codecs(tmp_path / "exact.zarr")
    jpeg_mb = _size(tmp_path / "jpeg.zarr" / "images") / 1e6
    exact_mb = _size(tmp_path / "exact.zarr" / "images") / 1e6
    assert jpeg_mb < exact_mb / 3, (jpeg_mb, exact_mb)

    back = sd.read_zarr(tmp_path / "jpeg.zarr")
    exact = sd.read_zarr(tmp_path / "exact.zarr")
    original = _level0(slide).astype(float)
    np.testing.assert_array_equal(_level0(exact), original)  # lossless is exact
    decoded = _level0(back).astype(float)
    assert decoded.shape == original.shape
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert psnr > 30, psnr  # the synthetic texture is harsher on JPEG than real H&E
    # every level of a pyramid is stored as JPEG, with the same scale
    assert _codecs(tmp_path / "jpeg.zarr", "pyr") == {"scellst_jpeg"}
    levels, read = image_levels(slide, "pyr"), image_levels(back, "pyr")
    assert [lv.shape for lv in read] == [lv.shape for lv in levels]
    diff = np.abs(read[1].values.astype(float) - levels[1].values)
    assert diff.mean() < 8
    assert sst.io.microns_per_pixel(back, "pyr") == pytest.approx(
        sst.io.microns_per_pixel(slide, "he")
    )
    # everything but the RGB images is stored exactly
    np.testing.assert_array_equal(back["truth_labels"].values, slide["truth_labels"].values)
    np.testing.assert_array_equal(back["spots_table"].X.toarray(), slide["spots_table"].X.toarray())


def test_jpeg_store_reads_in_a_process_that_does_not_import_scellst(slide, tmp_path):
    """zarr finds the codec through the entry point declared in pyproject.toml (installed as
    package metadata: simulated here by a dist-info folder holding that entry point)."""
    store = tmp_path / "s.zarr"
    sst.io.write_zarr(slide.subset(["he"]), store)
    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    codecs = points["zarr.codecs"]
    assert codecs == {"scellst_jpeg": "scellst.io._codecs:JpegCodec"}
    meta = tmp_path / "site" / "scellst_codecs-0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: scellst-codecs\nVersion: 0\n")
    lines = ["[zarr.codecs]", *(f"{k} = {v}" for k, v in codecs.items())]
    (meta / "entry_points.txt").write_text("\n".join(lines) + "\n")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import spatialdata as sd; "
        "assert 'scellst' not in sys.modules; "
        "s = sd.read_zarr(sys.argv[2]); print(int(s['he'].values.mean()))"
    )
    src = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "site"), str(store)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(int(out.stdout.split()[-1]) - _level0(slide).mean()) < 3


def test_failed_overwrite_keeps_the_old_store(slide, tmp_path, monkeypatch):
    path = tmp_path / "result.zarr"
    sst.io.write_zarr(slide.subset(["he", "spots", "spots_table"]), path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))

    def fail(group_path, levels):  # a fault part-way: the image half re-encoded
        zarr.open_group(str(group_path), mode="r+").create_array(
            "s0", shape=(3, 8, 8), dtype="uint8", overwrite=True
        )
        raise OSError("No space left on device")

    monkeypatch.setattr(_write, "_store_jpeg", fail)
    with pytest.raises(OSError, match="No space left"):
        sst.io.write_zarr(slide, path, overwrite=True)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    back = sd.read_zarr(path)
    assert set(back.tables) == {"spots_table"}  # the old content, complete
    assert _level0(back).shape == _level0(slide).shape
    assert [p.name for p in tmp_path.iterdir()] == ["result.zarr"]  # nothing left beside it


def test_failed_first_write_leaves_nothing(slide, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SpatialData, "write", fail)
    with pytest.raises(KeyboardInterrupt):
        sst.io.write_zarr(slide, tmp_path / "new.zarr")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_refusals(slide, tmp_path):
    path = tmp_path / "r.zarr"
    sst.io.write_zarr(slide.subset(["spots", "spots_table"]), path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sst.io.write_zarr(slide, path)
    sst.io.write_zarr(slide.subset(["he"]), path, overwrite=True)
    assert set(sd.read_zarr(path).images) == {"he"} and not sd.read_zarr(path).tables
    with pytest.raises(ValueError, match="nothing to write"):
        sst.io.write_zarr(SpatialData(), tmp_path / "empty.zarr")
    with pytest.raises(ValueError, match="image_codec='png'"):
        sst.io.write_zarr(slide, tmp_path / "x.zarr", image_codec="png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def _computed_tables():
    """An sdata with a table scellst computed (predictions and spread) and a measured one."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n = 400
    pred = ad.AnnData(rng.gamma(2.0, 1.0, (n, 30)).astype(np.float32))
    pred.layers["spread"] = rng.gamma(1.0, 0.1, (n, 30)).astype(np.float32)
    pred.obsm["spatial"] = rng.uniform(0, 5e4, (n, 2))  # float64 coordinates: kept exact
    pred.uns["scellst"] = {"prediction": {"model": "toy"}}
    counts = ad.AnnData(rng.poisson(50.0, (n, 30)).astype(np.float32) * 1.37)
    return SpatialData(tables={"sst_expression": pred, "measured": counts})


def test_computed_tables_keep_12_mantissa_bits_and_shrink(tmp_path):
    """Tables scellst computed are stored with 12 mantissa bits (relative error <= 2**-13),
    bitshuffled and zstd-compressed, and read back as float32 by plain spatialdata; measured
    tables and float64 arrays stay exact; ``table_bits=None`` keeps everything exact."""
    sdata = _computed_tables()
    sst.io.write_zarr(sdata, tmp_path / "compact.zarr")
    sst.io.write_zarr(sdata, tmp_path / "exact.zarr", table_bits=None)
    back, exact = sd.read_zarr(tmp_path / "compact.zarr"), sd.read_zarr(tmp_path / "exact.zarr")
    pred, got = sdata["sst_expression"], back["sst_expression"]
    for a, b in ((pred.X, got.X), (pred.layers["spread"], got.layers["spread"])):
        assert b.dtype == np.float32
        rel = np.abs(np.asarray(b) - a) / np.abs(a)
        assert 0 < rel.max() <= 2.0**-13
    np.testing.assert_array_equal(got.obsm["spatial"], pred.obsm["spatial"])
    np.testing.assert_array_equal(back["measured"].X, sdata["measured"].X)
    np.testing.assert_array_equal(exact["sst_expression"].X, pred.X)
    x_meta = json.loads((tmp_path / "compact.zarr/tables/sst_expression/X/zarr.json").read_text())
    blosc = [c for c in x_meta["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["shuffle"] == "bitshuffle"
    compact = _size(tmp_path / "compact.zarr/tables/sst_expression")
    assert compact < 0.7 * _size(tmp_path / "exact.zarr/tables/sst_expression")


def test_round_mantissa_keeps_non_finite_values_and_bounds_the_error(tmp_path):
    x = np.array([1.0, np.pi, -2.5e-7, 3.4e38, np.inf, -np.inf, np.nan, 0.0], np.float32)
    r = _write.round_mantissa(x, 12)
    finite = np.isfinite(x) & (x != 0)
    assert np.all(np.abs(r[finite] - x[finite]) <= np.abs(x[finite]) * 2.0**-13)
    assert np.isposinf(r[4]) and np.isneginf(r[5]) and np.isnan(r[6]) and r[7] == 0
    assert np.isfinite(r[3])  # the largest floats do not round to infinity
    with pytest.raises(ValueError, match="table_bits"):
        sst.io.write_zarr(_computed_tables(), tmp_path / "refused.zarr", table_bits=0)
    assert not (tmp_path / "refused.zarr").exists()
