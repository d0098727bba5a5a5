"""TAXII 2.1 over loopback: lab A's server read and written by the OASIS client (taxii2-client)
as the real peer, lab B's `intel sync` pulling from it, and the two-instance exchange: A flags
a hydra campaign and shares it, B's scan of its own traffic then flags the same actor's
accounts that B alone does not flag.
"""

from __future__ import annotations

import copy

import httpx
import pytest
import requests
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.gateway.server import ServerThread
from distillguard.intel.export import ExportOptions, export_bundle
from distillguard.intel.home import IntelHome, Peer
from distillguard.intel.match import IntelSignal
from distillguard.intel.publish import sign_and_publish
from distillguard.intel.store import IntelStore
from distillguard.intel.sync import sync_peer
from distillguard.intel.taxii import TAXII, TaxiiServer
from distillguard.store import EventStore
from intel_support import SECRET_B_ON_A, SECRET_T_ON_A, make_homes, make_lab_a, make_lab_b


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("intel-taxii")


@pytest.fixture(scope="module")
def lab_a(work):
    return make_lab_a(work)


@pytest.fixture(scope="module")
def lab_b(work, lab_a):
    return make_lab_b(work, lab_a)


@pytest.fixture(scope="module")
def homes(work, lab_a):
    """A exported and published its campaign to its 'shared' collection."""
    home_a, home_b = make_homes(work)
    with EventStore(lab_a.db, read_only=True) as store:
        result = export_bundle(lab_a.scan, store.con, home_a, ExportOptions())
    with IntelStore(home_a.db_path) as istore:
        sign_and_publish(result.bundle, home_a, istore, valid_days=90)
    return home_a, home_b


@pytest.fixture(scope="module")
def server_a(homes):
    home_a, _ = homes
    with ServerThread(TaxiiServer(home_a, max_page=25).app()) as server:
        yield server


def _collection(server_a, home_a, name, user="taxii-client", password=SECRET_T_ON_A) -> Collection:
    cid = home_a.collections[name]["id"]
    return Collection(f"{server_a.url}/api1/collections/{cid}/", user=user, password=password)


def _b_pulling(home_b: IntelHome, server_a, collection="shared", username="lab-b", secret=SECRET_B_ON_A) -> IntelHome:
    home = copy.deepcopy(home_b)
    home.peers["lab-a"] = Peer(name="lab-a", public_key=home_b.peers["lab-a"].public_key, trust=1.0,
                               url=f"{server_a.url}/api1/", collection=collection, username=username, secret=secret)
    return home


# ---------------------------------------------------------------- the OASIS client as a peer

def test_discovery_api_root_and_collections(server_a, homes):
    home_a, _ = homes
    server = Server(f"{server_a.url}/taxii2/", user="taxii-client", password=SECRET_T_ON_A)
    assert "Lab A" in server.title
    (root,) = server.api_roots
    assert "application/taxii+json;version=2.1" in root.versions
    found = {c.title: c for c in root.collections}
    assert set(found) == {"shared", "inbox"}
    assert found["shared"].can_read and not found["shared"].can_write
    assert found["inbox"].can_read and found["inbox"].can_write
    # lab-b may only read 'shared': 'inbox' does not exist for it
    server_b = Server(f"{server_a.url}/taxii2/", user="lab-b", password=SECRET_B_ON_A)
    assert [c.title for c in server_b.api_roots[0].collections] == ["shared"]


