"""Signed-note checkpoints and cosignatures (C2SP formats), and per-field leaf commitments."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillguard.events.columns import ColumnBuilder
from distillguard.events.schema import event_from_obj
from distillguard.evidence.leaf import CLEAR_FIELDS, COMMITTED_FIELDS, commitment, leaf_body, leaf_hash_from_body, leaf_hash_of, \
    leaf_hashes_from_table, salts, \
    values_from_record, values_from_table
from distillguard.evidence.merkle import leaf_hash
from distillguard.evidence.note import Checkpoint, NoteError, SignedNote, key_id, open_checkpoint, sign_checkpoint

KEY = Ed25519PrivateKey.generate()


def test_checkpoint_note_layout_and_signature():
    cp = Checkpoint("example.com/dg/gw-1", 42, hashlib.sha256(b"x").digest())
    note = sign_checkpoint(cp, KEY)
    lines = note.split("\n")
    assert lines[:3] == ["example.com/dg/gw-1", "42", base64.b64encode(cp.root).decode()]
    assert lines[3] == "" and lines[4].startswith("\u2014 example.com/dg/gw-1 ") and note.endswith("\n")
    payload = base64.b64decode(lines[4].split(" ")[2])
    assert payload[:4] == hashlib.sha256(b"example.com/dg/gw-1\n\x01" + KEY.public_key().public_bytes_raw()).digest()[:4]
    assert len(payload) == 68
    got, _ = open_checkpoint(note, KEY.public_key())
    assert got == cp
    with pytest.raises(NoteError):
        open_checkpoint(note.replace("\n42\n", "\n43\n"), KEY.public_key())
    with pytest.raises(NoteError):
        open_checkpoint(note, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(NoteError):
        open_checkpoint(note, KEY.public_key(), origin="other")


def test_cosignature_binds_time_and_text():
    witness = Ed25519PrivateKey.generate()
    note = SignedNote.parse(sign_checkpoint(Checkpoint("log", 3, b"\x01" * 32), KEY))
    note.cosign("witness.example", witness, 1_700_000_000)
    again = SignedNote.parse(note.render())
    assert again.cosignature("witness.example", witness.public_key()) == 1_700_000_000
    assert again.verify("log", KEY.public_key())
    assert again.cosignature("witness.example", KEY.public_key()) is None
    # the time is signed: change it in the line and the cosignature fails
    name, payload = again.signatures[-1]
    again.signatures[-1] = (name, payload[:4] + (1_700_000_001).to_bytes(8, "big") + payload[12:])
    assert again.cosignature("witness.example", witness.public_key()) is None
    assert key_id("w", witness.public_key(), 0x04) != key_id("w", witness.public_key(), 0x01)


@given(st.text(max_size=300))
def test_note_parser_never_crashes(text):
    try:
        SignedNote.parse(text)
    except NoteError:
        pass
    try:
        Checkpoint.parse(text)
    except NoteError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=20), "ts": st.floats(1.0e9, 2.0e9), "account": st.text(min_size=1, max_size=12),
    "request": st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=30)}), max_size=3)},
        optional={"temperature": st.floats(0, 2), "x": json_values}),
}, optional={"response": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | st.text(max_size=20),
             "ip": st.text(max_size=15), "status": st.integers(100, 599),
             "usage": st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6)}),
             "identity": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
             "decision": json_values, "latency_ms": st.floats(0, 1e4)}))
def test_gateway_leaf_equals_store_leaf(record):
    """The leaf the gateway computes from its record equals the one recomputed from the stored row."""
    wire = orjson.loads(orjson.dumps(record))         # the log line, as the sink reads it
    builder = ColumnBuilder()
    builder.add(event_from_obj(wire))
    table = builder.take()
    key = b"k" * 32
    from_record = values_from_record(record)
    (from_row,) = list(values_from_table(table))
    assert from_record == from_row
    assert leaf_hashes_from_table(table, key) == [leaf_hash_of(from_record, key)]
    for prev in (None, 0, 12345):          # the gateway's split: body on the request path, place at commit
        assert leaf_hash_from_body(prev, leaf_body(from_record, key)) == leaf_hash_of(from_row, key, prev)


def test_redacting_a_field_keeps_the_leaf():
    record = {"id": "e1", "ts": 1.7e9, "account": "acct", "ip": "10.0.0.1",
              "request": {"messages": [{"role": "user", "content": "hi"}]}}
    values = values_from_record(record)
    key = b"s" * 32
    s = salts(key, "e1")
    commits = [commitment(f, s[f], values[f]) for f in COMMITTED_FIELDS]
    clear = b"".join(b"\x00" if values[f] is None else b"\x01" + len(values[f]).to_bytes(4, "big") + values[f]
                     for f in CLEAR_FIELDS)
    leaf = leaf_hash(b"dg-event/v2\n" + b"\xff" * 8 + clear + b"".join(commits))
    assert leaf == leaf_hash_of(values, key)
    # a verifier given only the ip's commitment, and everything else in clear, gets the same leaf;
    # a guessed ip without the salt does not reproduce the commitment
    ip = commits[COMMITTED_FIELDS.index("ip")]
    assert commitment("ip", b"\0" * 16, b"10.0.0.1") != ip
    assert commitment("ip", s["ip"], b"10.0.0.2") != ip
    assert commitment("ip", s["ip"], None) != commitment("ip", s["ip"], b"")
    # clear fields are length-prefixed: moving bytes between neighbours changes the leaf
    moved = dict(values, account=b"acc", endpoint=b"t" + values["endpoint"])
    assert leaf_hash_of(moved, key) != leaf


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=20), "ts": st.floats(1.0e9, 2.0e9), "account": st.sampled_from(["a", "b", "\u00e9"]),
    "request": st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.text(max_size=3000)}), max_size=2)}),
}, optional={"response": st.text(max_size=20), "ip": st.text(max_size=15), "status": st.integers(100, 599),
             "key": st.text(max_size=8), "model": st.text(max_size=8), "user_agent": st.text(max_size=8),
             "usage": st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6)}),
             "identity": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
             "decision": json_values}), min_size=1, max_size=30, unique_by=lambda r: r["id"]),
    st.data())
def test_bulk_leaves_equal_the_per_row_reference(records, data):
    """The bulk path (Arrow column joins, what `evidence build` runs) gives, row by row, the hash the
    per-row reference computes, with nulls in any column, account chains, and a table split into
    several chunks and sliced."""
    builder = ColumnBuilder()
    for record in records:
        builder.add(event_from_obj(orjson.loads(orjson.dumps(record))))
    table = builder.take()
    cut = data.draw(st.integers(0, table.num_rows))
    table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])          # two chunks, the second sliced
    prevs = data.draw(st.lists(st.none() | st.integers(0, 2**40), min_size=table.num_rows, max_size=table.num_rows))
    key = b"s" * 32
    rows = list(values_from_table(table))
    assert leaf_hashes_from_table(table, key, prevs) == [leaf_hash_of(v, key, p) for v, p in zip(rows, prevs)]
    assert leaf_hashes_from_table(table, key) == [leaf_hash_of(v, key) for v in rows]
    start = data.draw(st.integers(0, table.num_rows - 1))
    part = table.slice(start)
    assert leaf_hashes_from_table(part, key) == [leaf_hash_of(v, key) for v in rows[start:]]


def test_bulk_leaves_hash_long_and_short_values_alike():
    """Long values (hashed in place) and short ones (hashed from joined messages), with nulls among
    both, against the per-row reference."""
    builder = ColumnBuilder()
    for i in range(40):
        record = {"id": f"r{i}", "ts": 1.7e9 + i, "account": "a",
                  "request": {"messages": [{"role": "user", "content": ("long \u00e9 " * 900 if i % 3 else "s") + str(i)}]}}
        if i % 4:
            record["response"] = "answer " * (700 if i % 2 else 1)
        if i % 5 == 0:
            record["ip"] = f"10.0.0.{i}"
        builder.add(event_from_obj(record))
    table = builder.take()
    key = b"t" * 32
    prevs = [None if i < 2 else i - 2 for i in range(40)]
    assert leaf_hashes_from_table(table, key, prevs) == [leaf_hash_of(v, key, p) for v, p in zip(values_from_table(table), prevs)]
