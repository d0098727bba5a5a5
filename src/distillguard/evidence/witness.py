"""Witnessing: cosign a peer's checkpoint only if it extends the last one we cosigned.

A witness keeps, per log it watches, the last checkpoint it cosigned (size and root) in
``STATE/<sha256(origin)>.json``. Given a new checkpoint and a consistency proof from that one, it
checks the log's signature, refuses a smaller tree or a different root at the same size (a fork
or a rollback), verifies the RFC 9162 consistency proof, then adds a C2SP ``tlog-cosignature``.
The first checkpoint it sees of a log is trusted as the start (trust on first use), which is
why several independent witnesses matter: a rewritten history needs all of them to agree.

Transport: checkpoints travel between peers as STIX custom objects (``x-distillguard-checkpoint``:
the note and the consistency proof) in a TAXII collection of the intel channel; see
:func:`checkpoint_object` and docs/evidence.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import DistillguardError
from distillguard.evidence.merkle import verify_consistency
from distillguard.evidence.note import NoteError, open_checkpoint

CHECKPOINT_TYPE = "x-distillguard-checkpoint"


class WitnessError(DistillguardError):
    """A checkpoint the witness refuses to cosign."""


class Witness:
    def __init__(self, state_dir: str | Path, name: str, signing_key: Any, log_keys: dict[str, Any]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.private = signing_key.private
        self.log_keys = log_keys

    def _state_path(self, origin: str) -> Path:
        return self.dir / (hashlib.sha256(origin.encode("utf-8")).hexdigest()[:32] + ".json")

    def last(self, origin: str) -> tuple[int, bytes] | None:
        try:
            data = orjson.loads(self._state_path(origin).read_bytes())
            return int(data["size"]), base64.b64decode(data["root"])
        except FileNotFoundError:
            return None

    def cosign(self, note_text: str, proof_hex: list[str], *, now: int | None = None) -> str:
        try:
            from distillguard.evidence.note import Checkpoint, SignedNote

            origin = Checkpoint.parse(SignedNote.parse(note_text).text).origin
            if origin not in self.log_keys:
                raise WitnessError(f"not a log we witness: {origin!r}")
            cp, note = open_checkpoint(note_text, self.log_keys[origin], origin=origin)
        except NoteError as exc:
            raise WitnessError(f"refused: {exc}") from None
        last = self.last(origin)
        if last is not None:
            size, root = last
            if cp.size < size:
                raise WitnessError(f"refused: {origin} at size {cp.size} is older than the {size} we cosigned (rollback)")
            try:
                proof = [bytes.fromhex(h) for h in proof_hex]
            except ValueError:
                raise WitnessError("refused: consistency proof is not hex") from None
            if not verify_consistency(size, cp.size, proof, root, cp.root):
                raise WitnessError(f"refused: {origin} at size {cp.size} is not an append-only extension of the "
                                   f"checkpoint at size {size} we cosigned (fork or rewritten history)")
        note.cosign(self.name, self.private, int(time.time()) if now is None else now)
        path = self._state_path(origin)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"origin": origin, "size": cp.size, "root": base64.b64encode(cp.root).decode()}))
        os.replace(tmp, path)
        return note.render()


def checkpoint_object(note: str, *, consistency_from: int | None, proof: list[bytes], created: str,
                      identity_id: str | None = None) -> dict[str, Any]:
    """A STIX 2.1 custom object carrying a signed checkpoint and its consistency proof."""
    obj: dict[str, Any] = {"type": CHECKPOINT_TYPE, "spec_version": "2.1", "id": f"{CHECKPOINT_TYPE}--{uuid.uuid4()}",
                           "created": created, "modified": created, "note": note,
                           "consistency_from": consistency_from, "consistency_proof": [p.hex() for p in proof]}
    if identity_id:
        obj["created_by_ref"] = identity_id
    return obj
