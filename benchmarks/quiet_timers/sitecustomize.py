"""Spaces out the router's state publisher for router_instructions.py (not for production).

router_instructions.py puts this directory on the router's PYTHONPATH under callgrind, and
Python imports this module at start-up. The worker publishes its view of the backends every
0.1 s of wall time while requests change it; valgrind runs the router ~50x slower and the
machine's load moves that further, so those writes would be counted as a varying share of
every request. Every 30 s instead leaves the request path as it is and the measured windows
nearly free of it. A checkout from before the publisher (2026-11-21) has nothing to change.
"""

import contextlib

with contextlib.suppress(ImportError):
    from hxp_runtime.router import app

    app.SHARE_INTERVAL_S = 30.0