def test_objects_paged_with_added_after_and_manifest(server_a, homes):
    home_a, _ = homes
    shared = _collection(server_a, home_a, "shared")
    with IntelStore(home_a.db_path) as store:
        held = store.count("shared")
    pages = list(as_pages(shared.get_objects, per_request=10))
    assert len(pages) == -(-held // 10) and all(p["more"] for p in pages[:-1]) and not pages[-1]["more"]
    objects = [o for p in pages for o in p.get("objects", [])]
    assert len(objects) == held and len({o["id"] for o in objects}) == held
    assert any(o["type"] == "x-distillguard-signature" for o in objects)
    manifest = list(as_pages(shared.get_manifest, per_request=25))
    records = [r for p in manifest for r in p.get("objects", [])]
    assert [r["id"] for r in records] == [o["id"] for o in objects]
    # added_after the last date_added: nothing; before it: everything
    last = max(r["date_added"] for r in records)
    assert shared.get_objects(added_after=last).get("objects", []) == []
    assert len(shared.get_objects(added_after="2020-01-01T00:00:00.000Z", limit=1000)["objects"]) == 25  # server cap
    one = shared.get_object(objects[0]["id"])
    assert one["objects"][0]["id"] == objects[0]["id"]
    campaigns = shared.get_objects(type="campaign")["objects"]
    assert len(campaigns) == 1 and campaigns[0]["type"] == "campaign"


def test_add_objects_gives_a_status(server_a, homes):
    home_a, _ = homes
    inbox = _collection(server_a, home_a, "inbox")
    good = {"type": "indicator", "spec_version": "2.1", "id": "indicator--6b3e1a2c-0000-4000-8000-00000000000a",
            "created": "2026-10-01T00:00:00.000Z", "modified": "2026-10-02T00:00:00.000Z", "pattern_type": "stix",
            "pattern": "[ipv4-addr:value = '198.51.100.1']", "valid_from": "2026-10-01T00:00:00.000Z"}
    bad = good | {"id": "indicator--6b3e1a2c-0000-4000-8000-00000000000b", "modified": "2026-09-01T00:00:00.000Z"}
    status = inbox.add_objects({"objects": [good, bad]})
    assert status.status == "complete" and status.total_count == 2
    assert status.success_count == 1 and status.failure_count == 1
    assert "before created" in status.failures[0]["message"]
    root = ApiRoot(f"{server_a.url}/api1/", user="taxii-client", password=SECRET_T_ON_A)
    again = root.get_status(status.id)
    assert again.success_count == 1
    stored = inbox.get_objects(id=good["id"])["objects"]
    assert stored == [good]
    # the same version posted again is stored once
    inbox.add_objects({"objects": [good]})
    assert len(inbox.get_objects(id=good["id"], version="all")["objects"]) == 1


def test_credentials_and_rights(server_a, homes):
    home_a, _ = homes
    with pytest.raises(requests.exceptions.HTTPError, match="401"):
        _collection(server_a, home_a, "shared", password="wrong").get_objects()
    with pytest.raises(requests.exceptions.HTTPError, match="401"):
        _collection(server_a, home_a, "shared", user="nobody").get_objects()
    cid = home_a.collections["shared"]["id"]
    url = f"{server_a.url}/api1/collections/{cid}/objects/"
    headers = {"Accept": TAXII, "Content-Type": TAXII, "Authorization": f"Bearer {SECRET_B_ON_A}"}
    r = httpx.post(url, content=b'{"objects": []}', headers=headers)
    assert r.status_code == 403 and "may not write" in r.json()["description"]
    inbox = home_a.collections["inbox"]["id"]
    assert httpx.get(f"{server_a.url}/api1/collections/{inbox}/objects/", headers=headers).status_code == 404
    assert httpx.get(url, headers=headers | {"Accept": "text/html"}).status_code == 406
    bad = httpx.get(url, params={"added_after": "yesterday"}, headers=headers)
    assert bad.status_code == 400 and "added_after" in bad.json()["description"]
    assert httpx.get(url, headers=headers).status_code == 200   # the bearer token works


# ---------------------------------------------------------------- two instances

def test_two_instances_share_a_hydra_campaign(server_a, homes, lab_a, lab_b, tmp_path):
    _, home_b = homes
    actor = lab_b.hydra
    rows_alone = {a["account"]: a for a in lab_b.scan["accounts"]}
    assert len(actor) == 2 and not any(rows_alone[a]["flagged"] for a in actor)      # B alone misses them
    pulling = _b_pulling(home_b, server_a)
    pulling.path = tmp_path / "home-b"
    pulling.path.mkdir()
    for name in ("signing.pem", "signing.pub", "community.key"):
        (pulling.path / name).write_bytes((home_b.path / name).read_bytes())
    with IntelStore(pulling.db_path) as store:
        result = sync_peer(pulling, pulling.peers["lab-a"], store)
        assert result.ok and result.unsigned == 0 and result.imports and result.imports[0].indicators >= 5
        again = sync_peer(pulling, pulling.peers["lab-a"], store)           # nothing new since
        assert again.fetched == 0
    with EventStore(lab_b.db, read_only=True) as store:
        data = scan_store(store, ScanOptions(intel=IntelSignal(pulling))).to_dict()
    rows = {a["account"]: a for a in data["accounts"]}
    for account in actor:
        assert rows[account]["flagged"] and rows[account]["intel"]["flagged"], rows[account].get("intel")
        assert all("from peer lab-a" in r["detail"] for r in rows[account]["reasons"] if r["signal"] == "intel_match")
    kinds = {m["kind"] for a in actor for m in rows[a]["intel"]["matches"]}
    assert "payment" in kinds and "template" in kinds
    assert {m["kind"] for m in rows[actor[1]]["intel"]["matches"]} <= {"ip24", "template"}
    others = [a for a in data["accounts"] if a["account"] not in set(actor)]
    assert not any(a.get("intel") for a in others)                                  # no bystander matched
    assert sum(a["flagged"] for a in others) == sum(rows_alone[a["account"]]["flagged"] for a in others)
    # the two accounts match one campaign of lab A's: one campaign in B's summary, not two
    groups = data["summary"]["intel_campaigns"]
    assert [g["accounts"] for g in groups] == [actor]
    assert [c["peer"] for c in groups[0]["peer_campaigns"]] == ["lab-a"]
    assert groups[0]["peer_campaigns"][0]["campaign"].startswith("Distillation campaign ")
    assert data["summary"]["campaigns"] == lab_b.scan["summary"]["campaigns"] + 1
    assert data["summary"]["accounts_flagged"] == lab_b.scan["summary"]["accounts_flagged"] + 2


def test_sync_refuses_unsigned_and_tampered_objects(server_a, homes, tmp_path):
    """What anyone with write rights posts to A's inbox is not trusted: unsigned objects stay out,
    a signed set with one object altered is rejected whole, and the sync position does not move."""
    home_a, home_b = homes
    shared = _collection(server_a, home_a, "shared")
    objects = [o for p in as_pages(shared.get_objects, per_request=25) for o in p["objects"]]
    signature = next(o for o in objects if o["type"] == "x-distillguard-signature")
    signed = [o for o in objects if o["type"] != "x-distillguard-signature"]
    altered = copy.deepcopy(signed)
    indicator = next(o for o in altered if o["type"] == "indicator")
    indicator["confidence"] = 100
    inbox = _collection(server_a, home_a, "inbox")
    inbox.add_objects({"objects": altered + [signature]})
    pulling = _b_pulling(home_b, server_a, collection="inbox", username="taxii-client", secret=SECRET_T_ON_A)
    pulling.path = tmp_path
    for name in ("signing.pem", "signing.pub", "community.key"):
        (pulling.path / name).write_bytes((home_b.path / name).read_bytes())
    with IntelStore(pulling.db_path) as store:
        result = sync_peer(pulling, pulling.peers["lab-a"], store)
        assert not result.ok and "changed after peer lab-a signed it" in result.rejected[0]
        assert result.unsigned >= 1 and result.position is None
        assert store.count() == 0 and store.sync_position("lab-a", "inbox") is None


def test_sync_of_a_re_export_needs_only_the_new_versions(server_a, homes, lab_a, tmp_path):
    """A exports the same campaign again: B pulls only the new versions (identity and ATLAS objects
    are unchanged, already held) and the signature still verifies."""
    home_a, home_b = homes
    pulling = _b_pulling(home_b, server_a)
    pulling.path = tmp_path
    for name in ("signing.pem", "signing.pub", "community.key"):
        (pulling.path / name).write_bytes((home_b.path / name).read_bytes())
    with IntelStore(pulling.db_path) as store:
        first = sync_peer(pulling, pulling.peers["lab-a"], store)
        assert first.ok
        with EventStore(lab_a.db, read_only=True) as events, IntelStore(home_a.db_path) as istore:
            result = export_bundle(lab_a.scan, events.con, home_a, ExportOptions(),
                                   previous=istore.created_of("shared"))
            sign_and_publish(result.bundle, home_a, istore, valid_days=90)
        second = sync_peer(pulling, pulling.peers["lab-a"], store)
        assert second.ok, second.rejected
        assert 0 < second.fetched < first.fetched + 1
        assert second.imports[-1].new_objects == second.fetched - 1      # all but the signature object
        versions = store.all("SELECT count(DISTINCT modified) FROM intel_indicators GROUP BY id")
        assert all(v[0] == 2 for v in versions)
