"""API keys → accounts: from a ``--keys`` JSON file, the store's ``api_keys`` table, or the admin API.

The file is one JSON object; each value is the account name, or an object with ``account`` and
optional identity fields (``email``, ``payment``, ``org``, ``created``, ``asn``) used by hydra clustering
and, hashed, to match peers' intel::

    {"sk-live-abc": "acme", "sk-live-def": {"account": "bob", "email": "bob@example.com"}}

Only a SHA-256 of each key is held in memory and in the store; events carry a short key id.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import BadInputError, load_json_file

IDENTITY_FIELDS = ("email", "payment", "org", "created", "asn")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    account: str
    key_id: str                      # safe to log: "key-" + 10 hex digits of the key's SHA-256
    identity: dict[str, Any] | None = None


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_entry(value: Any, where: str) -> tuple[str, dict[str, Any] | None]:
    """Validate one key's value: an account name or ``{"account": ..., identity fields}``."""
    if isinstance(value, str):
        if not value.strip():
            raise BadInputError("account name is empty", source=where)
        return value, None
    if isinstance(value, dict):
        account = value.get("account")
        if not isinstance(account, str) or not account.strip():
            raise BadInputError("expected a non-empty string", source=where, field="account")
        identity = {k: value[k] for k in IDENTITY_FIELDS if value.get(k) is not None}
        for k, v in identity.items():
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise BadInputError("expected a string or a number", source=where, field=k)
        return account, identity or None
    raise BadInputError("expected an account name or an object with 'account'", source=where)


class KeyRing:
    """Thread-safe map from API key (by hash) to :class:`KeyInfo`."""

    def __init__(self) -> None:
        self._by_hash: dict[str, KeyInfo] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_hash)

    def infos(self) -> list[KeyInfo]:
        with self._lock:
            return list(self._by_hash.values())

    def lookup(self, key: str) -> KeyInfo | None:
        return self._by_hash.get(key_sha256(key))

    def add_hashed(self, digest: str, account: str, identity: dict[str, Any] | None = None) -> KeyInfo:
        info = KeyInfo(account=account, key_id="key-" + digest[:10], identity=identity)
        with self._lock:
            self._by_hash[digest] = info
        return info

    def add(self, key: str, account: str, identity: dict[str, Any] | None = None) -> KeyInfo:
        return self.add_hashed(key_sha256(key), account, identity)

    def revoke(self, key: str) -> bool:
        with self._lock:
            return self._by_hash.pop(key_sha256(key), None) is not None

    def load_file(self, path: str | Path) -> int:
        path = Path(path)
        data = load_json_file(path, "keys file")
        if not isinstance(data, dict):
            raise BadInputError("expected a JSON object mapping API keys to accounts", source=str(path))
        for key, value in data.items():
            if not key:
                raise BadInputError("an API key is empty", source=str(path))
            masked = key[:6] + "…" if len(key) > 6 else key
            account, identity = check_entry(value, f"{path} (key {masked})")
            self.add(key, account, identity)
        return len(data)

    def load_store(self, rows: list[tuple[str, str, str | None]]) -> int:
        for digest, account, identity in rows:
            self.add_hashed(digest, account, orjson.loads(identity) if identity else None)
        return len(rows)
