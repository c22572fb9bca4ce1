"""Options from a TOML file (``--config``), merged under the command-line flags."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from ._errors import CLIError

#: Options that cannot come from a config file.
_NOT_IN_FILE = {"help", "config"}


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options of a subcommand that a config file may set, by key (``dest``)."""
    return {
        action.dest: action
        for action in parser._actions
        if action.option_strings and action.dest not in _NOT_IN_FILE
    }


def read_config(path: Path, parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    """Read a TOML config file into option values, converted and checked like flags.

    Keys are option names with ``_`` for ``-`` (``max_epochs``); they may sit at the top level
    or in a ``[COMMAND]`` table (``[run]``), which wins over the top level.
    """
    if not path.is_file():
        raise CLIError(f"Config file {str(path)!r} not found.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"Config file {str(path)!r} is not valid TOML: {e}.") from e
    section = data.pop(command, {})
    for other in ("run", "predict", "demo"):
        data.pop(other, None)  # tables of the other commands
    if not isinstance(section, dict):
        raise CLIError(f"Config file {str(path)!r}: {command!r} must be a table ([{command}]).")
    data.update(section)
    options = file_options(parser)
    unknown = sorted(k for k in data if k not in options)
    if unknown:
        raise CLIError(
            f"Config file {str(path)!r}: unknown option(s) {', '.join(unknown)} for "
            f"`scellst {command}`. Valid keys: {', '.join(sorted(options))}."
        )
    return {key: _convert(options[key], value, key, path) for key, value in data.items()}


def _convert(action: argparse.Action, value: Any, key: str, path: Path) -> Any:
    where = f"Config file {str(path)!r}, {key}"
    if action.nargs == 0:  # a flag such as --quiet
        if not isinstance(value, bool):
            raise CLIError(f"{where}: expected true or false, got {value!r}.")
        return value
    if isinstance(action, argparse._AppendAction):  # a repeatable KEY=VALUE flag
        if isinstance(value, dict):
            value = [f"{k}={_toml_scalar(v, where)}" for k, v in value.items()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CLIError(f'{where}: expected a list of "KEY=VALUE" strings or a table.')
        return list(value)
    if isinstance(value, list):
        if key not in ("genes", "context_um"):
            raise CLIError(f"{where}: expected a single value, got a list {value!r}.")
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool | dict) or not isinstance(value, str | int | float):
        raise CLIError(f"{where}: expected a value like the flag's, got {value!r}.")
    kind = action.type or str
    if kind is int and not isinstance(value, int):
        raise CLIError(f"{where}: expected an integer, got {value!r}.")
    if kind is float and not isinstance(value, int | float):
        raise CLIError(f"{where}: expected a number, got {value!r}.")
    if kind in (str, Path) and not isinstance(value, str):
        raise CLIError(f"{where}: expected a string, got {value!r}.")
    converted = kind(value)
    if action.choices is not None and converted not in action.choices:
        raise CLIError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}.")
    return converted


def _toml_scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise CLIError(f"{where}: expected numbers, strings or booleans, got {value!r}.")
