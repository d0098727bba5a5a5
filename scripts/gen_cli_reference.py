"""Write docs/cli-reference.md from the CLI's own --help output (run after changing a command).

Usage: .venv/bin/python scripts/gen_cli_reference.py [--check]

With --check it exits 1 when the file is out of date (the test suite runs that check).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli-reference.md"


def commands() -> list[list[str]]:
    """Every command and sub-command of the CLI, read from the Typer app (none can be forgotten)."""
    from typer.main import get_command

    from distillguard.cli import app

    out = [["--help"]]
    for name, command in get_command(app).commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            out += [[name, sub, "--help"] for sub in subcommands]
        else:
            out.append([name, "--help"])
    return out


def render() -> str:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    parts = ["# Command-line reference", "",
             "Generated from `distillguard ... --help` by `scripts/gen_cli_reference.py`; do not edit by hand.", ""]
    for args in commands():
        out = subprocess.run([sys.executable, "-m", "distillguard", *args], capture_output=True, text=True, env=env,
                             check=True).stdout
        title = " ".join(["distillguard", *args[:-1]])
        lines = [line.rstrip() for line in out.splitlines()]
        parts += [f"## `{title}`", "", "```", *lines, "```", ""]
    return "\n".join(parts)


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            sys.exit("docs/cli-reference.md is out of date: run .venv/bin/python scripts/gen_cli_reference.py")
        return
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
