"""``python -m mozi.host.cli``: the ``mozi`` command."""

import sys

from mozi.host.cli import main

sys.exit(main())
