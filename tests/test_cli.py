"""The command line: options and config files, resumable runs, predicting an H&E-only slide."""

from __future__ import annotations

import inspect
import json
import shutil
import time

import numpy as np
import pytest
import spatialdata as sd
import tifffile

import scellst as sst
from scellst.cli import main, parse_args
from scellst.cli._options import build_parser

from .conftest import SHARED
from .test_io import visium_dir  # noqa: F401 (fixture)

SVS = SHARED / "data" / "he_small" / "cmu_small_region.svs"
FAST = ["--genes", "hvg:8", "--max-epochs", "5", "--quiet"]


def _parquet_mtimes(store):
    return {p.name: p.stat().st_mtime_ns for p in (store / "shapes" / "sst_cells").rglob("*")}


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory):
    """A synthetic slide with spots written as a SpatialData store (a `--zarr` input)."""
    path = tmp_path_factory.mktemp("input") / "slide.zarr"
    sst.io.write_zarr(sst.datasets.synthetic(shape=(1024, 1024), seed=0), path)
    return path


@pytest.fixture(scope="module")
def fresh(slide_store, tmp_path_factory):
    """A whole `scellst run` in one go: (output store, model dir, seconds)."""
    root = tmp_path_factory.mktemp("fresh")
    out, model = root / "fresh.zarr", root / "model"
    t = time.perf_counter()
    argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--model-dir", str(model)]
    assert main(argv + FAST) == 0
    return out, model, time.perf_counter() - t


# ---- options ----------------------------------------------------------------------------------
def test_help_documents_every_option(capsys):
    parser, subparsers = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    top = capsys.readouterr().out
    for name in ("run", "predict", "demo"):
        assert name in top
    for name, sub in subparsers.items():
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
            takes_value = action.nargs != 0 and action.option_strings
            if takes_value and action.default is not None:
                assert "(default: %(default)s)" in action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert sst.__version__ in capsys.readouterr().out


def test_option_defaults_are_the_library_defaults():
    _, subparsers = build_parser()
    run = {a.dest: a.default for a in subparsers["run"]._actions}
    fit = inspect.signature(sst.tl.fit).parameters
    for key in ("genes", "loss", "aggregation", "aggregation_space", "max_epochs", "lr", "seed"):
        assert run[key] == fit[key].default, key
    segment = inspect.signature(sst.pp.segment).parameters
    assert run["segment_method"] == segment["method"].default
    assert run["tile_size"] == segment["tile_size"].default
    assert run["encoder"] == inspect.signature(sst.tl.embed).parameters["encoder"].default
    cells = inspect.signature(sst.tl.train_encoder).parameters["max_cells"].default
    assert run["train_encoder_cells"] == cells
    context = inspect.signature(sst.tl.embed).parameters["context_um"].default
    assert run["context_um"] == [context]


def test_config_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'hest = "hest_data"\nsample = "C2"\nmax_epochs = 7\nlr = 1e-4\nquiet = true\n'
        'genes = ["ERBB2", "CD3E"]\nout = "c2.zarr"\n[run]\nloss = "nb"\n[predict]\nmpp = 0.5\n'
    )
    args = parse_args(["run", "--config", str(config), "--max-epochs", "9"])
    assert args.max_epochs == 9  # the flag wins
    assert args.lr == 1e-4 and args.quiet is True and args.loss == "nb"
    assert args.genes == "ERBB2,CD3E"
    assert args.hest.name == "hest_data" and args.sample == "C2" and args.out.name == "c2.zarr"
    # an input given as a flag replaces the file's, with the options that go with it
    args = parse_args(["run", "--config", str(config), "--zarr", "slide.zarr"])
    assert args.zarr.name == "slide.zarr" and args.hest is None and args.sample is None


