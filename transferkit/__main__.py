"""``python -m transferkit`` is the ``transferkit`` command."""

import sys

from transferkit.cli import main

sys.exit(main())
