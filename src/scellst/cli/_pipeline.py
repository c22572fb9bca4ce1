"""The stages of ``scellst run``, ``predict`` and ``demo``, run through a resumable store."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from spatialdata import SpatialData

from .. import pp, tl
from ..constants import (
    CELLS_KEY,
    EMBEDDING_KEY,
    EXPRESSION_KEY,
    TRUE_EXPRESSION_KEY,
    cells_table_key,
)
from ..io._write import TABLE_BITS
from ._errors import CLIError
from ._inputs import check_genes, input_settings, parse_genes, parse_seg_params, read_input
from ._store import FILES_DIR, RunStore, Stage, plain

log = logging.getLogger("scellst")

#: Where the model and a trained encoder live inside the output store.
MODEL_DIR = f"{FILES_DIR}/model"
ENCODER_DIR = f"{FILES_DIR}/encoder"
#: Finished segmentation tiles, until the segmentation stage is finished.
TILES_DIR = f"{FILES_DIR}/segment_tiles"
TILES_SETTINGS = "cli_settings.json"
#: Written beside a model by the command line: the settings of every stage that led to it.
PROVENANCE_FILE = "scellst_run.json"
#: Files of a saved model (MILModel.save) and of a saved encoder (SSLEncoder.save).
MODEL_FILES = ("config.json", "weights.pt")
ENCODER_FILES = ("encoder.json", "encoder_weights.pt")
#: How the embed stage records an encoder trained by the run itself.
TRAINED = "trained by this run"


class Pipeline:
    """One invocation of a command: its stages, sharing the slide, the encoder and the model."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.command = args.command
        self.progress = not args.quiet
        self.device = None if args.device == "auto" else args.device
        self.store = RunStore(args.out, self.command)
        self.sdata: SpatialData | None = None
        self.model = None
        self.trained_model = None  # the model of --model (predict)
        self.reuse: Path | None = None  # a --model-dir model made with the same settings
        self.stages = self._stages()
        self.check_model_dir()
        self.encoder = None

    # ---- the plan -----------------------------------------------------------------------------
    def _stages(self) -> list[Stage]:
        a = self.args
        segment = Stage(
            "segment",
            self._segment,
            {
                "segment_method": a.segment_method,
                "seg_params": parse_seg_params(a.seg_param, a.segment_method) or None,
                "cellpose_weights": a.cellpose_weights,
                "tile_size": a.tile_size,
            },
            elements=(CELLS_KEY, cells_table_key(CELLS_KEY)),
        )
        if self.command == "predict":
            self.trained_model = tl.MILModel.load(a.model, device=self.device)
            return [
                segment,
                Stage("embed", self._embed, self._encoder_spec(), elements=(EMBEDDING_KEY,)),
                Stage(
                    "predict",
                    self._predict,
                    {"model": a.model.resolve(), "model_sha256": _model_sha(a.model)},
                    elements=(EXPRESSION_KEY,),
                    uncompared=("model",),  # the same model moved elsewhere is still the same
                ),
            ]
        stages = [segment]
        if a.train_encoder_epochs > 0:
            stages.append(
                Stage(
                    "train_encoder",
                    self._train_encoder,
                    {
                        "train_encoder_epochs": a.train_encoder_epochs,
                        "train_encoder_cells": a.train_encoder_cells,
                        "seed": a.seed,
                    },
                    folder=ENCODER_DIR,
                    files=ENCODER_FILES,
                )
            )
        fit = {
            k: getattr(a, k)
            for k in ("loss", "aggregation", "aggregation_space", "max_epochs", "lr", "seed")
        }
        fit["genes"] = getattr(a, "genes", "all")
        stages += [
            Stage("embed", self._embed, self._encoder_spec(), elements=(EMBEDDING_KEY,)),
            Stage("fit", self._fit, fit, folder=MODEL_DIR, files=MODEL_FILES),
            Stage("predict", self._predict, elements=(EXPRESSION_KEY,)),
        ]
        return stages

    def _encoder_spec(self) -> dict:
        """What identifies the embedding: the encoder as given (a folder: its absolute path)."""
        a = self.args
        if self.command != "predict" and a.train_encoder_epochs > 0:
            return {"encoder": f"{TRAINED} ({ENCODER_DIR})", "weights": None}
        encoder = a.encoder
        if self.command == "predict" and encoder is None:
            encoder = self._model_encoder()
        if encoder != "morphology" and Path(encoder).expanduser().is_dir():
            encoder = str(Path(encoder).expanduser().resolve())
        weights = a.weights.expanduser().resolve() if a.weights is not None else None
        spec = {"encoder": encoder, "weights": weights}
        if self.command != "predict":  # predict embeds with the model's context
            spec["context_um"] = list(a.context_um)
        return spec

    def _model_encoder(self) -> str:
        """The encoder of the ``--model`` of ``predict``: morphology, the one saved beside it,
        else an error that names what the model was trained with."""
        config = self.trained_model.config
        name = config["encoder"]
        if name == "morphology":
            return "morphology"
        bundled = self.args.model / "encoder"
        if (bundled / ENCODER_FILES[0]).is_file():
            return str(bundled)
        info = config.get("encoder_info", {})
        provenance = info.get("provenance", {})
        arch, weights = provenance.get("arch"), provenance.get("weights")
        if weights and not str(weights).startswith("sst.tl.train_encoder"):
            hint = f"--encoder {arch} --weights {weights}"
        elif weights:
            hint = "--encoder <the folder of that trained encoder> (sst.tl.train_encoder out_dir)"
        else:
            hint = "--encoder NAME|DIR (and --weights FILE for a torchvision model)"
        raise CLIError(
            f"The model {self.args.model} was trained on {name!r} embeddings"
            + (f" (architecture {arch}, weights {weights})" if arch else "")
            + f"; it only records a reference to that encoder. Pass the same encoder: {hint}."
        )

    # ---- execution ----------------------------------------------------------------------------
    def execute(self) -> SpatialData:
        a = self.args
        settings = input_settings(a)
        resume = self.store.prepare(a.overwrite)
        try:
            self._execute(settings, resume)
        except BaseException:
            self.store.abort()  # an --overwrite run built aside: the earlier store stays
            raise
        self.store.commit()
        return self.sdata

    def _execute(self, settings: dict, resume: bool) -> None:
        a = self.args
        first = 0
        if resume:
            self.sdata, first = self.store.resume(settings, self.stages)
            log.info("resuming %s", self.store.path)
        # everything that can be checked without computing is checked before any work: the
        # encoder against the model (before any weights are read), the weights, the genes
        if self.command == "predict":
            self._check_encoder_matches_model()
        spec = next(s for s in self.stages if s.name == "embed").settings
        if not spec["encoder"].startswith(TRAINED):  # one trained by this run: later
            self.encoder = self._resolve_encoder(spec["encoder"], spec["weights"])
        if not resume:
            source = read_input(a)
        elif self.store.image_codec() == "jpeg":  # the stored image is not the source's pixels
            source = read_input(a, missing_ok=True)
        else:
            source = None
        if source is not None and self.command == "run" and first <= self._stage_index("fit"):
            check_genes(source, parse_genes(a.genes))
        if not resume:
            t = time.perf_counter()
            self.sdata = self.store.create(
                source,
                settings,
                image_codec=a.image_codec,
                table_bits=None if a.exact_tables else TABLE_BITS,
            )
            log.info("input written to %s in %.1f s", self.store.path, time.perf_counter() - t)
        if source is not None:  # compute on the source pixels, not on the store's JPEG copy
            for key, image in source.images.items():
                if key in self.sdata.images:
                    self.sdata.images[key] = image
        for i, stage in enumerate(self.stages):
            if i < first:
                log.info(
                    "skipping %s: %s found in %s", stage.name, stage.outputs(), self.store.path
                )
            else:
                log.info("[%d/%d] %s", i + 1, len(self.stages), stage.name)
                t = time.perf_counter()
                stage.run()
                self.store.finish(self.sdata, stage)
                log.info("%s done in %.1f s", stage.name, time.perf_counter() - t)
            if stage.name == "segment":
                shutil.rmtree(self.store.path / TILES_DIR, ignore_errors=True)
            if stage.name == "fit":
                self._export_model()
            if stage.name == a.stop_after:
                log.info(
                    "stopped after %s (--stop-after); run the command again without it to finish",
                    stage.name,
                )
                break

    def _stage_index(self, name: str) -> int:
        return next((i for i, s in enumerate(self.stages) if s.name == name), len(self.stages))

    # ---- stages -------------------------------------------------------------------------------
    def _segment(self) -> None:
        a = self.args
        params = parse_seg_params(a.seg_param, a.segment_method)
        if a.segment_method == "cellpose":
            params.update(pretrained_model=a.cellpose_weights, device=self.device)
        elif a.segment_method == "learned":
            params.update(device=self.device)
        # finished tiles are kept until the stage is, so an interrupted segmentation resumes
        # tile by tile; tiles of one interrupted with other settings are discarded
        tiles = self.store.path / TILES_DIR
        settings = next(s for s in self.stages if s.name == "segment").settings
        if tiles.is_dir() and _read_json(tiles / TILES_SETTINGS) != settings:
            log.info("discarding the tiles of a segmentation interrupted with other settings")
            shutil.rmtree(tiles)
        elif tiles.is_dir():
            log.info("resuming the segmentation from the finished tiles in %s", tiles)
        tiles.mkdir(parents=True, exist_ok=True)
        (tiles / TILES_SETTINGS).write_text(json.dumps(settings))
        pp.segment(
            self.sdata,
            method=a.segment_method,
            params=params,
            tile_size=a.tile_size,
            n_jobs=a.n_jobs,
            progress=self.progress,
            checkpoint=tiles,
        )
        if self.command != "predict":
            pp.assign_cells(self.sdata)

    def _train_encoder(self) -> None:
        a = self.args
        tl.train_encoder(
            self.sdata,
            epochs=a.train_encoder_epochs,
            max_cells=a.train_encoder_cells,
            seed=a.seed,
            device=a.device,
            out_dir=self.store.path / ENCODER_DIR,
            n_jobs=a.n_jobs,
            progress=self.progress,
        )

    def _embed(self) -> None:
        if self.encoder is None:  # trained by this run
            self.encoder = self._resolve_encoder(str(self.store.path / ENCODER_DIR), None)
        if self.command != "predict":
            context = {"context_um": list(self.args.context_um) or 0}
        else:  # the neighbourhood context the model was trained with
            from ..mil.spots import embedding_context

            radii, stats = embedding_context(self.trained_model.config.get("encoder_info", {}))
            context = {"context_um": list(radii) or 0, "context_stats": list(stats) or ["mean"]}
        tl.embed(
            self.sdata,
            encoder=self.encoder,
            n_jobs=self.args.n_jobs,
            progress=self.progress,
            **context,
        )

    def _check_encoder_matches_model(self) -> None:
        """``predict``: an ``--encoder`` of another kind than the model's is refused before any
        encoder weights are looked for."""
        given = self.args.encoder
        if given is None:
            return
        config = self.trained_model.config
        trained = config["encoder"]
        arch = config.get("encoder_info", {}).get("provenance", {}).get("arch")
        is_dir = given != "morphology" and Path(given).expanduser().is_dir()
        if trained == "morphology":
            mismatch = given != "morphology"
        elif given == "morphology":
            mismatch = True
        else:
            mismatch = not is_dir and arch is not None and given != arch
        if mismatch:
            raise CLIError(
                f"--encoder {given} does not match the model {self.args.model}: it was trained on "
                f"{trained!r} embeddings"
                + (f" (architecture {arch})" if arch else "")
                + ". Drop --encoder (the model's own encoder is used when it can be rebuilt) or "
                "pass the encoder the model was trained with."
            )

    def _resolve_encoder(self, encoder: str, weights: str | None):
        """The encoder object (weights loaded), on ``--device``; for ``predict``, checked to be
        the model's."""
        from ..embedding.encoder import resolve_encoder

        enc = resolve_encoder(encoder, weights)
        if self.device is not None and hasattr(enc, "to"):
            enc.to(self.device)
        if self.command == "predict" and enc.name != self.trained_model.config["encoder"]:
            raise CLIError(
                f"--encoder {encoder} is {enc.name!r}, but the model {self.args.model} was trained "
                f"on {self.trained_model.config['encoder']!r} embeddings. Pass the encoder the "
                "model was trained with."
            )
        return enc

    def _fit(self) -> None:
        a = self.args
        folder = self.store.path / MODEL_DIR
        if self.reuse is not None:
            log.info("reusing the model in %s (same input and settings)", self.reuse)
            shutil.copytree(self.reuse, folder)
            self.model = tl.MILModel.load(folder, device=self.device)
            return
        if self.command == "demo":
            genes: str | list[str] = list(self.sdata[TRUE_EXPRESSION_KEY].var_names)
        else:
            genes = parse_genes(a.genes)
        self.model = tl.fit(
            self.sdata,
            genes=genes,
            loss=a.loss,
            aggregation=a.aggregation,
            aggregation_space=a.aggregation_space,
            max_epochs=a.max_epochs,
            lr=a.lr,
            seed=a.seed,
            device=self.device,
            progress=self.progress,
        )
        log.info("model: %s", self.model)
        self.model.save(folder)
        if (self.store.path / ENCODER_DIR).is_dir():  # predict finds the encoder with the model
            shutil.copytree(self.store.path / ENCODER_DIR, folder / "encoder")
        (folder / PROVENANCE_FILE).write_text(json.dumps(self.provenance(), indent=1))

    def _predict(self) -> None:
        model = self.trained_model if self.command == "predict" else self.model
        if model is None:
            model = tl.MILModel.load(self.store.path / MODEL_DIR, device=self.device)
        tl.predict(self.sdata, model)

    # ---- the model beside the store (--model-dir) ---------------------------------------------
    def provenance(self) -> dict:
        """The input and the settings of every stage up to the fit: what makes the model."""
        out = {"command": self.command, "input": plain(input_settings(self.args))}
        for stage in self.stages:
            out[stage.name] = stage.settings
            if stage.name == "fit":
                break
        return out

    def check_model_dir(self) -> None:
        """Before any work: reuse a --model-dir model made with this run's input and settings;
        refuse another model there unless --overwrite."""
        folder = getattr(self.args, "model_dir", None)
        if folder is None or not all((folder / f).is_file() for f in MODEL_FILES):
            return
        if _read_json(folder / PROVENANCE_FILE) == self.provenance() and not self.args.overwrite:
            self.reuse = folder
        elif not self.args.overwrite:
            raise CLIError(
                f"--model-dir {folder} already holds a model that was not trained on this input "
                "with these settings. Use another --model-dir, or --overwrite to replace it."
            )

    def _export_model(self) -> None:
        folder = getattr(self.args, "model_dir", None)
        if folder is None or self.reuse is not None:
            return
        if (folder / "encoder").is_dir():  # a stale encoder must not pass for this model's
            shutil.rmtree(folder / "encoder")
        shutil.copytree(self.store.path / MODEL_DIR, folder, dirs_exist_ok=True)
        log.info("model saved in %s", folder)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _model_sha(folder: Path) -> str | None:
    """SHA-256 of a saved model's files (None when there is none)."""
    h = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(folder) / name
        if not path.is_file():
            return None
        h.update(path.read_bytes())
    return h.hexdigest()


def demo_scores(sdata: SpatialData) -> str:
    """Mean per-gene Pearson of the predicted vs true cells of the synthetic slide, as JSON."""
    from ..mil.evaluate import score_against_truth

    scores = score_against_truth(sdata)
    return json.dumps({k: round(scores[k], 3) for k in ("markers", "morphology", "all")})


def summary(sdata: SpatialData) -> str:
    """One line on what the store holds at the end."""
    parts = []
    if CELLS_KEY in sdata.shapes:
        parts.append(f"{len(sdata.shapes[CELLS_KEY])} cells")
    if EXPRESSION_KEY in sdata.tables:
        parts.append(f"{sdata.tables[EXPRESSION_KEY].n_vars} genes predicted")
    return ", ".join(parts) or "no cells yet"