def test_config_file_errors(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("max_epoch = 7\nout = 'x.zarr'\n")
    with pytest.raises(SystemExit) as e:
        parse_args(["run", "--config", str(config)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option(s) max_epoch" in err and "max_epochs" in err and "genes" in err
    for text, message in (
        ("max_epochs = 'ten'", "expected an integer"),
        ("loss = 'l1'", "not one of mse, nb, poisson"),
        ("quiet = 1", "expected true or false"),
        ("max_epochs = [", "not valid TOML"),
    ):
        config.write_text(text)
        with pytest.raises(SystemExit):
            parse_args(["run", "--config", str(config)])
        assert message in capsys.readouterr().err, text


def test_missing_or_conflicting_inputs(tmp_path, capsys):
    out = str(tmp_path / "o.zarr")
    for argv, message in (
        (["run", "--out", out], "exactly one input"),
        (["run", "--out", out, "--hest", "h"], "--hest needs --sample"),
        (["run", "--out", out, "--visium", "v"], "--visium needs --fullres-image"),
        (["run", "--hest", "h", "--sample", "C2"], "--out is required"),
        (["run", "--out", out, "--zarr", out], "--out must differ"),
        (["run", "--out", out, "--zarr", "z", "--stop-after", "train_encoder"], "goes with"),
        (["predict", "--out", out, "--image", "x.tif"], "--model is required"),
    ):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "o.zarr").exists()


# ---- resumable runs ---------------------------------------------------------------------------
def test_interrupted_run_resumes_and_equals_a_fresh_run(fresh, slide_store, tmp_path, caplog):
    fresh_out, _, _ = fresh
    out = tmp_path / "resumed.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(out)] + FAST
    assert main(argv + ["--stop-after", "segment"]) == 0
    store = sd.read_zarr(out)
    assert "sst_cells" in store and "sst_embedding" not in store
    assert not (out / "scellst" / "model").exists()
    mtimes = _parquet_mtimes(out)

    caplog.clear()
    caplog.set_level("INFO", logger="scellst")
    t = time.perf_counter()
    assert main(argv) == 0
    resumed_seconds = time.perf_counter() - t
    assert f"skipping segment: sst_cells, sst_cells_table found in {out}" in caplog.text
    assert "[2/4] embed" in caplog.text and "[4/4] predict" in caplog.text
    assert _parquet_mtimes(out) == mtimes  # the polygons were not rewritten
    a, b = sd.read_zarr(fresh_out), sd.read_zarr(out)
    assert a["sst_cells"].geometry.equals(b["sst_cells"].geometry)
    np.testing.assert_array_equal(
        a["sst_embedding"].obsm["X_sst"], b["sst_embedding"].obsm["X_sst"]
    )
    assert list(a["sst_expression"].var_names) == list(b["sst_expression"].var_names)
    np.testing.assert_allclose(a["sst_expression"].X, b["sst_expression"].X, rtol=1e-5, atol=1e-6)

    # a table deleted from the store is computed again, from the saved model
    b.delete_element_from_disk("sst_expression")
    caplog.clear()
    t = time.perf_counter()
    assert main(argv) == 0
    predict_only_seconds = time.perf_counter() - t
    assert "skipping fit: scellst/model/ found" in caplog.text
    assert "[4/4] predict" in caplog.text and "[3/4] fit" not in caplog.text
    c = sd.read_zarr(out)
    np.testing.assert_array_equal(b["sst_expression"].X, c["sst_expression"].X)
    print(
        f"fresh run {fresh[2]:.1f} s, resumed after segment {resumed_seconds:.1f} s, "
        f"predict only {predict_only_seconds:.1f} s"
    )


def test_segmentation_interrupted_mid_slide_resumes_tile_by_tile(
    slide_store, tmp_path, monkeypatch, capsys
):
    from scellst.segmentation.watershed import WatershedSegmenter

    calls = []
    segment_tile = WatershedSegmenter.__call__

    def interrupted(self, rgb, mpp):
        calls.append(rgb.shape)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third of four tiles
        return segment_tile(self, rgb, mpp)

    monkeypatch.setattr(WatershedSegmenter, "__call__", interrupted)
    out = tmp_path / "tiles.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--tile-size", "512"]
    argv += ["--n-jobs", "1", "--stop-after", "segment", "--quiet"]
    assert main(argv) == 130
    assert "Run the same command again to resume" in capsys.readouterr().err
    assert len(list((out / "scellst" / "segment_tiles").glob("tile_*.npz"))) == 2
    calls.clear()
    assert main(argv) == 0
    assert len(calls) == 2  # only the tiles that were not finished
    assert not (out / "scellst" / "segment_tiles").exists()
    monkeypatch.undo()
    expected = sd.read_zarr(slide_store)
    sst.pp.segment(expected, tile_size=512, n_jobs=1, progress=False)
    assert sd.read_zarr(out)["sst_cells"].geometry.equals(expected["sst_cells"].geometry)


def test_resuming_with_other_settings_is_refused(fresh, slide_store, tmp_path, capsys):
    out, _, _ = fresh
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"not read: the settings are compared first")
    base = ["run", "--zarr", str(slide_store), "--out", str(out), "--quiet"]
    assert main(base + ["--genes", "hvg:8", "--max-epochs", "6"]) == 2
    err = capsys.readouterr().err
    assert "fit: --max-epochs 5 (stored) vs 6 (now)" in err and "--overwrite" in err
    argv = base + FAST[:4] + ["--encoder", "resnet18", "--weights", str(weights)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "embed: --encoder 'morphology' (stored) vs 'resnet18' (now)" in err
    # a new stage before finished ones would redo them: refused too
    assert main(base + FAST[:4] + ["--train-encoder-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "embed: --encoder 'morphology' (stored) vs 'trained by this run" in err
    assert "sst_expression" in sd.read_zarr(out)  # nothing was removed
    # another input
    assert main(["run", "--zarr", str(out), "--out", str(out)] + FAST) == 2


def test_existing_output_that_is_not_a_run(slide_store, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    argv = ["run", "--zarr", str(slide_store), "--out", str(out)] + FAST
    for extra in ([], ["--overwrite"]):
        assert main(argv + extra) == 2
        assert "not the output of a scellst command" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "precious"
    # --overwrite replaces the output of an earlier run
    run = tmp_path / "run.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(run)] + FAST
    assert main(argv + ["--stop-after", "segment"]) == 0
    assert main(argv + ["--stop-after", "segment", "--tile-size", "1024"]) == 2
    capsys.readouterr()
    assert main(argv + ["--stop-after", "segment", "--tile-size", "1024", "--overwrite"]) == 0
    cells = sd.read_zarr(run)["sst_cells_table"]
    assert cells.uns["scellst"]["segmentation"]["tile_size"] == 1024


def test_model_dir_model_is_reused(fresh, slide_store, tmp_path, caplog):
    out, model, _ = fresh
    assert json.loads((model / "scellst_run.json").read_text())["fit"]["max_epochs"] == 5
    caplog.set_level("INFO", logger="scellst")
    again = tmp_path / "again.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(again), "--model-dir", str(model)]
    assert main(argv + FAST) == 0
    assert f"reusing the model in {model}" in caplog.text
    np.testing.assert_array_equal(
        sd.read_zarr(out)["sst_expression"].X, sd.read_zarr(again)["sst_expression"].X
    )
    # a model trained with other settings is not replaced silently
    other = ["run", "--zarr", str(slide_store), "--out", str(tmp_path / "o.zarr")]
    assert main(other + ["--model-dir", str(model), "--genes", "hvg:5", "--quiet"]) == 2


def test_visium_input_with_a_relative_image_path(visium_dir, tmp_path, monkeypatch):  # noqa: F811
    he = sst.datasets.synthetic(shape=(1024, 1024), seed=0)["he"].data[:, :500, :600].compute()
    tifffile.imwrite(tmp_path / "fullres.tif", np.moveaxis(np.asarray(he), 0, -1))
    monkeypatch.chdir(tmp_path)  # paths on the command line are relative to it
    outs = visium_dir.relative_to(tmp_path)
    argv = ["run", "--visium", str(outs), "--fullres-image", "fullres.tif", "--out", "v.zarr"]
    assert main(argv + ["--stop-after", "segment", "--quiet"]) == 0
    cells = sd.read_zarr("v.zarr")["sst_cells_table"]
    assert cells.n_obs > 100 and (cells.obs["spot"] >= 0).sum() > 10


# ---- predicting an H&E-only slide -------------------------------------------------------------
def test_predict_real_svs(fresh, tmp_path, caplog):
    if not SVS.is_file():
        pytest.skip(f"real H&E slide not found at {SVS} (../shared beside the repository)")
    _, model, _ = fresh
    out = tmp_path / "svs.zarr"
    argv = ["predict", "--model", str(model), "--image", str(SVS), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    result = sd.read_zarr(out)
    n = len(result["sst_cells"])
    assert n > 500 and result["sst_cells_table"].n_obs == n
    expression = result["sst_expression"]
    assert expression.n_obs == n and np.isfinite(expression.X).all()
    assert list(expression.var_names) == sst.tl.MILModel.load(model).genes
    assert sst.io.microns_per_pixel(result) == pytest.approx(0.499)
    caplog.set_level("INFO", logger="scellst")
    assert main(argv) == 0
    assert "skipping predict: sst_expression found" in caplog.text


def test_predict_errors_name_the_fix(fresh, tmp_path, capsys):
    _, model, _ = fresh
    image = tmp_path / "no_scale.tif"
    tifffile.imwrite(image, np.full((64, 64, 3), 200, np.uint8))
    out = str(tmp_path / "p.zarr")
    argv = ["predict", "--model", str(model), "--image", str(image), "--out", out]
    assert main(argv) == 2
    assert "Pass --mpp" in capsys.readouterr().err
    # a model trained on another encoder's embeddings: only a reference to it is recorded
    other = tmp_path / "resnet_model"
    shutil.copytree(model, other)
    payload = json.loads((other / "config.json").read_text())
    payload["config"]["encoder"] = "resnet18-deadbeef"
    payload["config"]["encoder_info"] = {
        "encoder": "resnet18-deadbeef",
        "provenance": {"arch": "resnet18", "weights": "/data/resnet18.pth"},
    }
    (other / "config.json").write_text(json.dumps(payload))
    argv = ["predict", "--model", str(other), "--image", str(image), "--out", out, "--mpp", "0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'resnet18-deadbeef'" in err and "--encoder resnet18 --weights /data/resnet18.pth" in err
    assert not (tmp_path / "p.zarr").exists()


def test_trained_encoder_travels_with_the_model(slide_store, tmp_path, caplog):
    """--train-encoder-epochs: the encoder is saved with the model and found by predict."""
    out, model = tmp_path / "ssl.zarr", tmp_path / "ssl_model"
    argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--model-dir", str(model)]
    argv += ["--train-encoder-epochs", "1", "--train-encoder-cells", "16", "--stop-after", "fit"]
    assert main(argv + FAST) == 0
    assert (out / "scellst" / "encoder" / "encoder.json").is_file()
    assert (model / "encoder" / "encoder.json").is_file()
    trained = sst.tl.MILModel.load(model).config["encoder"]
    assert trained.startswith("moco-resnet_small")
    crop = tmp_path / "crop.tif"  # an H&E-only image: a corner of the training slide
    he = sd.read_zarr(slide_store)["he"].data[:, :384, :384].compute()
    tifffile.imwrite(crop, np.moveaxis(np.asarray(he), 0, -1))
    predicted = tmp_path / "crop.zarr"
    argv = ["predict", "--model", str(model), "--image", str(crop), "--mpp", "0.5"]
    assert main(argv + ["--out", str(predicted), "--quiet"]) == 0
    result = sd.read_zarr(predicted)
    assert result["sst_embedding"].uns["scellst"]["embedding"]["encoder"] == trained
    assert result["sst_expression"].n_obs == len(result["sst_cells"]) > 10


def test_demo_writes_a_readable_store(tmp_path, caplog):
    out = tmp_path / "demo.zarr"
    caplog.set_level("INFO", logger="scellst")
    argv = ["demo", "--out", str(out), "--size", "1024", "--max-epochs", "3", "--quiet"]
    assert main(argv + ["--model-dir", str(tmp_path / "m")]) == 0
    back = sd.read_zarr(out)
    keys = set(back.images) | set(back.shapes) | set(back.tables)
    assert {
        "he",
        "sst_cells",
        "sst_cells_table",
        "sst_embedding",
        "sst_expression",
        "truth_expression",
    } <= keys
    assert back["sst_expression"].n_obs == back["sst_cells_table"].n_obs
    assert back["sst_expression"].n_vars == back["truth_expression"].n_vars
    assert (tmp_path / "m" / "config.json").is_file()
    assert "per-cell Pearson vs truth" in caplog.text
    # the same command again only reports; other settings are refused
    assert main(argv) == 0
    assert "skipping predict" in caplog.text
    assert main(["demo", "--out", str(out), "--size", "1024", "--quiet"]) == 2


# ---- errors before any work, in command-line terms -----------------------------------------
def test_unknown_genes_fail_before_any_work(slide_store, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("segmentation started")

    monkeypatch.setattr(sst.pp, "segment", no_work)
    out = tmp_path / "g.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--quiet"]
    assert main(argv + ["--genes", "NOTAGENE,EPCAM,krt8"]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 genes are not measured" in err and "NOTAGENE" in err
    assert "Same name in other case: KRT8" in err and "Traceback" not in err
    assert not out.exists()


def test_predict_encoder_mismatch_is_said_before_any_weights(fresh, tmp_path, capsys, monkeypatch):
    from scellst.embedding import encoder as encoder_module

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were looked for")

    monkeypatch.setattr(encoder_module, "resolve_encoder", no_weights)
    _, model, _ = fresh  # a morphology model
    image = tmp_path / "s.tif"
    tifffile.imwrite(image, np.full((64, 64, 3), 200, np.uint8))
    argv = ["predict", "--model", str(model), "--image", str(image), "--mpp", "0.5"]
    assert main(argv + ["--out", str(tmp_path / "p.zarr"), "--encoder", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "--encoder resnet50 does not match the model" in err and "'morphology'" in err
    assert not (tmp_path / "p.zarr").exists()


def test_cli_errors_give_cli_advice(fresh, slide_store, tmp_path, capsys):
    _, model, _ = fresh
    png = tmp_path / "slide.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    argv = ["predict", "--model", str(model), "--image", str(png), "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not a TIFF" in err and "slide.tif" in err and "--mpp" in err
    assert "imread" not in err and "microns_per_pixel=" not in err
    # a HEST sample whose metadata has no pixel size
    hest = tmp_path / "hest"
    for sub in ("st", "wsis", "metadata"):
        (hest / sub).mkdir(parents=True)
    sd.read_zarr(slide_store)["spots_table"].write_h5ad(hest / "st" / "S.h5ad")
    tifffile.imwrite(hest / "wsis" / "S.tif", np.full((64, 64, 3), 200, np.uint8))
    (hest / "metadata" / "S.json").write_text(json.dumps({"spot_diameter": 55}))
    argv = ["run", "--hest", str(hest), "--sample", "S", "--out", str(tmp_path / "h.zarr")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "with --mpp" in err and "microns_per_pixel=" not in err


def test_segmentation_parameters_from_the_command_line(slide_store, tmp_path, capsys):
    base = ["run", "--zarr", str(slide_store), "--stop-after", "segment"] + FAST
    out = tmp_path / "seg.zarr"
    argv = base + ["--out", str(out), "--seg-param", "min_area_um2=30"]
    assert main(argv + ["--seg-param", "tissue_od=0.06"]) == 0
    params = sd.read_zarr(out)["sst_cells_table"].uns["scellst"]["segmentation"]["params"]
    assert params["min_area_um2"] == 30 and params["tissue_od"] == 0.06
    # the same from a config file table; a resumed run with other values is refused
    config = tmp_path / "seg.toml"
    config.write_text("[run.seg_param]\nmin_area_um2 = 30\ntissue_od = 0.06\n")
    assert main(base + ["--out", str(out), "--config", str(config)]) == 0
    assert main(base + ["--out", str(out), "--seg-param", "min_area_um2=12"]) == 2
    assert "--seg-params" in capsys.readouterr().err
    for bad, message in (
        ("min_area=3", "unknown watershed parameter(s) min_area"),
        ("min_area_um2", "expected KEY=VALUE"),
    ):
        assert main(base + ["--out", str(tmp_path / "x.zarr"), "--seg-param", bad]) == 2
        assert message in capsys.readouterr().err


def test_learned_segmentation_from_the_command_line(slide_store, tmp_path, capsys):
    base = ["run", "--zarr", str(slide_store), "--stop-after", "segment"] + FAST
    bad = base + ["--out", str(tmp_path / "x.zarr"), "--segment-method", "learned"]
    assert main(bad + ["--seg-param", "threshold=0.3"]) == 2
    assert "unknown parameter(s) threshold of the learned segmenter" in capsys.readouterr().err
    out = tmp_path / "learned.zarr"
    argv = base + ["--out", str(out), "--segment-method", "learned", "--seg-param",
                   "min_area_um2=10"]  # fmt: skip
    assert main(argv) == 0
    info = sd.read_zarr(out)["sst_cells_table"].uns["scellst"]["segmentation"]
    assert info["method"] == "learned" and info["params"]["min_area_um2"] == 10


def test_context_radius_from_the_command_line(slide_store, tmp_path, capsys):
    """``--context-um``: the neighbourhood radii of the embedding (0: none), recorded, and a
    resumed run with another radius is refused like any other changed setting."""
    base = ["run", "--zarr", str(slide_store), "--stop-after", "embed"] + FAST
    out = tmp_path / "none.zarr"
    assert main(base + ["--out", str(out), "--context-um", "0"]) == 0
    own = sd.read_zarr(out)["sst_embedding"].obsm["X_sst"].shape[1]
    two = tmp_path / "two.zarr"
    assert main(base + ["--out", str(two), "--context-um", "30,100"]) == 0
    assert sd.read_zarr(two)["sst_embedding"].obsm["X_sst"].shape[1] == 5 * own  # 2 x mean, SD
    capsys.readouterr()
    assert main(base + ["--out", str(out), "--context-um", "50"]) == 2
    assert "--context-um" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse refuses it before anything runs
        main(base + ["--out", str(tmp_path / "bad.zarr"), "--context-um", "-3"])
    assert stop.value.code == 2 and "radii must be positive" in capsys.readouterr().err


# ---- nothing lost on faults ------------------------------------------------------------------
def test_failed_stage_write_leaves_no_partial_element(slide_store, tmp_path, monkeypatch):
    from scellst.cli import _store

    out = tmp_path / "f.zarr"
    argv = ["run", "--zarr", str(slide_store), "--out", str(out)] + FAST
    real = _store.write_store

    def fail_on_embedding(part, path, **kwargs):
        if "sst_embedding" in part.tables:
            real(part, path, **kwargs)  # written aside, then the fault before the move
            raise OSError("No space left on device")
        real(part, path, **kwargs)

    monkeypatch.setattr(_store, "write_store", fail_on_embedding)
    with pytest.raises(OSError, match="No space left"):
        main(argv)
    store = sd.read_zarr(out)
    assert "sst_cells" in store and "sst_embedding" not in store
    assert not (out / "tables" / "sst_embedding").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr"]  # nothing left aside
    monkeypatch.setattr(_store, "write_store", real)
    assert main(argv) == 0  # resumes after the segmentation
    assert "sst_expression" in sd.read_zarr(out)


def test_failed_overwrite_keeps_the_earlier_store(fresh, tmp_path, slide_store, monkeypatch):
    out = tmp_path / "o.zarr"
    shutil.copytree(fresh[0], out)
    before = sd.read_zarr(out)["sst_expression"].X.copy()

    def broken_fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sst.tl, "fit", broken_fit)
    argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--overwrite"] + FAST
    assert main(argv) == 130
    np.testing.assert_array_equal(sd.read_zarr(out)["sst_expression"].X, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_image_codec_of_the_output_store(slide_store, tmp_path):
    sizes = {}
    for codec in ("jpeg", "lossless"):
        out = tmp_path / f"{codec}.zarr"
        argv = ["run", "--zarr", str(slide_store), "--out", str(out), "--image-codec", codec]
        assert main(argv + FAST + ["--stop-after", "segment"]) == 0
        meta = json.loads((out / "images" / "he" / "zarr.json").read_text())
        assert meta["node_type"] == "group"
        level = json.loads(next((out / "images" / "he").glob("s0/zarr.json")).read_text())
        assert ("scellst_jpeg" in {c["name"] for c in level["codecs"]}) == (codec == "jpeg")
        sizes[codec] = sum(f.stat().st_size for f in (out / "images").rglob("*") if f.is_file())
    assert sizes["jpeg"] < sizes["lossless"] / 2
