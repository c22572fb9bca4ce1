"""The error the command line reports without a traceback."""

from __future__ import annotations


class CLIError(Exception):
    """A problem with the command's options or its output store, with the fix in the message."""
