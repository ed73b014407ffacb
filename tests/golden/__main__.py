"""``python -m tests.golden update``: write the golden renders again (see tests/golden)."""

from __future__ import annotations

import sys

from tests.golden import REPO, UPDATE_COMMAND, update


def main(argv: list[str]) -> int:
    if argv != ["update"]:
        print(f"usage: {UPDATE_COMMAND}", file=sys.stderr)
        return 2
    written = update()
    print(f"wrote {len(written)} golden files under {REPO / 'tests' / 'golden'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
