"""`distillguard demo`: the whole story end to end (the steps live in distillguard.demo)."""

from __future__ import annotations

from pathlib import Path

import typer

from distillguard.console import console


def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="Working directory for the demo's files."),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """The whole story end to end on embedded defaults."""
    from distillguard.demo import run_demo

    run_demo(out, seed=seed, console=console)
