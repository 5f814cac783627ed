"""Where the client commands write: results to stdout (JSON with --json), progress and notes to stderr.

Progress bars and live views are drawn only when both stdout and stderr are terminals; piped or redirected,
a command prints plain lines and its result, never a redrawn bar.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table


def interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


# Piped, lines are as long as they need to be (rich would otherwise wrap tables at 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 10_000)


def print_json(value: Any, indent: int | None = 2) -> None:
    sys.stdout.write(json.dumps(value, indent=indent) + "\n")
    sys.stdout.flush()


def transfer_progress() -> Progress:
    """Bytes done of the total, the rate and the time left; silent unless interactive()."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err, disable=not interactive(),
    )  # fmt: skip


def when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def table(columns: list[str], rows: list[list[Any]]) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")  # an id is wrapped if it must be, never cut short
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    return grid
