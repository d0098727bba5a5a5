"""The gateway's tree over real HTTP: leaves at append, checkpoints on shutdown, import into the
store (each leaf checked against its stored row), proofs from the store, a verified package."""

from __future__ import annotations

import shutil
import time

import httpx
import openai
import orjson
import pytest

from distillguard.errors import BadInputError
from distillguard.evidence import treestore
from distillguard.evidence.commands import _salt_key
from distillguard.evidence.gateway_tree import read_leaves, read_notes
from distillguard.evidence.merkle import root_of, verify_consistency, verify_inclusion
from distillguard.evidence.note import SignedNote, open_checkpoint, vkey
from distillguard.evidence.package import ExportOptions, export_package
from distillguard.evidence.verify import Keys, verify_package
from distillguard.gateway.server import ServerThread
from distillguard.intel.keys import SigningKey
from distillguard.store import EventStore
from distillguard.gateway.wal import iter_log_records
from gateway_support import FaultyUpstream, fill_to, running_gateway, small_tmpfs

LOG_ID = "example.org/distillguard/gw-1"


@pytest.fixture(scope="module")
def upstream():
    app = FaultyUpstream()
    with ServerThread(app) as server:
        yield server


def _run(tmp_path, upstream, key_path, n_alice: int, n_bob: int) -> None:
    config = f'[evidence]\nkey = "{key_path}"\nlog_id = "{LOG_ID}"\ninterval_s = 30\n[policy]\nmode = "shadow"\n'
    with running_gateway(tmp_path, upstream.url, config_text=config) as (gw, url):
        alice = openai.OpenAI(api_key="sk-alice-0001", base_url=url + "/v1", max_retries=0)
        bob = openai.OpenAI(api_key="sk-bob-00002", base_url=url + "/v1", max_retries=0)
        for i in range(max(n_alice, n_bob)):
            if i < n_alice:
                alice.chat.completions.create(model="ok", messages=[{"role": "user", "content": f"alice {i} \u00e9"}],
                                              temperature=0.3)
            if i < n_bob:
                stream = bob.chat.completions.create(model="ok", stream=True, user=f"end-{i}",
                                                     messages=[{"role": "user", "content": f"bob {i}"}])
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_gateway_tree_imports_proves_and_packages(tmp_path, upstream):
    key = SigningKey.generate()
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(key.pem())
    _run(tmp_path, upstream, key_path, 5, 4)
    leaves = read_leaves(tmp_path / "log")
    assert len(leaves) == 9
    notes = read_notes(tmp_path / "log")
    cp1, _ = open_checkpoint(notes[-1], key.public, origin=LOG_ID)
    assert cp1.size == 9
    # a restart continues the same tree; the new checkpoint extends the old one
    _run(tmp_path, upstream, key_path, 2, 1)
    notes = read_notes(tmp_path / "log")
    cp2, _ = open_checkpoint(notes[-1], key.public, origin=LOG_ID)
    assert cp2.size == 12
    salt = _salt_key(key)
    db = tmp_path / "events.duckdb"
    with EventStore(db) as store:
        origin, added, kept = treestore.import_gateway_dir(store, tmp_path / "log", salt)
        assert (origin, added, kept) == (LOG_ID, 12, 2)
        levels = treestore.load_levels(store, LOG_ID)
        assert levels.root(9) == cp1.root and levels.root(12) == cp2.root
        assert verify_consistency(9, 12, levels.consistency_proof(9, 12), cp1.root, cp2.root)
        # nothing left for the store's own tree: every stored event is in the gateway's
        assert treestore.build(store, salt, "distillguard/store").appended == 0
        manifest = export_package(store, key, salt, tmp_path / "pkg", ExportOptions(
            accounts=["bob"], subject={"account": "bob"}, signer="acme", redact=("ip", "identity")))
    assert manifest["exchanges"] == 5
    keys = Keys()
    keys.add_vkey(vkey(LOG_ID, key.public))
    keys.add_vkey(vkey("acme", key.public))
    finding = verify_package(tmp_path / "pkg", keys)
    assert finding.accounts == ["bob"] and finding.exchanges == 5
    assert SignedNote.parse(notes[-1]).verify(LOG_ID, key.public)


