"""The one entry point: ``distillguard``. It only composes: each capability package owns its
commands (``distillguard/<package>/commands.py``); this module registers them, in the order the
help and docs/cli-reference.md list them.

Errors the user can fix (bad input, bad options) print one line and exit 2; never a traceback.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.markup import escape

from distillguard import __version__
from distillguard.compare import commands as compare_commands
from distillguard.console import console, err_console
from distillguard.detect import commands as detect_commands
from distillguard.demo import commands as demo_command
from distillguard.errors import DistillguardError
from distillguard.evidence import commands as evidence_commands
from distillguard.gateway import commands as gateway_commands
from distillguard.intel import commands as intel_commands
from distillguard.lab import commands as lab_commands
from distillguard.report import commands as report_commands
from distillguard.serve import commands as serve_commands
from distillguard.store import commands as store_commands
from distillguard.watermark import commands as watermark_commands
from distillguard.web import commands as web_commands

app = typer.Typer(help="Detect and deter adversarial distillation of language models served through an API.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"distillguard {__version__}")


for command in (store_commands.ingest, store_commands.export, store_commands.stats, detect_commands.scan,
                report_commands.report, web_commands.web, gateway_commands.gateway, serve_commands.serve,
                compare_commands.compare, demo_command.demo):
    app.command()(command)

app.add_typer(lab_commands.app, name="lab")
app.add_typer(detect_commands.baseline_app, name="baseline")
app.add_typer(watermark_commands.app, name="watermark")
app.add_typer(intel_commands.intel_app, name="intel")
app.add_typer(evidence_commands.evidence_app, name="evidence")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: turns our errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="distillguard")
    except DistillguardError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
