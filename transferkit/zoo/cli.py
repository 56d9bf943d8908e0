"""Moved to :mod:`transferkit.cli.zoo`; this old import path re-exports it for one release
(``python -m transferkit.zoo.cli ARGS`` still runs ``transferkit zoo ARGS``)."""

import sys

from transferkit.cli.zoo import add_parser, main

__all__ = ["add_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
