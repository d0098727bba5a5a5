"""Keys: the community key every peer shares, and each organisation's Ed25519 signing key.

The community key is a 32-byte secret agreed out of band by the organisations that exchange
intel. Identifiers leave only as HMAC-SHA256 under it, so a peer holding the key can test its
own customers' identifiers for a match, while anyone else (or a leaked bundle) learns nothing,
and a dictionary of likely e-mail addresses cannot be tried without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from distillguard.errors import BadInputError

COMMUNITY_KEY_BYTES = 32
_KEY_ID_LABEL = b"distillguard/community-key-id/v1"


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret with owner-only permissions (created so, never chmod-ed after the fact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class CommunityKey:
    """HMAC-SHA256 of identifiers under the shared community secret."""

    secret: bytes

    @classmethod
    def generate(cls) -> "CommunityKey":
        return cls(secrets.token_bytes(COMMUNITY_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, source: str = "community key") -> "CommunityKey":
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            raise BadInputError("community key is not base64", source=source) from None
        if len(raw) != COMMUNITY_KEY_BYTES:
            raise BadInputError(f"community key must be {COMMUNITY_KEY_BYTES} bytes, got {len(raw)}", source=source)
        return cls(raw)

    @classmethod
    def load(cls, path: str | Path) -> "CommunityKey":
        try:
            text = Path(path).read_text(encoding="ascii")
        except FileNotFoundError:
            raise BadInputError("no such community key file", source=str(path)) from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise BadInputError("not a community key file (base64 text)", source=str(path)) from None
        return cls.from_text(text, str(path))

    def to_text(self) -> str:
        return base64.b64encode(self.secret).decode("ascii") + "\n"

    @property
    def key_id(self) -> str:
        """A public name for the key (peers check they hash with the same one; reveals nothing)."""
        return hmac.new(self.secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def digest(self, kind: str, value: str) -> str:
        """HMAC-SHA256 hex of one normalised identifier; ``kind`` separates namespaces."""
        return hmac.digest(self.secret, f"{kind}\x00{value}".encode("utf-8"), "sha256").hex()

    @cached_property
    def _pads(self) -> tuple:
        block = self.secret.ljust(64, b"\0")
        return (hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block)))

    def digests(self, kind: str, values: list[str]) -> list[str]:
        """:meth:`digest` of many values: the same HMAC (RFC 2104) from precomputed key pads, 2x faster."""
        inner, outer = self._pads
        prefix = f"{kind}\x00".encode("utf-8")
        out = []
        for value in values:
            i = inner.copy()
            i.update(prefix + value.encode("utf-8"))
            o = outer.copy()
            o.update(i.digest())
            out.append(o.hexdigest())
        return out

    def digest32(self, label: bytes) -> int:
        """A keyed 32-bit hash (template shingles)."""
        return int.from_bytes(hmac.digest(self.secret, label, "sha256")[:4], "little")


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The public key as one base64 line (what a peer registers)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str, source: str = "public key") -> Ed25519PublicKey:
    """A peer's public key: one base64 line of the 32 raw bytes, or a PEM block."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise BadInputError("not an Ed25519 public key", source=source)
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise BadInputError("not an Ed25519 public key (base64 of 32 bytes, or PEM)", source=source) from None


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> "SigningKey":
        try:
            data = Path(path).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except FileNotFoundError:
            raise BadInputError("no such signing key file", source=str(path)) from None
        except (ValueError, TypeError):
            raise BadInputError("not a PEM private key", source=str(path)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadInputError("not an Ed25519 private key", source=str(path))
        return cls(key)

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return public_key_id(self.public)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode("ascii")


def verify(public: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), message)
        return True
    except (InvalidSignature, ValueError):
        return False
