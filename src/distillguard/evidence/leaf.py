"""The leaf of one exchange: salted per-field commitments over the event record's canonical form.

Canonical form. The committed fields are the record's own fields (the derived columns the store
adds, ``prompt_text`` and the like, are functions of ``request`` and are not committed), each as
bytes, in this order:

========================================  ==================================================
``id account key endpoint model ip``       UTF-8 of the string
``user_agent``
``ts``                                     decimal integer microseconds since the epoch (UTC),
                                           ``round(ts * 1e6)`` as the store keeps it
``status``                                 decimal integer
``request response identity usage``        the JSON text the store keeps: compact, object
``extra``                                  members in the order received, numbers in orjson's
                                           shortest round-trip form (``extra`` = every field
                                           outside the schema, absent when there is none)
========================================  ==================================================

A missing value is distinct from any present one. The fields split in two:

* **clear** (``id ts account endpoint model status usage``: who, when, which endpoint and model,
  the outcome; never personal beyond the account id the claim is about), encoded in the leaf as
  ``0x00`` (absent) or ``0x01 || 4-byte big-endian length || value``;
* **committed** (``key ip user_agent identity request response extra``: what may be personal and
  can be redacted), each as a salted hash::

    C_f = SHA-256("dg-field/v2" 0x00 || f || 0x00 || salt_f || value)       present
    C_f = SHA-256("dg-field/v2" 0x00 || f || 0x00 || 0x00)                  absent (a constant)

The leaf data is ``"dg-event/v2\\n" || prev || clear fields || C_key || ... || C_extra``, hashed as an
RFC 6962 leaf. ``prev`` is the index, in the same tree, of the same account's previous leaf (8 bytes
big-endian; all ones for its first): the account's exchanges form a chain, so a package that leaves
one out (even one its signer re-signed) breaks the chain.

Salts are 16 bytes each: the i-th committed field's salt is bytes ``16i .. 16i+15`` of
``SHAKE256(seed)`` with the event's seed ``HMAC-SHA256(salt key, "dg-salt/v2" 0x00 || id)`` (one salt
reveals nothing about another); the salt key is derived from the log's Ed25519 signing key, so the
gateway (at append) and the store (from stored rows) derive the same salts while nobody without
the key can. Revealing a field means disclosing its value and salt; redacting it means disclosing
only ``C_f``: the leaf still recomputes, and the salt keeps a low-entropy value (an IP address, an
e-mail) from being guessed from its commitment. An absent field's commitment is a constant, so a
redacted field that was absent shows as absent.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Iterator

import orjson
import pyarrow as pa

from distillguard.events.schema import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, KNOWN_FIELDS, derive_id, parse_ts

FIELDS = ("id", "ts", "account", "key", "endpoint", "model", "ip", "user_agent", "status",
          "request", "response", "identity", "usage", "extra")
CLEAR_FIELDS = ("id", "ts", "account", "endpoint", "model", "status", "usage")
COMMITTED_FIELDS = ("key", "ip", "user_agent", "identity", "request", "response", "extra")
LEAF_PREFIX = b"dg-event/v2\n"
_FIELD_PREFIX = {f: b"dg-field/v2\x00" + f.encode() + b"\x00" for f in COMMITTED_FIELDS}
_ABSENT = {f: hashlib.sha256(_FIELD_PREFIX[f] + b"\x00").digest() for f in COMMITTED_FIELDS}
_SALT_LABEL = b"dg-salt/v2\x00"
_SALT_BYTES = 16 * len(COMMITTED_FIELDS)
_sha256 = hashlib.sha256
_shake = hashlib.shake_256
_NO_PREV = b"\xff" * 8


def salt_key_from_private(private_raw: bytes) -> bytes:
    """The commitment salt key of a log, derived (one-way) from its Ed25519 private key bytes."""
    return hmac.digest(private_raw, b"distillguard evidence salt key v1", "sha256")


def salts(salt_key: bytes, event_id: str) -> dict[str, bytes]:
    """The committed fields' salts of one event."""
    seed = hmac.digest(salt_key, _SALT_LABEL + event_id.encode("utf-8"), "sha256")
    stream = _shake(seed).digest(_SALT_BYTES)
    return {f: stream[16 * i:16 * i + 16] for i, f in enumerate(COMMITTED_FIELDS)}


def commitment(name: str, salt: bytes, value: bytes | None) -> bytes:
    if value is None:
        return _ABSENT[name]
    return _sha256(_FIELD_PREFIX[name] + salt + value).digest()


def clear_bytes(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "big") + value


def prev_bytes(prev: int | None) -> bytes:
    """The account's previous leaf in this tree, 8 bytes big-endian; all ones when it has none."""
    return _NO_PREV if prev is None else prev.to_bytes(8, "big")


def leaf_data(prev: int | None, clear: list[bytes | None], commitments: list[bytes]) -> bytes:
    return LEAF_PREFIX + prev_bytes(prev) + b"".join(map(clear_bytes, clear)) + b"".join(commitments)


