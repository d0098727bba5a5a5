"""Checkpoints as C2SP signed notes, and witness cosignatures.

A checkpoint (C2SP ``tlog-checkpoint``) is the note text::

    <origin>\\n
    <tree size, decimal>\\n
    <base64 of the 32-byte root hash>\\n

followed by a blank line and one signature line per signer (C2SP ``signed-note``)::

    — <key name> <base64(4-byte key id || signature)>\\n

The log's own signature is an Ed25519 signature (type 0x01) over the text; its key id is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]``. A witness adds a C2SP ``tlog-cosignature``
line (type 0x04): the signed message is ``cosignature/v1\\ntime <T>\\n`` followed by the checkpoint
text, and the line carries ``key id || T (8 bytes, big-endian) || signature``. Keys are the Ed25519
keys the intel module manages (:mod:`distillguard.intel.keys`); the key name of a log signature is
the origin, that of a cosignature the witness's name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from distillguard.errors import DistillguardError

SIG_ED25519 = 0x01
SIG_COSIGNATURE = 0x04
DASH = "\u2014"
MAX_NOTE_BYTES = 1 << 16


class NoteError(DistillguardError):
    """A note or checkpoint that does not parse or does not verify."""


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, public: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + _raw(public)).digest()[:4]


def vkey(name: str, public: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> str:
    """The C2SP verifier key string ``<name>+<hex key id>+<base64(type || key)>``."""
    return f"{name}+{key_id(name, public, sig_type).hex()}+" + base64.b64encode(
        bytes([sig_type]) + _raw(public)).decode()


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"bad key name {name[:60]!r} (no spaces or '+')")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("checkpoint text must be origin, size and root hash lines, each ending in a newline")
        origin, size_s, root_b64, *ext = lines[:-1]
        if not origin or not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")) or len(size_s) > 20:
            raise NoteError("checkpoint: bad origin or tree size line")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError):
            raise NoteError("checkpoint: root hash is not base64") from None
        if len(root) != 32 or base64.b64encode(root).decode() != root_b64:
            raise NoteError("checkpoint: root hash is not 32 bytes of canonical base64")
        if any(not line for line in ext):
            raise NoteError("checkpoint: empty extension line")
        return cls(origin, int(size_s), root, tuple(ext))


@dataclass
class SignedNote:
    text: str
    signatures: list[tuple[str, bytes]] = field(default_factory=list)   # (key name, base64-decoded payload)

    def render(self) -> str:
        lines = "".join(f"{DASH} {name} {base64.b64encode(sig).decode()}\n" for name, sig in self.signatures)
        return self.text + "\n" + lines

    @classmethod
    def parse(cls, note: str) -> "SignedNote":
        if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
            raise NoteError("note too large")
        if not note.endswith("\n") or "\n\n" not in note:
            raise NoteError("not a signed note (text, a blank line, signature lines)")
        cut = note.rfind("\n\n")
        text, sig_block = note[:cut + 1], note[cut + 2:]
        sigs: list[tuple[str, bytes]] = []
        for line in sig_block.split("\n")[:-1]:
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != DASH:
                raise NoteError("malformed signature line")
            try:
                payload = base64.b64decode(parts[2], validate=True)
            except (binascii.Error, ValueError):
                raise NoteError("signature line is not base64") from None
            if base64.b64encode(payload).decode() != parts[2]:
                raise NoteError("signature line is not canonical base64")
            if len(payload) < 5:
                raise NoteError("signature line too short")
            sigs.append((parts[1], payload))
        if not sigs:
            raise NoteError("note has no signatures")
        return cls(text, sigs)

    def sign(self, name: str, private: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.signatures.append((name, key_id(name, private.public_key()) + private.sign(self.text.encode("utf-8"))))

    def verify(self, name: str, public: Ed25519PublicKey) -> bool:
        kid = key_id(name, public)
        for signer, payload in self.signatures:
            if signer == name and payload[:4] == kid:
                try:
                    public.verify(payload[4:], self.text.encode("utf-8"))
                    return True
                except InvalidSignature:
                    return False
        return False

    # -- C2SP tlog-cosignature/v1 ---------------------------------------------------------------
    def cosign(self, name: str, private: Ed25519PrivateKey, timestamp: int) -> None:
        _check_name(name)
        msg = _cosig_message(self.text, timestamp)
        payload = key_id(name, private.public_key(), SIG_COSIGNATURE) + struct.pack(">Q", timestamp) + private.sign(msg)
        self.signatures = [s for s in self.signatures if s[0] != name] + [(name, payload)]

    def cosignature(self, name: str, public: Ed25519PublicKey) -> int | None:
        """The time of a valid cosignature by ``name`` under ``public``, or None."""
        kid = key_id(name, public, SIG_COSIGNATURE)
        for signer, payload in self.signatures:
            if signer == name and payload[:4] == kid and len(payload) == 4 + 8 + 64:
                (ts,) = struct.unpack(">Q", payload[4:12])
                try:
                    public.verify(payload[12:], _cosig_message(self.text, ts))
                    return ts
                except InvalidSignature:
                    return None
        return None


def _cosig_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text.encode("utf-8")


def sign_checkpoint(cp: Checkpoint, private: Ed25519PrivateKey) -> str:
    note = SignedNote(cp.text())
    note.sign(cp.origin, private)
    return note.render()


def open_checkpoint(note_text: str, public: Ed25519PublicKey, origin: str | None = None) -> tuple[Checkpoint, SignedNote]:
    """Parse a signed checkpoint and check the log's signature; raises :class:`NoteError`."""
    note = SignedNote.parse(note_text)
    cp = Checkpoint.parse(note.text)
    if origin is not None and cp.origin != origin:
        raise NoteError(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    if not note.verify(cp.origin, public):
        raise NoteError(f"checkpoint signature for {cp.origin!r} does not verify under the given key")
    return cp, note
