"""Witnessing over the intel channel: A publishes checkpoints to its TAXII collection, B pulls them
with `intel sync`, cosigns after checking consistency and publishes the cosignature, A pulls it
back into its store; a package then verifies as witnessed by B. A rewritten history is refused."""

from __future__ import annotations

import copy

import orjson

from distillguard.events.columns import ColumnBuilder
from distillguard.events.schema import event_from_obj
from distillguard.evidence import treestore
from distillguard.evidence.commands import _salt_key
from distillguard.evidence.exchange import collect_cosignatures, publish_checkpoints, witness_peers
from distillguard.evidence.note import SIG_COSIGNATURE, SignedNote, vkey
from distillguard.evidence.package import ExportOptions, export_package
from distillguard.evidence.verify import Keys, verify_package
from distillguard.gateway.server import ServerThread
from distillguard.intel.home import Peer, secret_sha256
from distillguard.intel.store import IntelStore
from distillguard.intel.sync import sync_peer
from distillguard.intel.taxii import TaxiiServer
from distillguard.store import EventStore
from intel_support import SECRET_B_ON_A, make_homes

SECRET_A_ON_B = "secret-of-lab-a-on-b-9876543210"


def ingest(store: EventStore, start: int, n: int) -> None:
    builder = ColumnBuilder()
    for i in range(start, start + n):
        builder.add(event_from_obj({"id": f"e{i}", "ts": 1.79e9 + i, "account": f"acct-{i % 3}",
                                    "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
                                    "response": f"a{i}"}))
    store.ingest([builder.take()])


def test_checkpoints_are_witnessed_over_taxii(tmp_path):
    home_a, home_b = make_homes(tmp_path)
    home_b.add_peer(Peer(name="lab-a", public_key=home_b.peers["lab-a"].public_key, trust=1.0,
                         server_secret_sha256=secret_sha256(SECRET_A_ON_B), read=["shared"]), replace=True)
    home_b.save()
    log = "lab-a.example/distillguard/store"
    key_a = home_a.signing_key()
    salt = _salt_key(key_a)
    db = tmp_path / "a.duckdb"
    with ServerThread(TaxiiServer(home_a).app()) as server_a, ServerThread(TaxiiServer(home_b).app()) as server_b:
        b_pull = copy.deepcopy(home_b)
        b_pull.peers["lab-a"].url, b_pull.peers["lab-a"].collection = f"{server_a.url}/api1/", "shared"
        b_pull.peers["lab-a"].username, b_pull.peers["lab-a"].secret = "lab-b", SECRET_B_ON_A
        a_pull = copy.deepcopy(home_a)
        a_pull.peers["lab-b"].url, a_pull.peers["lab-b"].collection = f"{server_b.url}/api1/", "shared"
        a_pull.peers["lab-b"].username, a_pull.peers["lab-b"].secret = "lab-a", SECRET_A_ON_B

        def round_trip() -> dict:
            with EventStore(db) as store, IntelStore(home_a.db_path) as ia:
                assert publish_checkpoints(store, home_a, ia) == 1
            with IntelStore(home_b.db_path) as ib:
                assert sync_peer(b_pull, b_pull.peers["lab-a"], ib).ok
                result = witness_peers(home_b, ib, tmp_path / "witness-state", "lab-b.example")
            with EventStore(db) as store, IntelStore(home_a.db_path) as ia:
                assert sync_peer(a_pull, a_pull.peers["lab-b"], ia).ok
                result["collected"] = collect_cosignatures(store, home_a, ia)
            return result

        with EventStore(db) as store:
            ingest(store, 0, 30)
            treestore.build(store, salt, log)
            treestore.sign_current(store, log, key_a.private)
        first = round_trip()
        assert first["cosigned"] == [f"{log}@30"] and first["collected"] == 1
        # more traffic, a new checkpoint: B checks it extends the one it cosigned
        with EventStore(db) as store:
            ingest(store, 30, 25)
            treestore.build(store, salt, log)
            treestore.sign_current(store, log, key_a.private)
        second = round_trip()
        assert second["cosigned"] == [f"{log}@55"] and second["collected"] == 1, second
        with EventStore(db) as store:
            (size, note), = [c for c in treestore.checkpoints(store, log) if c[0] == 55]
            assert SignedNote.parse(note).cosignature("lab-b.example", home_b.signing_key().public) is not None
            export_package(store, key_a, salt, tmp_path / "pkg", ExportOptions(
                accounts=["acct-1"], subject={"account": "acct-1"}, signer="lab-a",
                witnesses={"lab-b.example": home_b.signing_key().public}))
        keys = Keys()
        for line in (vkey(log, key_a.public), vkey("lab-a", key_a.public),
                     vkey("lab-b.example", home_b.signing_key().public, SIG_COSIGNATURE)):
            keys.add_vkey(line)
        finding = verify_package(tmp_path / "pkg", keys)
        assert [w for w, _ in finding.logs[0]["witnesses"]] == ["lab-b.example"]
        # A rewrites its history (a new store with one answer changed) and publishes a bigger tree
        forged = tmp_path / "forged.duckdb"
        with EventStore(forged) as store:
            ingest(store, 0, 60)
            store.run("UPDATE events SET response = '\"changed\"' WHERE id = 'e3'")
            treestore.build(store, salt, log)
            treestore.sign_current(store, log, key_a.private)
        db = forged
        third = round_trip()
        assert third["cosigned"] == [] and "not an append-only extension" in third["refused"][0]


def test_checkpoints_kept_merge_cosignatures_and_refuse_forks(tmp_path):
    import pytest

    from distillguard.errors import BadInputError
    from distillguard.evidence.note import Checkpoint, sign_checkpoint
    from distillguard.evidence.witness import Witness
    from distillguard.intel.keys import SigningKey

    log, key = "x.example/log", SigningKey.generate()
    w1, w2 = SigningKey.generate(), SigningKey.generate()
    note = sign_checkpoint(Checkpoint(log, 3, b"\x01" * 32), key.private)
    with EventStore(tmp_path / "s.duckdb") as store:
        treestore.add_checkpoint(store, note)
        treestore.add_checkpoint(store, Witness(tmp_path / "a", "w1", w1, {log: key.public}).cosign(note, []))
        treestore.add_checkpoint(store, Witness(tmp_path / "b", "w2", w2, {log: key.public}).cosign(note, []))
        treestore.add_checkpoint(store, note)                       # a plain copy again changes nothing
        (size, kept), = treestore.checkpoints(store, log)
        signed = SignedNote.parse(kept)
        assert size == 3 and signed.cosignature("w1", w1.public) and signed.cosignature("w2", w2.public)
        with pytest.raises(BadInputError, match="fork"):
            treestore.add_checkpoint(store, sign_checkpoint(Checkpoint(log, 3, b"\x02" * 32), key.private))
