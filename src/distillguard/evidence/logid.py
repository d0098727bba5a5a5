"""A log id: names one Merkle tree and is its checkpoints' origin line (shared by the store's trees
and the gateway's own tree, so neither module imports the other)."""

from __future__ import annotations

from distillguard.errors import BadInputError


def check_log_id(log_id: str) -> str:
    if not log_id or len(log_id) > 200 or any(c.isspace() for c in log_id) or "+" in log_id:
        raise BadInputError(f"bad log id {log_id[:60]!r}: non-empty, at most 200 characters, no spaces or '+'")
    return log_id
