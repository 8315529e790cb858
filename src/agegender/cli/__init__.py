"""The ``agegender`` command line: one module per command family, each a thin layer over the library."""

from agegender.cli.main import main

__all__ = ["main"]
