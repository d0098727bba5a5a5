"""The gateway's tree over real HTTP: leaves at append, checkpoints on shutdown, import into the
store (each leaf checked against its stored row), proofs from the store, a verified package."""

from __future__ import annotations

import shutil

import openai
import pytest

from distillguard.errors import BadInputError
from distillguard.evidence import treestore
from distillguard.evidence.commands import _salt_key
from distillguard.evidence.gateway_tree import read_leaves, read_notes
from distillguard.evidence.merkle import verify_consistency
from distillguard.evidence.note import SignedNote, open_checkpoint, vkey
from distillguard.evidence.package import ExportOptions, export_package
from distillguard.evidence.verify import Keys, verify_package
from distillguard.gateway.server import ServerThread
from distillguard.intel.keys import SigningKey
from distillguard.store import EventStore
from gateway_support import FaultyUpstream, running_gateway

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
