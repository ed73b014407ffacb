"""Run a module under cProfile timed by the process's CPU time, not the wall clock.

    python benchmarks/cpu_profile.py OUT.prof MODULE [ARGS...]

``python -m cProfile`` times with the wall clock: on a shared core every write that wakes the
other side of a loopback connection may switch this process out, and the time it waited is
charged to the call that wrote. Timed by ``time.process_time`` a profile shows where this
process's own CPU goes, which is what the benchmark's CPU per request measures. The statistics
are written when the module returns or exits (SIGTERM ends the router so).
"""

from __future__ import annotations

import cProfile
import os
import runpy
import sys
import time


def main() -> None:
    out, module, *arguments = sys.argv[1:]
    sys.argv = [module, *arguments]
    # The package of the checkout it runs in (router_bench starts it there), as ``python -m``
    # run from that directory finds it: another commit's worktree too.
    sys.path[0] = os.getcwd()
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
