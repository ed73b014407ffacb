"""``python -m hxp_runtime.router``: the same as ``hxp-router``."""

import sys

from hxp_runtime.router.server import main

sys.exit(main())
