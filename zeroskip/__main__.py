"""``python -m zeroskip`` is the ``zeroskip`` command."""

import sys

from .cli import main

sys.exit(main())
