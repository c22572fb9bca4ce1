"""The package version, in a module of its own so that any module can import it without
importing the package (``from .. import __version__`` would make an import circle)."""

__version__ = "0.1.0"
