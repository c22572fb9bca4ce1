"""The output store of a command, written stage by stage so that a re-run resumes.

The store is a SpatialData zarr store. Its root attributes hold, under
``attrs["scellst"]["run"]``, the command that made it and the settings of every finished stage.
A stage is finished when its settings are recorded (written last, after its elements) and its
outputs are in the store: elements, or files in a folder under ``STORE/scellst/`` (the model, a
trained encoder). On a re-run, a finished stage whose settings differ from the new ones is an
error; the finished stages up to the first unfinished one are skipped, and that stage and every
later one are run again, after their leftovers are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spatialdata as sd
import zarr
from spatialdata import SpatialData

from .._version import __version__
from ..constants import UNS_KEY
from ..io._write import (
    TABLE_BITS,
    computed_tables,
    quiet_zarr,
    replace_dir,
    round_table,
    write_store,
    written_aside,
)
from ._errors import CLIError

log = logging.getLogger("scellst")

#: Key of the run record in ``attrs["scellst"]``, and its format tag.
RECORD_KEY = "run"
RECORD_FORMAT = "scellst-cli-run"
#: Folder inside the store for what is not a SpatialData element (model, trained encoder).
FILES_DIR = "scellst"
_ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")


def plain(settings: dict) -> dict:
    """``settings`` as they read back from the store's JSON (paths as strings, lists)."""
    return json.loads(json.dumps(settings, default=str))


@dataclass
class Stage:
    """One step of a command: what it writes and the settings that determine its result."""

    name: str
    run: Callable[[], None]
    settings: dict = field(default_factory=dict)
    elements: tuple[str, ...] = ()
    #: a folder relative to the store and the files in it that the stage writes
    folder: str | None = None
    files: tuple[str, ...] = ()
    #: settings recorded for information only, not compared on a re-run
    uncompared: tuple[str, ...] = ()

    def __post_init__(self):
        self.settings = plain(self.settings)

    def outputs(self) -> str:
        shown = list(self.elements) + ([f"{self.folder}/"] if self.folder else [])
        return ", ".join(shown)


