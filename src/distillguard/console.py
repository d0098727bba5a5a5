"""The terminal every command prints to: results on stdout, progress and notes on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=False)
err_console = Console(stderr=True)


def progress_bar() -> Progress:
    """A transient progress bar counting events on stderr (off when stderr is not a terminal)."""
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:,} events"), TimeElapsedColumn(), console=err_console,
                    transient=True, disable=not err_console.is_terminal)
