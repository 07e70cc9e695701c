"""The terminal the CLI's tables go to."""

from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    """A terminal's own width; piped or redirected, room for wide tables (rich would assume 80
    columns and cut model names and answers: a file has no width)."""
    return Console() if sys.stdout.isatty() else Console(width=200)