class RunStore:
    """The zarr store ``path`` written by ``scellst COMMAND``."""

    def __init__(self, path: Path, command: str):
        #: where the run writes: ``--out``, or beside it while an ``--overwrite`` run is built
        self.path = Path(path)
        self.command = command
        #: ``--out`` when the run is built aside, to replace it once finished
        self.replaces: Path | None = None

    # ---- the record ---------------------------------------------------------------------------
    def read_record(self) -> dict | None:
        """The run record, or None when ``path`` is not a store written by the command line."""
        try:
            attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        except Exception:  # not a zarr store at all
            return None
        record = attrs.get(UNS_KEY, {})
        record = record.get(RECORD_KEY) if isinstance(record, dict) else None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            return None
        return record

    def _write_record(self, record: dict) -> None:
        _write_record(self.path, record)

    # ---- opening ------------------------------------------------------------------------------
    def prepare(self, overwrite: bool) -> bool:
        """Make way for the run; return whether an earlier run of it is to be resumed."""
        if not self.path.exists():
            return False
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
            return False
        record = self.read_record()
        if record is None:
            raise CLIError(
                f"--out {self.path} exists and is not the output of a scellst command (no scellst "
                "run record in its zarr metadata). scellst does not replace it, even with "
                "--overwrite: choose another --out, or delete it yourself."
            )
        if overwrite:  # built aside: the earlier output stays until this run is finished
            self.replaces = self.path
            self.path = self.path.with_name(f".{self.path.name}.overwrite")
            shutil.rmtree(self.path, ignore_errors=True)  # an interrupted earlier --overwrite
            log.info("--overwrite: %s is replaced once this run is finished", self.replaces)
            return False
        if record.get("command") != self.command:
            raise CLIError(
                f"--out {self.path} was written by `scellst {record.get('command')}`, not "
                f"`scellst {self.command}`. Use --overwrite to replace it, or another --out."
            )
        if "input" not in record.get("stages", {}):
            log.info("%s was interrupted while its input was written: starting again", self.path)
            shutil.rmtree(self.path)
            return False
        return True

    def create(
        self,
        sdata: SpatialData,
        input_settings: dict,
        image_codec: str = "jpeg",
        table_bits: int | None = TABLE_BITS,
    ) -> SpatialData:
        """Write the input elements as a new store (beside ``path``, moved there once complete,
        with its record); return the store-backed SpatialData."""
        record = {
            "format": RECORD_FORMAT,
            "command": self.command,
            "scellst_version": __version__,
            "image_codec": image_codec,
            "table_bits": table_bits,
            "stages": {},
        }
        attrs = sdata.attrs.get(UNS_KEY)
        sdata.attrs[UNS_KEY] = {**(attrs if isinstance(attrs, dict) else {}), RECORD_KEY: record}
        with written_aside(self.path) as tmp:
            write_store(sdata, tmp, image_codec=image_codec, table_bits=table_bits)
            record["stages"]["input"] = plain(input_settings)
            _write_record(tmp, record)
        return self.read()

    def image_codec(self) -> str:
        """How the store's image was written (stores of older versions: lossless)."""
        record = self.read_record() or {}
        return record.get("image_codec", "lossless")

    def table_bits(self) -> int | None:
        """Mantissa bits of the computed tables (stores of older versions: exact)."""
        record = self.read_record() or {}
        return record.get("table_bits")

    def commit(self) -> None:
        """An ``--overwrite`` run built aside replaces the earlier output."""
        if self.replaces is not None:
            replace_dir(self.path, self.replaces)
            log.info("replaced %s", self.replaces)
            self.path, self.replaces = self.replaces, None

    def abort(self) -> None:
        """An ``--overwrite`` run that failed: its partial store goes, the earlier one stays."""
        if self.replaces is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            log.info("%s was left as it was", self.replaces)

    def read(self) -> SpatialData:
        with quiet_zarr():
            return sd.read_zarr(self.path)

    def resume(self, input_settings: dict, stages: list[Stage]) -> tuple[SpatialData, int]:
        """Check the finished stages against ``stages`` and clear what will be redone.

        Returns the store-backed SpatialData and the index of the first stage to run.
        """
        record = self.read_record()
        assert record is not None
        done = record.get("stages", {})
        first = 0
        while first < len(stages) and self._finished(stages[first], done):
            first += 1
        # every finished stage counts, also one after an unfinished stage: it would be redone
        # with the new settings, and results made otherwise are not discarded silently
        diffs = _differences("input", done["input"], plain(input_settings))
        for stage in stages:
            if self._finished(stage, done):
                diffs += _differences(
                    stage.name, done[stage.name], stage.settings, stage.uncompared
                )
        if diffs:
            raise CLIError(
                f"--out {self.path} holds finished stages made with other settings: "
                f"{'; '.join(diffs)}. Resuming would mix results of different settings. Use "
                "--overwrite to start again from scratch, or another --out."
            )
        stale = stages[first:]
        for stage in stale:
            done.pop(stage.name, None)
            self._remove_outputs(stage)
        if stale:
            self._write_record(record)
            self._consolidate()
        return self.read(), first

    def _finished(self, stage: Stage, done: dict) -> bool:
        if stage.name not in done:
            return False
        present = all(self._element_dir(name) is not None for name in stage.elements)
        if stage.folder:
            present &= all((self.path / stage.folder / f).is_file() for f in stage.files)
        return present

    # ---- writing ------------------------------------------------------------------------------
    def finish(self, sdata: SpatialData, stage: Stage) -> None:
        """Write the stage's elements, then record its settings (the stage is then finished).

        The elements are written into a store beside this one and each is moved into place
        whole, so an interrupted write leaves no partial element in the store."""
        if stage.elements:
            part = _part(sdata, stage.elements)
            bits = self.table_bits()
            self._add_elements(part, bits)
            if bits is not None:  # later stages compute from what a resumed run would read
                for key in computed_tables(part):
                    round_table(sdata.tables[key], bits)
        record = sdata.attrs[UNS_KEY][RECORD_KEY]
        record["stages"][stage.name] = stage.settings
        self._write_record(record)

    def folder(self, stage: Stage) -> Path:
        assert stage.folder is not None
        return self.path / stage.folder

    def _element_dir(self, name: str) -> Path | None:
        for kind in _ELEMENT_TYPES:
            if (self.path / kind / name).is_dir():
                return self.path / kind / name
        return None

    def _remove_outputs(self, stage: Stage) -> None:
        for name in stage.elements:
            path = self._element_dir(name)
            if path is not None:
                shutil.rmtree(path)
        if stage.folder and (self.path / stage.folder).exists():
            shutil.rmtree(self.path / stage.folder)

    def _add_elements(self, part: SpatialData, table_bits: int | None) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.stage-", dir=self.path.parent))
        try:
            write_store(
                part,
                tmp / "part.zarr",
                image_codec=self.image_codec(),
                table_bits=table_bits,
            )
            root = zarr.open_group(str(self.path), mode="r+")
            for kind, name, _ in part.gen_elements():
                root.require_group(kind)
                target = self.path / kind / name
                if target.exists():  # a leftover of an interrupted earlier attempt
                    shutil.rmtree(target)
                os.replace(tmp / "part.zarr" / kind / name, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._consolidate()

    def _consolidate(self) -> None:
        with quiet_zarr():
            zarr.consolidate_metadata(str(self.path))


def _part(sdata: SpatialData, names: tuple[str, ...]) -> SpatialData:
    """A SpatialData object of the elements ``names`` of ``sdata`` (the same objects)."""
    kinds: dict[str, dict] = {}
    for kind, name, element in sdata.gen_elements():
        if name in names:
            kinds.setdefault(kind, {})[name] = element
    with warnings.catch_warnings():  # a table of the part annotates cells already in the store
        warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
        return SpatialData(**kinds)


def _write_record(path: Path, record: dict) -> None:
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    attrs.setdefault(UNS_KEY, {})[RECORD_KEY] = record
    group.attrs.put(attrs)


def _differences(stage: str, recorded: dict, current: dict, ignore=()) -> list[str]:
    keys = sorted((set(recorded) | set(current)) - set(ignore))
    return [
        f"{stage}: {_flag(k)} {_show(recorded.get(k))} (stored) vs {_show(current.get(k))} (now)"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def _show(value: Any) -> str:
    return "(not set)" if value is None else repr(value)
