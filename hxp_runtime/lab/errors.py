"""What every part of the lab reports through: its error and its progress callback."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


class LabError(Exception):
    """The lab cannot do what was asked; the message says why and what to do."""
