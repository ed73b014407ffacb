"""``python -m hxp_runtime.lab supervise …``: a lab host's supervisor (see supervisor.py)."""

import sys

from hxp_runtime.lab.supervisor import main

sys.exit(main())