def test_a_write_the_log_refuses_on_a_full_disk_leaves_no_leaf(tmp_path, upstream):
    """The log on a 1 MiB tmpfs filled to ~20 KB free, the tree on, checkpoints every 0.1 s (some
    attempted while the disk is full): 60 requests, some refused with a 503 (their records never
    written). The tree's leaves are the logged records, in log order, and nothing else; every signed
    checkpoint covers only logged records; the store imports the whole tree and each exchange proves
    into the last checkpoint. Was: each refused request left a leaf (added before the write), so
    every later checkpoint signed a root over exchanges not in the log and the import stopped at the
    first of them."""
    key = SigningKey.generate()
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(key.pem())
    config = (f'[evidence]\nkey = "{key_path}"\nlog_id = "{LOG_ID}"\ninterval_s = 0.1\n'
              "[log]\nkeep_segments = true\n[policy]\nmode = \"shadow\"\n")
    with small_tmpfs(tmp_path / "log") as log_dir:
        with running_gateway(tmp_path, upstream.url, log_dir=log_dir, config_text=config) as (gw, url):
            with httpx.Client(base_url=url, timeout=30) as client:
                ok = client.post("/v1/chat/completions", json={"model": "ok", "messages": [{"role": "user", "content": "first"}]},
                                 headers={"authorization": "Bearer sk-alice-0001"})
                assert ok.status_code == 200
                filler = fill_to(log_dir, 20_000)
                statuses = []
                for i in range(60):
                    body = {"model": "ok", "stream": i % 3 == 0,
                            "messages": [{"role": "user", "content": f"request {i} " + "y" * 400}]}
                    key_header = "sk-alice-0001" if i % 2 else "sk-bob-00002"
                    r = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key_header}"})
                    statuses.append(r.status_code)
                time.sleep(0.3)                          # checkpoints tried on the full disk
                filler.unlink()
                time.sleep(gw.log.retry_s + 0.1)
                after = client.post("/v1/chat/completions", json={"model": "ok", "messages": [{"role": "user", "content": "after"}]},
                                    headers={"authorization": "Bearer sk-bob-00002"})
                assert after.status_code == 200
            assert 503 in statuses and 200 in statuses, statuses
            assert gw.log.stats.failed > 0
        # the gateway has stopped: its last checkpoint is written
        logged = [orjson.loads(line)["id"] for line in iter_log_records(log_dir)]
        leaves = read_leaves(log_dir)
        notes = read_notes(log_dir)
        assert [event_id for event_id, _, _ in leaves] == logged       # exactly the logged records, in log order
        hashes = [leaf for _, _, leaf in leaves]
        assert notes
        for note in notes:                                             # no signed root covers an unlogged leaf
            cp, _ = open_checkpoint(note, key.public, origin=LOG_ID)
            assert cp.size <= len(logged) and cp.root == root_of(hashes[:cp.size])
        last, _ = open_checkpoint(notes[-1], key.public, origin=LOG_ID)
        assert last.size == len(logged)
        with EventStore(tmp_path / "events.duckdb") as store:
            assert treestore.import_gateway_dir(store, log_dir, _salt_key(key))[1] == len(logged)
            levels = treestore.load_levels(store, LOG_ID)
    assert levels.size == len(logged)
    for i in range(levels.size):
        assert verify_inclusion(levels.leaf(i), i, last.size, levels.inclusion_proof(i, last.size), last.root)


def test_a_checkpoint_on_a_full_disk_keeps_its_leaves_for_the_next_one(tmp_path):
    """leaves.txt on a full tmpfs: the write fails part-way; nothing torn stays in the file, nothing
    is signed, and the next checkpoint (space again) writes every leaf. Was: the pending lines were
    dropped, so leaves.txt lost leaves the signed roots covered."""
    from distillguard.evidence.gateway_tree import GatewayTree

    key = SigningKey.generate()
    with small_tmpfs(tmp_path / "log", size="64k") as log_dir:
        tree = GatewayTree(log_dir, LOG_ID, key)
        records = [{"id": f"ev-{i:04d}", "ts": 1_700_000_000 + i, "account": ["alice", "bob"][i % 2],
                    "request": {"model": "m", "messages": [{"role": "user", "content": f"q {i}"}]}} for i in range(300)]
        for r in records[:10]:
            tree.add(r)
        first = tree.checkpoint()
        for r in records[10:]:
            tree.add(r)
        filler = fill_to(log_dir, 0)
        with pytest.raises(OSError):
            tree.checkpoint()
        assert [e for e, _, _ in read_leaves(log_dir)] == [r["id"] for r in records[:10]]   # cut back, no torn line
        assert [open_checkpoint(n, key.public, origin=LOG_ID)[0].size for n in read_notes(log_dir)] == [10]
        filler.unlink()
        note = tree.checkpoint()
        leaves = read_leaves(log_dir)
    assert first is not None and note is not None
    assert [e for e, _, _ in leaves] == [r["id"] for r in records]
    cp, _ = open_checkpoint(note, key.public, origin=LOG_ID)
    assert cp.size == 300 and cp.root == root_of([leaf for _, _, leaf in leaves])


def test_a_stored_row_changed_after_logging_is_caught_at_import(tmp_path, upstream):
    key = SigningKey.generate()
    key_path = tmp_path / "signing.pem"
    key_path.write_bytes(key.pem())
    _run(tmp_path, upstream, key_path, 3, 0)
    db = tmp_path / "events.duckdb"
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    with EventStore(copy) as store:
        store.run("UPDATE events SET request = replace(request, 'alice 1', 'alice one') WHERE prompt_text = 'alice 1 \u00e9'")
        with pytest.raises(BadInputError, match="was changed"):
            treestore.import_gateway_dir(store, tmp_path / "log", _salt_key(key))


def test_evidence_config_errors_name_the_key(tmp_path):
    from distillguard.gateway.config import load_config

    def load(text):
        path = tmp_path / "g.toml"
        path.write_text(text)
        return load_config(path, upstream="http://127.0.0.1:1")

    cfg = load('[evidence]\nkey = "k.pem"\nlog_id = "x.example/gw-2"\ninterval_s = 5\n')
    assert str(cfg.evidence.key) == "k.pem" and cfg.evidence.log_id == "x.example/gw-2" and cfg.evidence.interval_s == 5
    assert load("port = 9000\n").evidence.key is None          # off unless a key is given
    for text, field in [('[evidence]\nbogus = 1', "evidence.bogus"), ('[evidence]\ninterval_s = 0', "evidence.interval_s"),
                        ('[evidence]\nkey = 5', "evidence.key"), ('evidence = 3', "evidence")]:
        with pytest.raises(BadInputError) as info:
            load(text)
        assert info.value.field == field, text
