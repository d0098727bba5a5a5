"""docs/cli-reference.md is generated from --help and must match the CLI (every command documented)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_command_is_documented():
    from distillguard.cli import app
    from typer.main import get_command

    text = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    group = get_command(app)
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for sub in subcommands:
                assert f"## `distillguard {name} {sub}`" in text
        else:
            assert f"## `distillguard {name}`" in text