def leaf_hash_of(values: dict[str, bytes | None], salt_key: bytes, prev: int | None = None) -> bytes:
    s = salts(salt_key, (values["id"] or b"").decode("utf-8"))
    data = leaf_data(prev, [values[f] for f in CLEAR_FIELDS], [commitment(f, s[f], values[f]) for f in COMMITTED_FIELDS])
    return _sha256(b"\x00" + data).digest()


def _text(value: Any) -> bytes | None:
    return None if value is None else str(value).encode("utf-8")


def values_from_record(obj: dict[str, Any]) -> dict[str, bytes | None]:
    """Field bytes of a record as the gateway logs it (a dict that ``event_from_obj`` accepts,
    ``ts`` in epoch seconds); identical to :func:`values_from_table` on the row the store keeps."""
    ts = parse_ts(obj["ts"])
    endpoint = obj.get("endpoint")
    request = obj["request"]
    if endpoint is None:
        endpoint = COMPLETIONS_ENDPOINT if ("prompt" in request and "messages" not in request) else CHAT_ENDPOINT
    event_id = obj.get("id")
    if event_id is None or event_id == "":
        event_id = derive_id(ts, obj["account"], request, obj.get("response"))
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    status = obj.get("status")
    def dumps(value: Any) -> bytes:   # numpy scalars as the gateway's log writes them (OPT_SERIALIZE_NUMPY)
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

    return {
        "id": _text(event_id), "ts": str(round(ts * 1e6)).encode(),
        "account": _text(obj.get("account")), "key": _text(obj.get("key")),
        "endpoint": _text(endpoint), "model": _text(obj.get("model")),
        "ip": _text(obj.get("ip")), "user_agent": _text(obj.get("user_agent")),
        "status": None if status is None else str(int(status)).encode(),
        "request": dumps(request),
        "response": None if obj.get("response") is None else dumps(obj["response"]),
        "identity": None if obj.get("identity") is None else dumps(obj["identity"]),
        "usage": None if obj.get("usage") is None else dumps(obj["usage"]),
        "extra": dumps(extra) if extra else None,
    }


_TABLE_COLUMNS = ("id", "ts", "account", "key", "endpoint", "model", "ip", "user_agent", "status",
                  "request", "response", "identity", "usage", "extra")


def values_from_table(table: pa.Table) -> Iterator[dict[str, bytes | None]]:
    """Field bytes of each stored row (``EVENT_SCHEMA`` columns), in row order."""
    ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    cols = {c: table.column(c).to_pylist() for c in _TABLE_COLUMNS if c != "ts"}
    for i in range(table.num_rows):
        row: dict[str, bytes | None] = {"ts": str(int(ts[i])).encode()}
        for c, col in cols.items():
            v = col[i]
            row[c] = None if v is None else str(v).encode("utf-8")
        yield row


def _column_bytes(table: pa.Table, name: str) -> list[bytes | None]:
    if name == "ts":
        return [str(t).encode() for t in table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False).tolist()]
    if name == "status":
        return [None if v is None else str(v).encode() for v in table.column(name).to_pylist()]
    return table.column(name).cast(pa.binary()).to_pylist()


def leaf_hashes_from_table(table: pa.Table, salt_key: bytes, prevs: list[int | None] | None = None) -> list[bytes]:
    """Leaf hashes of stored rows in row order (the bulk path: ``evidence build``); ``prevs`` gives
    each row's account-chain pointer (default: none). Column by column, values straight from the
    Arrow buffers as bytes: the same bytes :func:`leaf_hash_of` hashes, a few times faster."""
    n = table.num_rows
    if n == 0:
        return []
    sha, digest, shake = _sha256, hmac.digest, _shake
    ids = _column_bytes(table, "id")
    label = _SALT_LABEL
    streams = [shake(digest(salt_key, label + (i or b""), "sha256")).digest(_SALT_BYTES) for i in ids]
    clear = b"\x00", b"\x01"
    parts: list[list[bytes]] = []
    for c in CLEAR_FIELDS:
        values = ids if c == "id" else _column_bytes(table, c)
        parts.append([clear[0] if v is None else clear[1] + len(v).to_bytes(4, "big") + v for v in values])
    for j, c in enumerate(COMMITTED_FIELDS):
        values = _column_bytes(table, c)
        prefix, absent, lo, hi = _FIELD_PREFIX[c], _ABSENT[c], 16 * j, 16 * j + 16
        parts.append([absent if v is None else sha(prefix + st[lo:hi] + v).digest() for st, v in zip(streams, values)])
    head = b"\x00" + LEAF_PREFIX
    if prevs is None:
        return [sha(head + _NO_PREV + b"".join(row)).digest() for row in zip(*parts)]
    return [sha(head + (_NO_PREV if p is None else p.to_bytes(8, "big")) + b"".join(row)).digest()
            for p, row in zip(prevs, zip(*parts))]
