"""``python -m unhardcoded``: the same command line as the ``unhardcoded`` script."""

import sys

from .cli import main

sys.exit(main())
