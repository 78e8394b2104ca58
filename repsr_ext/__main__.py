"""``python -m repsr_ext``: the ``repsr`` command line (see repsr_ext/cli.py)."""
import sys

from .cli import main

sys.exit(main())
