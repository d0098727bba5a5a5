"""The allowlist file: authorised account ids, one per line ('#' starts a comment line)."""

from __future__ import annotations

from pathlib import Path

from distillguard.errors import BadInputError


def read_allowlist(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError("no such allowlist file", source=str(path)) from None
    except UnicodeDecodeError:
        raise BadInputError("allowlist is not UTF-8 text", source=str(path)) from None
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
