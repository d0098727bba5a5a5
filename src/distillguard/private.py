"""Files that hold traffic (prompts, answers, e-mail addresses, payment fingerprints) or secrets
are created owner-only: 0600 files in 0700 directories, whatever the process umask.

Existing directories keep their mode (an operator may have chosen it); new ones are 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing directory is left as it is."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)   # mkdir's mode is filtered by the umask
    return path


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """``os.open`` with mode 0600 for a new file; returns the descriptor."""
    fd = os.open(path, flags, FILE_MODE)
    return fd


def write_private(path: str | Path, data: bytes, *, sync: bool = False) -> None:
    """Replace ``path`` atomically with ``data`` (a temporary file renamed over it), mode 0600."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)   # a leftover .tmp from an older run may have had another mode
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def restrict(path: str | Path) -> None:
    """Make an existing file owner-only (files other libraries create, e.g. DuckDB's)."""
    try:
        os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass
