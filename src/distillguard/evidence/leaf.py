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

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

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


def leaf_body(values: dict[str, bytes | None], salt_key: bytes) -> bytes:
    """A leaf's data after ``prev`` (clear fields and commitments): all of the leaf but its place in
    the tree, so the gateway computes it on the request path and only the order-dependent rest
    (:func:`leaf_hash_from_body`) once the record is logged."""
    s = salts(salt_key, (values["id"] or b"").decode("utf-8"))
    return b"".join(map(clear_bytes, [values[f] for f in CLEAR_FIELDS])) + \
        b"".join([commitment(f, s[f], values[f]) for f in COMMITTED_FIELDS])


_LEAF_HEAD = b"\x00" + LEAF_PREFIX


def leaf_hash_from_body(prev: int | None, body: bytes) -> bytes:
    return _sha256(_LEAF_HEAD + prev_bytes(prev) + body).digest()


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


def _binary(table: pa.Table, name: str) -> pa.Array:
    """One column of stored rows as a single large_binary array of the committed bytes (nulls kept)."""
    col = table.column(name)
    if name == "ts":
        col = pc.cast(col.cast(pa.int64()), pa.string())     # decimal integer microseconds
    elif name == "status":
        col = pc.cast(col, pa.string())
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()    # one chunk: no copy
    return col.cast(pa.large_binary())


def _slices(arr: pa.Array) -> tuple[memoryview, list[int]]:
    """The data buffer of a (large_)binary array and its n + 1 offsets into it (a null: an empty slice)."""
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    return data, offsets.tolist()


def _fixed(packed: bytes, width: int, n: int) -> pa.Array:
    return pa.Array.from_buffers(pa.binary(width), n, [None, pa.py_buffer(packed)]).cast(pa.large_binary())


def _join(*arrays) -> pa.Array:
    return pc.binary_join_element_wise(*arrays, _EMPTY)


_EMPTY = pa.scalar(b"", pa.large_binary())
_CLEAR = pa.scalar(b"\x01", pa.large_binary())
_NULL_CLEAR = pa.scalar(b"\x00", pa.large_binary())


def packed_leaf_hashes(table: pa.Table, salt_key: bytes, prevs: np.ndarray | None = None) -> bytes:
    """Leaf hashes of stored rows in row order, packed (32 bytes each): the bulk path of ``evidence
    build``. ``prevs`` (int64, -1 for none) gives each row's account-chain pointer (default: none).

    The same bytes :func:`leaf_hash_of` hashes, assembled column-wise by Arrow (no Python object per
    field): each committed field's message ``prefix || salt || value`` and each leaf's data are built
    with one element-wise join per column, and the only per-row Python work left is one call per
    hash over a slice of those buffers (10 at most a row; hashlib over OpenSSL)."""
    n = table.num_rows
    if n == 0:
        return b""
    sha, shake = _sha256, _shake
    ids = _binary(table, "id")
    # salts: HMAC-SHA256(salt key, label || id) by precomputed inner/outer states, then SHAKE256
    block = salt_key.ljust(64, b"\x00") if len(salt_key) <= 64 else sha(salt_key).digest().ljust(64, b"\x00")
    inner = sha(bytes(b ^ 0x36 for b in block) + _SALT_LABEL)
    outer = sha(bytes(b ^ 0x5C for b in block))
    ic, oc = inner.copy, outer.copy
    data, offs = _slices(ids)
    streams = []
    add = streams.append
    for a, b in zip(offs, offs[1:]):
        h = ic()
        h.update(data[a:b])
        o = oc()
        o.update(h.digest())
        add(shake(o.digest()).digest(_SALT_BYTES))
    salt_matrix = np.frombuffer(b"".join(streams), dtype=np.uint8).reshape(n, _SALT_BYTES)
    del streams
    pieces: list[pa.Array] = []
    for c in CLEAR_FIELDS:
        values = ids if c == "id" else _binary(table, c)
        data, offs = _slices(values)
        lengths = np.diff(np.asarray(offs, dtype=np.int64)).astype(">u4").tobytes()
        joined = _join(_CLEAR, _fixed(lengths, 4, n), values)
        pieces.append(pc.fill_null(joined, _NULL_CLEAR) if values.null_count else joined)
    for j, c in enumerate(COMMITTED_FIELDS):
        values = _binary(table, c)
        present = None if not values.null_count else values.is_valid().to_numpy(zero_copy_only=False)
        heads = np.empty((n, len(_FIELD_PREFIX[c]) + 16), dtype=np.uint8)     # prefix || salt, per row
        heads[:, :len(_FIELD_PREFIX[c])] = np.frombuffer(_FIELD_PREFIX[c], dtype=np.uint8)
        heads[:, len(_FIELD_PREFIX[c]):] = salt_matrix[:, 16 * j:16 * j + 16]
        width = heads.shape[1]
        hv = memoryview(heads.tobytes())
        data, offs = _slices(values)
        if present is not None:
            rows = np.flatnonzero(present).tolist()
        else:
            rows = range(n)
        if len(data) > 256 * n:       # long values (request, response): hash them in place, no copy
            digests = []
            keep = digests.append
            for i in rows:
                h = sha(hv[i * width:(i + 1) * width])
                h.update(data[offs[i]:offs[i + 1]])
                keep(h.digest())
        else:
            message = _join(_fixed(bytes(hv), width, n), values)
            mdata, moffs = _slices(message)
            digests = [sha(mdata[moffs[i]:moffs[i + 1]]).digest() for i in rows]
        if present is not None:
            full = [_ABSENT[c]] * n
            for i, d in zip(rows, digests):
                full[i] = d
            digests = full
        pieces.append(_fixed(b"".join(digests), 32, n))
    if prevs is None:
        prev_col = _fixed(_NO_PREV * n, 8, n)
    else:
        prev_col = _fixed(np.asarray(prevs, dtype=np.int64).astype(">i8").tobytes(), 8, n)
    leaf = _join(pa.scalar(b"\x00" + LEAF_PREFIX, pa.large_binary()), prev_col, *pieces)
    data, offs = _slices(leaf)
    return b"".join([sha(data[a:b]).digest() for a, b in zip(offs, offs[1:])])


def leaf_hashes_from_table(table: pa.Table, salt_key: bytes, prevs: list[int | None] | None = None) -> list[bytes]:
    """Leaf hashes of stored rows in row order (see :func:`packed_leaf_hashes`); ``prevs`` gives each
    row's account-chain pointer (default: none)."""
    arr = None if prevs is None else np.array([-1 if p is None else p for p in prevs], dtype=np.int64)
    packed = packed_leaf_hashes(table, salt_key, arr)
    return [packed[i:i + 32] for i in range(0, len(packed), 32)]
