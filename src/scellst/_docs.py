"""Docstring fragments shared by several public functions, written once (as scanpy does).

A docstring line that holds only ``{name}`` is replaced by the fragment ``name``, indented like
that line::

    @doc_params(ax_show_save=AX_SHOW_SAVE)
    def cells(...):
        \"\"\"...
        Parameters
        ----------
        {ax_show_save}
        \"\"\"

Other braces in docstrings (``f"{key_added}_table"``) are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: ``ax``/``show``/``save`` of the plots that draw into one Axes.
AX_SHOW_SAVE = """\
ax, show, save
    Axes to draw in (a new figure otherwise); call ``plt.show()`` and return None (default:
    when no ``ax`` was given and not saving; ``show=False`` returns the Axes); path to save the
    figure to (150 dpi)."""

#: ``show``/``save`` of the plots that draw a grid of panels.
GRID_SHOW_SAVE = """\
show, save
    Call ``plt.show()`` and return None (default: when the figure is new and not saved;
    ``show=False`` returns the figure); path to save the figure to (150 dpi)."""

#: ``overwrite`` of the functions that add a table named ``key_added``.
OVERWRITE_TABLE = """\
overwrite
    Replace an existing table ``key_added``."""

#: ``overwrite`` of the functions that add an element named ``key_added``.
OVERWRITE_ELEMENT = """\
overwrite
    Replace an existing element ``key_added``."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.M)


def doc_params(**fragments: str) -> Callable[[F], F]:
    """Decorator: fill the ``{name}`` lines of the function's docstring with ``fragments``."""

    def decorate(obj: F) -> F:
        used = set()

        def fill(match: re.Match) -> str:
            name, indent = match["name"], match["indent"]
            if name not in fragments:
                return match[0]
            used.add(name)
            lines = fragments[name].splitlines()
            return "\n".join(indent + line if line else line for line in lines)

        obj.__doc__ = _PLACEHOLDER.sub(fill, obj.__doc__ or "")
        if used != set(fragments):  # a fragment asked for but with no line of its own
            raise ValueError(f"{obj.__qualname__}: no line {{name}} for {set(fragments) - used}")
        return obj

    return decorate
