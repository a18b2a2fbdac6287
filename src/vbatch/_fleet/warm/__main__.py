"""``python -m vbatch._fleet.warm``: a keeper (keeper.py), started by ``control.spawn_keeper``.
A module of its own, so that running it does not import keeper.py twice (the package's
``__init__`` imports it)."""

import sys

from .keeper import main

sys.exit(main())
