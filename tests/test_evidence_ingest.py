"""`distillguard ingest --evidence-key`: every event the ingest stores becomes a leaf of the store's
tree (in (ts, id) order, each account's chain continued), and a checkpoint of it is signed."""

from __future__ import annotations

import subprocess
import sys

import orjson

from distillguard.evidence import treestore
from distillguard.evidence.commands import _salt_key
from distillguard.evidence.leaf import leaf_hash_of, values_from_record
from distillguard.evidence.merkle import root_of
from distillguard.evidence.note import open_checkpoint
from distillguard.intel.keys import SigningKey
from distillguard.store import EventStore

LOG_ID = "example.org/dg/store"


def _events(start: int, n: int) -> list[dict]:
    return [{"id": f"ev-{i:05d}", "ts": 1_790_000_000 + (i * 7919) % 1000 + i / 1000, "account": f"acct-{i % 3}",
             "key": f"k-{i % 3}", "ip": "10.0.0.1", "status": 200,
             "request": {"model": "m", "messages": [{"role": "user", "content": f"question {i} \u00e9"}]},
             "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
             "usage": {"prompt_tokens": 3, "completion_tokens": 2}} for i in range(start, start + n)]


def _ingest(tmp_path, path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillguard", "ingest", str(path), "--db", str(tmp_path / "s.duckdb"),
                           *extra], capture_output=True, text=True, timeout=120)


def _expected_leaves(events: list[dict], salt: bytes, start: int, last: dict[str, int]) -> list[bytes]:
    """Leaves recomputed from the records: (ts, id) order, each account's chain continued from ``last``."""
    out = []
    for i, e in enumerate(sorted(events, key=lambda e: (round(e["ts"] * 1e6), e["id"])), start):
        out.append(leaf_hash_of(values_from_record(e), salt, last.get(e["account"])))
        last[e["account"]] = i
    return out


def test_ingest_with_a_key_makes_every_stored_event_a_leaf_and_signs(tmp_path):
    key = SigningKey.generate()
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(key.pem())
    first, second = _events(0, 40), _events(40, 25)
    for name, events in (("a.jsonl", first), ("b.jsonl", second + first[:5])):      # b repeats 5 of a
        (tmp_path / name).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    args = ("--evidence-key", str(key_path), "--log-id", LOG_ID)
    res = _ingest(tmp_path, tmp_path / "a.jsonl", *args)
    assert res.returncode == 0, res.stderr
    assert "40 leaves appended" in res.stdout and "checkpoint signed" in res.stdout
    res = _ingest(tmp_path, tmp_path / "b.jsonl", *args)          # only the 25 new ones join the tree
    assert res.returncode == 0 and "25 leaves appended (65 in the tree" in res.stdout, res.stdout + res.stderr
    salt = _salt_key(key)
    last: dict[str, int] = {}
    want = _expected_leaves(first, salt, 0, last)
    want += _expected_leaves(second, salt, 40, last)       # the second ingest's, chained onto the first's
    with EventStore(tmp_path / "s.duckdb", read_only=True) as store:
        assert store.count() == 65
        levels = treestore.load_levels(store, LOG_ID)
        notes = treestore.checkpoints(store, LOG_ID)
    assert [levels.leaf(i) for i in range(65)] == want      # recomputed independently from the records
    assert [size for size, _ in notes] == [40, 65]
    for size, note in notes:
        cp, _ = open_checkpoint(note, key.public, origin=LOG_ID)
        assert cp.root == root_of(want[:size])


def test_ingest_with_a_bad_key_stores_nothing_and_says_why(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in _events(0, 3)))
    (tmp_path / "bad.pem").write_text("not a key")
    for extra in (("--evidence-key", str(tmp_path / "bad.pem")), ("--evidence-key", str(tmp_path / "none.pem")),
                  ("--evidence-key", str(tmp_path / "bad.pem"), "--log-id", "has space")):
        res = _ingest(tmp_path, tmp_path / "a.jsonl", *extra)
        assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "s.duckdb").exists()
