"""``python -m spectnode`` is the same as the ``spectnode`` command."""

import sys

from .cli import main

sys.exit(main())
