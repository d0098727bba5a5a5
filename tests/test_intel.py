"""Intel exchange: STIX export (valid, private), signatures and trust, import (bad input,
replays, transactions), and peers' indicators as a scan signal.

Lab A flags a hydra campaign and exports it; lab B (another organisation, one community key)
imports it. The TAXII server, sync and the two-instance exchange are in test_intel_taxii.py.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import stix2
from stix2validator import ValidationOptions, validate_instance

from distillguard.errors import BadInputError
from distillguard.intel.export import ExportOptions, confirmed_campaigns, export_bundle
from distillguard.intel.home import IntelHome
from distillguard.intel.identifiers import (KeyedShingler, campaign_templates, hash_values, ip_prefix,
                                            normalise_email, org_domain)
from distillguard.intel.importer import import_bundle, indicator_row
from distillguard.intel.keys import CommunityKey
from distillguard.intel.match import IntelSignal
from distillguard.intel.publish import revoke, sign_and_publish
from distillguard.intel.signing import VerificationError, sign_objects
from distillguard.intel.store import IntelStore, peer_collection
from distillguard.intel.extension import CREATOR_ID, EXTENSION_ID, extension_definition, template_pattern_value
from distillguard.intel.vocab import ATLAS, TLP_IDS, atlas_id
from distillguard.store import EventStore
from intel_support import make_homes, make_lab_a, raw_needles, read_events

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("intel")


@pytest.fixture(scope="module")
def lab_a(work):
    return make_lab_a(work)


@pytest.fixture(scope="module")
def homes(work):
    return make_homes(work)


@pytest.fixture(scope="module")
def exported(work, lab_a, homes):
    """A's export of its scan: (result, bundle path); published to A's 'shared' collection."""
    home_a, _ = homes
    with EventStore(lab_a.db, read_only=True) as store:
        result = export_bundle(lab_a.scan, store.con, home_a, ExportOptions())
    out = work / "export" / "bundle.json"
    with IntelStore(home_a.db_path) as istore:
        sign_and_publish(result.bundle, home_a, istore, valid_days=90, out=out)
    return result, out


@pytest.fixture
def fresh_b(tmp_path, homes):
    """Lab B's home with an empty intel store (each test imports what it needs)."""
    _, home_b = homes
    clone = copy.copy(home_b)
    clone.path = tmp_path / "home-b"
    clone.path.mkdir()
    for name in ("signing.pem", "signing.pub", "community.key"):
        (clone.path / name).write_bytes((home_b.path / name).read_bytes())
    clone.save()
    return IntelHome.load(clone.path)


def _write(path: Path, data) -> Path:
    path.write_bytes(orjson.dumps(data))
    return path


def _signed(tmp_path: Path, home: IntelHome, objects: list[dict], name: str = "b.json", *, valid_days: int = 30,
            sig_objects: list[dict] | None = None) -> Path:
    bundle = {"type": "bundle", "id": "bundle--0c0f3c39-4b8e-4c36-9d8b-2b7f4d6e1a55", "objects": objects}
    sig = sign_objects(sig_objects if sig_objects is not None else objects, home.signing_key(), home,
                       bundle_id=bundle["id"], valid_days=valid_days)
    path = _write(tmp_path / name, bundle)
    _write(tmp_path / (name + ".sig"), sig)
    return path


# ---------------------------------------------------------------- identifiers

@pytest.mark.parametrize("raw, normal", [
    ("Bob.Smith+api@Example.COM", "bob.smith@example.com"), ("b.o.b+x@googlemail.com", "bob@gmail.com"),
    (" dev48213@quickinbox.io ", "dev48213@quickinbox.io"), ("no-at-sign", None), ("a@b", None), (None, None)])
def test_email_normalisation(raw, normal):
    assert normalise_email(raw) == normal


def test_org_domain_skips_webmail_and_ip_prefix_cuts_networks():
    assert org_domain("x@gmail.com") is None and org_domain("ceo@Acme-Labs.io") == "acme-labs.io"
    assert ip_prefix("203.0.113.77") == "203.0.113.0/24" == ip_prefix("203.0.113.0/24")
    assert ip_prefix("2001:db8:1:2::5") == str(ipaddress.ip_network("2001:db8:1::/48"))
    assert ip_prefix("not an ip") is None


def test_hashes_are_keyed_and_normalised():
    k1, k2 = CommunityKey.generate(), CommunityKey.generate()
    a, b = hash_values(k1, "email", ["Bob+x@Example.com", "bob@example.com"])
    assert a == b and len(a) == 64
    assert hash_values(k2, "email", ["bob@example.com"])[0] != a
    assert hash_values(k1, "payment", ["bob@example.com"])[0] != a   # kinds do not collide


def test_template_signatures_need_the_key():
    prompts = [f"Topic: science > subject {i}\nAspect: core concepts\nAudience: a beginner\nOutput format: "
               f"a numbered list\nWrite the full answer." for i in range(30)]
    k1, k2 = CommunityKey.generate(), CommunityKey.generate()
    t1, t2 = campaign_templates(prompts, k1), campaign_templates(prompts, k2)
    assert len(t1) == 1 and t1[0].prompts == 30
    # same prompts, other key: nothing in common (a public seed cannot be tested without the key)
    assert (t1[0].signature == t2[0].signature).mean() < 0.1
    assert KeyedShingler(k1)(prompts[0]) != KeyedShingler(k2)(prompts[0])


# ---------------------------------------------------------------- export

def test_lab_a_flags_its_hydra_campaign(lab_a):
    campaigns = confirmed_campaigns(lab_a.scan)
    assert len(campaigns) == 1
    assert set(campaigns[0].accounts) == set(lab_a.hydra)
    assert campaigns[0].confidence >= 80


STRICT = ValidationOptions(version="2.1", strict=True)


def test_bundle_passes_stix2_validator_strict_and_parses_without_custom_content(exported):
    """0 errors and 0 warnings under --strict (every 'should' an error), for the bundle as written
    to disk and for its signature object; stix2 loads both with allow_custom=False."""
    result, path = exported
    written = orjson.loads(path.read_bytes())
    for instance in (result.bundle, written, orjson.loads(path.with_name(path.name + ".sig").read_bytes())):
        report = validate_instance(instance, STRICT)
        assert report.is_valid and not report.warnings, [str(e) for e in report.errors + report.warnings]
        stix2.parse(instance, allow_custom=False)
    parsed = stix2.parse(written, allow_custom=False)
    assert len(parsed.objects) == len(written["objects"])
    assert not any(k.startswith("x_") for o in written["objects"] for k in o)


def test_stix2_validator_cli_strict(exported):
    """The validator's own command line, as a peer would run it."""
    _, path = exported
    cli = Path(sys.executable).with_name("stix2_validator")
    run = subprocess.run([str(cli), "--strict", "--version", "2.1", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "STIX JSON: Valid" in run.stdout and "[X]" not in run.stdout


def test_strict_validator_catches_what_we_removed(exported):
    """The check is not vacuous: the previous form (x_ properties, UUIDv5 attack patterns) fails it."""
    result, _ = exported
    old = copy.deepcopy(result.bundle)
    ind = next(o for o in old["objects"] if o["type"] == "indicator")
    ind["x_distillguard_kind"] = ind.pop("extensions")[EXTENSION_ID]["kind"]
    report = validate_instance(old, STRICT)
    assert not report.is_valid and any("401" in str(e) for e in report.errors)
    with pytest.raises(stix2.exceptions.STIXError):
        stix2.parse(old, allow_custom=False)


def test_bundle_content(exported, homes, lab_a):
    result, _ = exported
    home_a, _ = homes
    by_type: dict[str, list[dict]] = {}
    for obj in result.objects:
        by_type.setdefault(obj["type"], []).append(obj)
    assert {"identity", "campaign", "threat-actor", "extension-definition", "indicator", "observed-data", "sighting",
            "relationship", "marking-definition"} <= set(by_type)
    assert by_type["identity"][0]["id"] == home_a.identity_id and by_type["identity"][0]["name"] == "Lab A"
    assert "attack-pattern" not in by_type   # ATLAS's own objects are referred to by their ids
    assert by_type["marking-definition"][0]["id"] == TLP_IDS["amber"]
    assert by_type["extension-definition"] == [extension_definition()]
    for obj in result.objects:
        if obj["type"] not in ("marking-definition", "extension-definition", "user-account") and obj["id"] != CREATOR_ID:
            assert obj["object_marking_refs"] == [TLP_IDS["amber"]], obj["type"]
    kinds = {i["extensions"][EXTENSION_ID]["kind"] for i in by_type["indicator"]}
    assert {"email", "payment", "ip24", "template"} <= kinds
    for ind in by_type["indicator"]:
        assert ind["valid_until"] > ind["valid_from"] and 1 <= ind["confidence"] <= 100
    campaign = by_type["campaign"][0]
    rels = {(r["source_ref"].split("--")[0], r["relationship_type"], r["target_ref"]) for r in by_type["relationship"]}
    assert ("campaign", "attributed-to", by_type["threat-actor"][0]["id"]) in rels
    for technique, _, stix_id in ATLAS:
        assert ("campaign", "uses", stix_id) in rels and ("threat-actor", "uses", stix_id) in rels
    assert atlas_id("AML.T0024.002") == "attack-pattern--3f567912-629a-5e0b-ab0c-0102977c2d6c"   # MITRE's id
    assert ("indicator", "indicates", campaign["id"]) in rels
    observed = by_type["observed-data"][0]
    cluster = next(c for c in lab_a.scan["clusters"] if c["flagged"])
    assert observed["number_observed"] == cluster["queries"] == result.campaigns[0].queries
    counts = observed["extensions"][EXTENSION_ID]
    assert counts["accounts"] == len(cluster["accounts"]) == len(observed["object_refs"])
    assert counts["queries"] == cluster["queries"]
    sighting = by_type["sighting"][0]
    assert sighting["sighting_of_ref"] == campaign["id"] and sighting["where_sighted_refs"] == [home_a.identity_id]
    assert sighting["first_seen"] <= sighting["last_seen"]


def test_no_raw_identifier_or_prompt_text_leaves(exported, lab_a):
    """Every identifier and prompt of lab A's input, searched for in the exported bundle."""
    _, path = exported
    text = path.read_text(encoding="utf-8").lower()
    sig_text = path.with_name(path.name + ".sig").read_text(encoding="utf-8").lower()
    needles = raw_needles(lab_a)
    assert len(needles) > 1000
    leaks = [n for n in needles if n in text or n in sig_text]
    assert leaks == []


def test_identifiers_shared_with_clear_accounts_are_withheld(lab_a, homes, tmp_path):
    """A /24 the campaign shares with an account in good standing is not exported."""
    home_a, _ = homes
    scan = copy.deepcopy(lab_a.scan)
    hydra = set(lab_a.hydra)
    bystander = next(a["account"] for a in scan["accounts"] if a["account"] not in hydra)
    prefix = next(e["ip"] for e in read_events(lab_a.events) if e["account"] in hydra).rsplit(".", 1)[0]
    db = tmp_path / "a2.duckdb"
    with EventStore(db) as store:
        store.con.execute(f"ATTACH '{lab_a.db}' AS src (READ_ONLY)")
        store.con.execute("INSERT INTO events SELECT * FROM src.events")
        store.con.execute("UPDATE events SET ip = ? WHERE account = ?", [prefix + ".9", bystander])
        result = export_bundle(scan, store.con, home_a, ExportOptions())
    assert result.withheld.get("ip24", 0) >= 1
    assert result.indicators.get("ip24", 0) < 3


def test_export_options_and_empty_scans(lab_a, homes):
    home_a, _ = homes
    with EventStore(lab_a.db, read_only=True) as store:
        green = export_bundle(lab_a.scan, store.con, home_a, ExportOptions(tlp="green", valid_days=7))
        nothing = export_bundle(lab_a.scan, store.con, home_a, ExportOptions(min_confidence=100))
    assert any(o["id"] == TLP_IDS["green"] for o in green.objects)
    ind = next(o for o in green.objects if o["type"] == "indicator")
    span = datetime.fromisoformat(ind["valid_until"][:19]) - datetime.fromisoformat(ind["valid_from"][:19])
    assert span == timedelta(days=7)
    assert nothing.campaigns == [] and {o["type"] for o in nothing.objects} == {"identity", "marking-definition",
                                                                                 "extension-definition"}
    with pytest.raises(Exception, match="not a scan result"):
        confirmed_campaigns({"hello": 1})


# ---------------------------------------------------------------- signatures and import

def test_import_verifies_and_stores(exported, fresh_b):
    result, path = exported
    with IntelStore(fresh_b.db_path) as store:
        imported = import_bundle(path, fresh_b, store)
        assert imported.peer == "lab-a" and not imported.replayed
        assert imported.objects == len(result.objects) and imported.new_objects == imported.objects
        assert imported.indicators == sum(result.indicators.values())
        again = import_bundle(path, fresh_b, store)            # a replay: a no-op
        assert again.replayed and "already imported" in again.summary()
        # a tampered copy of it is refused, not waved through as a replay
        bundle = orjson.loads(path.read_bytes())
        _first_indicator(bundle)["confidence"] = 100
        copy_path = _write(path.parent / "replayed-tampered.json", bundle)
        (path.parent / "replayed-tampered.json.sig").write_bytes(path.with_name(path.name + ".sig").read_bytes())
        with pytest.raises(VerificationError, match="changed after peer lab-a signed it"):
            import_bundle(copy_path, fresh_b, store)
        assert store.count(peer_collection("lab-a")) == len(result.objects)
        assert int(store.one("SELECT count(*) FROM intel_indicators")[0]) == imported.indicators


def _previous_form(bundle: dict) -> dict:
    """The bundle as the previous version wrote it: x_ properties, the custom template pattern type."""
    old = copy.deepcopy(bundle)
    for obj in old["objects"]:
        ext = obj.pop("extensions", {}).get(EXTENSION_ID) if obj["type"] in ("indicator", "observed-data") else None
        if obj["type"] == "indicator":
            obj["x_distillguard_kind"], obj["x_distillguard_key_id"] = ext["kind"], ext["community_key_id"]
            if ext["kind"] == "template":
                obj["pattern"] = template_pattern_value(obj["pattern_type"], obj["pattern"])
                obj["pattern_type"], obj["pattern_version"] = "x-distillguard-minhash", "1"
    return old


def test_bundles_of_the_previous_version_still_import(exported, fresh_b, homes, tmp_path):
    """Peers on the previous version are not cut off: their x_ form yields the same indicator rows;
    and an indicator hashed under another community key is told apart in either form."""
    result, path = exported
    home_a, _ = homes
    old = _previous_form(orjson.loads(path.read_bytes()))
    assert any(o.get("pattern_type") == "x-distillguard-minhash" for o in old["objects"])
    old_path = _signed(tmp_path, home_a, old["objects"], "old.json")
    with IntelStore(fresh_b.db_path) as store:
        imported = import_bundle(old_path, fresh_b, store)
        rows = store.all("SELECT kind, hash, template FROM intel_indicators ORDER BY ALL")
    assert imported.indicators == sum(result.indicators.values()) and imported.ignored == 0
    assert imported.kinds == result.indicators
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    clone = copy.copy(fresh_b)
    clone.path = fresh
    for name in ("signing.pem", "signing.pub", "community.key"):
        (fresh / name).write_bytes((fresh_b.path / name).read_bytes())
    clone.save()
    with IntelStore(clone.db_path) as store:
        import_bundle(path, clone, store)
        assert store.all("SELECT kind, hash, template FROM intel_indicators ORDER BY ALL") == rows
    for form in (orjson.loads(path.read_bytes()), old):
        other = copy.deepcopy(form)
        for obj in other["objects"]:
            if obj["type"] == "indicator":
                if "extensions" in obj:
                    obj["extensions"][EXTENSION_ID]["community_key_id"] = "0" * 16
                else:
                    obj["x_distillguard_key_id"] = "0" * 16
        other_path = _signed(tmp_path, home_a, other["objects"], f"other-{len(list(tmp_path.iterdir()))}.json")
        with IntelStore(fresh_b.db_path) as store:
            again = import_bundle(other_path, fresh_b, store)
        assert again.other_key == sum(result.indicators.values()) and again.indicators == 0


def _tamper(path: Path, tmp_path: Path, change) -> Path:
    bundle = orjson.loads(path.read_bytes())
    change(bundle)
    out = _write(tmp_path / "tampered.json", bundle)
    (tmp_path / "tampered.json.sig").write_bytes(path.with_name(path.name + ".sig").read_bytes())
    return out


def _first_indicator(bundle):
    return next(o for o in bundle["objects"] if o["type"] == "indicator")


@pytest.mark.parametrize("change, reason", [
    (lambda b: _first_indicator(b).update(confidence=100), "changed after peer lab-a signed it"),
    (lambda b: b["objects"].pop(), "missing from the bundle"),
    (lambda b: b["objects"].append(_first_indicator(b) | {"id": "indicator--4f7c2b1e-0000-4000-8000-000000000001"}),
     "is not covered by peer lab-a's signature"),
])
def test_tampered_bundles_are_rejected_and_nothing_is_stored(exported, fresh_b, tmp_path, change, reason):
    _, path = exported
    bad = _tamper(path, tmp_path, change)
    with IntelStore(fresh_b.db_path) as store:
        with pytest.raises(VerificationError, match=reason):
            import_bundle(bad, fresh_b, store)
        assert store.count() == 0 and int(store.one("SELECT count(*) FROM intel_indicators")[0]) == 0


def test_unsigned_unknown_forged_and_expired_bundles_are_rejected(exported, fresh_b, homes, tmp_path):
    home_a, home_b = homes
    result, path = exported
    unsigned = _write(tmp_path / "unsigned.json", result.bundle)
    with IntelStore(fresh_b.db_path) as store:
        with pytest.raises(VerificationError, match="unsigned bundle"):
            import_bundle(unsigned, fresh_b, store)
        # signed by lab B itself: not a registered peer of lab B
        own = _signed(tmp_path, home_b, result.bundle["objects"], "own.json")
        with pytest.raises(VerificationError, match="unknown peer"):
            import_bundle(own, fresh_b, store)
        # a signature whose fields were edited (expiry pushed out) no longer verifies
        sig = orjson.loads(path.with_name(path.name + ".sig").read_bytes())
        forged = _write(tmp_path / "forged.json", result.bundle)
        _write(tmp_path / "forged.json.sig", sig | {"expires": "2099-01-01T00:00:00.000Z"})
        with pytest.raises(VerificationError, match="does not verify"):
            import_bundle(forged, fresh_b, store)
        old = _signed(tmp_path, home_a, result.bundle["objects"], "old.json")
        sig = orjson.loads((tmp_path / "old.json.sig").read_bytes())
        from distillguard.intel.signing import _message  # re-sign with a past expiry, as an old bundle has
        sig["expires"] = "2020-01-01T00:00:00.000Z"
        sig["signature"] = home_a.signing_key().sign(_message(sig))
        _write(tmp_path / "old.json.sig", sig)
        with pytest.raises(VerificationError, match="expired bundle"):
            import_bundle(old, fresh_b, store)
        assert store.count() == 0


INDICATOR = {"type": "indicator", "spec_version": "2.1", "id": "indicator--9a1f0f3e-1111-4222-8333-444455556666",
             "created": "2026-10-01T00:00:00.000Z", "modified": "2026-10-01T00:00:00.000Z",
             "pattern": "[email-addr:x_hmac_sha256 = '" + "ab" * 32 + "']", "pattern_type": "stix",
             "valid_from": "2026-10-01T00:00:00.000Z", "confidence": 70}


@pytest.mark.parametrize("content, message", [
    (b'{"type": "bundle", "id": "bundle--1", "objects": [{"type": ', "malformed JSON"),
    (b"[1, 2, 3]", "not a STIX bundle"),
    (b'{"hello": "world"}', "not a STIX bundle"),
    (b'{"type": "report", "objects": []}', "not a STIX bundle"),
    (b"\xff\xfe garbage", "not UTF-8"),
])
def test_malformed_and_non_stix_input(tmp_path, fresh_b, homes, content, message):
    home_a, _ = homes
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    _write(tmp_path / "bad.json.sig", sign_objects([], home_a.signing_key(), home_a, bundle_id="bundle--x",
                                                   valid_days=1))
    with IntelStore(fresh_b.db_path) as store:
        with pytest.raises(BadInputError, match=message):
            import_bundle(path, fresh_b, store)
        assert store.count() == 0


def test_modified_before_created_fails_the_whole_bundle(tmp_path, fresh_b, homes):
    home_a, _ = homes
    good = [INDICATOR | {"id": f"indicator--9a1f0f3e-1111-4222-8333-{i:012d}"} for i in range(50)]
    bad = INDICATOR | {"id": "indicator--9a1f0f3e-1111-4222-8333-999999999999", "modified": "2026-09-01T00:00:00.000Z"}
    path = _signed(tmp_path, home_a, good + [bad])
    with IntelStore(fresh_b.db_path) as store:
        with pytest.raises(BadInputError, match="modified 2026-09-01T00:00:00.000Z is before created"):
            import_bundle(path, fresh_b, store)
        assert store.count() == 0 and int(store.one("SELECT count(*) FROM intel_indicators")[0]) == 0


def test_a_large_bundle_streams_in_one_transaction(tmp_path, fresh_b, homes):
    """30,000 indicators (~13 MB, many read chunks) import whole."""
    home_a, _ = homes
    objects = [INDICATOR | {"id": f"indicator--9a1f0f3e-1111-4222-8333-{i:012d}",
                            "pattern": f"[email-addr:x_hmac_sha256 = '{i:064x}']"} for i in range(30_000)]
    path = _signed(tmp_path, home_a, objects)
    assert path.stat().st_size > 8 << 20
    with IntelStore(fresh_b.db_path) as store:
        result = import_bundle(path, fresh_b, store)
        assert result.indicators == 30_000 and store.count() == 30_000


# ---------------------------------------------------------------- the scan signal

@pytest.fixture
def b_with_a_intel(exported, fresh_b):
    _, path = exported
    with IntelStore(fresh_b.db_path) as store:
        import_bundle(path, fresh_b, store)
    return fresh_b


def _scan_with(db: Path, home: IntelHome, now=None) -> dict:
    from distillguard.detect.scan import ScanOptions, scan_store

    with EventStore(db, read_only=True) as store:
        return scan_store(store, ScanOptions(intel=IntelSignal(home, now=now))).to_dict()


def test_imported_indicators_flag_matching_accounts_with_reasons(lab_a, b_with_a_intel):
    data = _scan_with(lab_a.db, b_with_a_intel)
    rows = {a["account"]: a for a in data["accounts"]}
    for account in lab_a.hydra:
        row = rows[account]
        assert row["intel"]["flagged"] and row["flagged"]
        details = [r["detail"] for r in row["reasons"] if r["signal"] == "intel_match"]
        assert any(d.startswith("e-mail hash matched indicator indicator--") and "from peer lab-a, confidence "
                   in d and "TLP:AMBER" in d and "Distillation campaign" in d for d in details), details
    organic = [a for a in data["accounts"] if a["account"] not in set(lab_a.hydra)]
    assert organic and not any("intel" in a for a in organic)


def test_without_intel_the_scan_is_unchanged(lab_a):
    from distillguard.detect.scan import ScanOptions, scan_store

    with EventStore(lab_a.db, read_only=True) as store:
        plain = scan_store(store, ScanOptions()).to_dict()
    assert plain["accounts"] == lab_a.scan["accounts"] and plain["clusters"] == lab_a.scan["clusters"]
    assert not any("intel" in a for a in plain["accounts"])


def test_revocation_and_expiry_remove_the_effect(lab_a, b_with_a_intel, homes, work):
    home_a, _ = homes
    account = lab_a.hydra[0]
    before = _scan_with(lab_a.db, b_with_a_intel)
    matched = {m["indicator"] for a in before["accounts"] if a["account"] == account for m in a["intel"]["matches"]}
    # expiry: the same indicators, seen 91 days later
    later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=91)
    assert not any("intel" in a for a in _scan_with(lab_a.db, b_with_a_intel, now=later)["accounts"])
    # revocation: A revokes what matched this account; B imports the signed revocation
    with IntelStore(home_a.db_path) as store:
        revoke(home_a, store, sorted(matched), valid_days=30, out=work / "revocation.json")
    revocation = orjson.loads((work / "revocation.json").read_bytes())   # a bundle we write: strict-valid too
    report = validate_instance(revocation, STRICT)
    assert report.is_valid and not report.warnings, [str(e) for e in report.errors + report.warnings]
    stix2.parse(revocation, allow_custom=False)
    with IntelStore(b_with_a_intel.db_path) as store:
        result = import_bundle(work / "revocation.json", b_with_a_intel, store)
    assert result.indicators == len(matched)
    after = {a["account"]: a for a in _scan_with(lab_a.db, b_with_a_intel)["accounts"]}
    assert not {m["indicator"] for m in after[account].get("intel", {}).get("matches", [])} & matched


def test_intel_never_lowers_a_score(lab_a, fresh_b, homes, tmp_path):
    """A peer's low-confidence (or revoked) indicator for an account we flag changes nothing of ours."""
    home_a, _ = homes
    account = next(a for a in lab_a.scan["accounts"] if a["flagged"])
    email = next(e["identity"]["email"] for e in read_events(lab_a.events) if e["account"] == account["account"])
    digest = hash_values(home_a.community_key(), "email", [email])[0]
    weak = INDICATOR | {"pattern": f"[email-addr:x_hmac_sha256 = '{digest}']", "confidence": 1,
                        "valid_from": "2026-01-01T00:00:00.000Z"}
    revoked = weak | {"id": "indicator--9a1f0f3e-1111-4222-8333-000000000777", "revoked": True}
    path = _signed(tmp_path, home_a, [weak, revoked])
    with IntelStore(fresh_b.db_path) as store:
        import_bundle(path, fresh_b, store)
    row = next(a for a in _scan_with(lab_a.db, fresh_b)["accounts"] if a["account"] == account["account"])
    assert row["flagged"] and row["score"] >= account["score"] and row["status"] == "flagged"
    assert len(row["intel"]["matches"]) == 1 and row["intel"]["matches"][0]["confidence"] == 1


def test_peer_trust_weighs_and_unregistered_peers_are_ignored(lab_a, b_with_a_intel):
    account = lab_a.hydra[0]
    full = {a["account"]: a for a in _scan_with(lab_a.db, b_with_a_intel)["accounts"]}
    b_with_a_intel.peers["lab-a"].trust = 0.1
    low = {a["account"]: a for a in _scan_with(lab_a.db, b_with_a_intel)["accounts"]}
    assert full[account]["intel"]["flagged"] and full[account]["intel"]["score"] > 0.95
    assert not low[account]["intel"]["flagged"] and low[account]["intel"]["score"] < 0.5
    assert "peer trust 0.1" in low[account]["reasons"][0]["detail"]
    del b_with_a_intel.peers["lab-a"]
    gone = _scan_with(lab_a.db, b_with_a_intel)
    assert not any("intel" in a for a in gone["accounts"])


# ---------------------------------------------------------------- command line

def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillguard", "intel", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_import_errors_are_one_line_exit_2(exported, fresh_b, tmp_path):
    result, _ = exported
    unsigned = _write(tmp_path / "unsigned.json", result.bundle)
    proc = _cli("import", str(unsigned), "--home", str(fresh_b.path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unsigned bundle") and "Traceback" not in proc.stderr
    (tmp_path / "junk.json").write_text("{not json")
    _write(tmp_path / "junk.json.sig", orjson.loads(exported[1].with_name("bundle.json.sig").read_bytes()))
    proc = _cli("import", str(tmp_path / "junk.json"), "--home", str(fresh_b.path))
    assert proc.returncode == 2 and "malformed JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("import", str(tmp_path / "nope.json"), "--home", str(fresh_b.path))
    assert proc.returncode == 2 and "no such bundle file" in proc.stderr


def test_cli_end_to_end_init_peer_export_import(lab_a, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli("init", "--org", "Lab A", "--home", str(a)).returncode == 0
    assert _cli("init", "--org", "Lab B", "--home", str(b), "--community-key", str(a / "community.key")).returncode == 0
    proc = _cli("add-peer", "lab-a", "--public-key", str(a / "signing.pub"), "--trust", "0.8", "--home", str(b))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bundle.json"
    proc = _cli("export", "--from", str(lab_a.db), "--out", str(out), "--home", str(a))
    assert proc.returncode == 0, proc.stderr
    assert "1 campaign(s)" in proc.stdout and out.exists() and (tmp_path / "bundle.json.sig").exists()
    proc = _cli("import", str(out), "--home", str(b))
    assert proc.returncode == 0 and "from peer lab-a" in proc.stdout, proc.stderr
    proc = _cli("import", str(out), "--home", str(b))
    assert proc.returncode == 0 and "already imported" in proc.stdout
    proc = _cli("scan", str(lab_a.db), "--home", str(b), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert sum(1 for x in data["accounts"] if x.get("intel", {}).get("flagged")) == len(lab_a.hydra)
    proc = _cli("init", "--org", "Lab A", "--home", str(a))
    assert proc.returncode == 2 and "already an intel home" in proc.stderr
    # the main scan command takes the same home (--intel), JSON and table alike
    main = [sys.executable, "-m", "distillguard", "scan", str(lab_a.db), "--intel", str(b)]
    proc = subprocess.run(main + ["--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["accounts"] == data["accounts"]
    proc = subprocess.run(main, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"{len(lab_a.hydra)} account(s) flagged by intel" in " ".join(proc.stdout.split())
    proc = subprocess.run(main[:-1] + [str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not an intel home" in proc.stderr and "Traceback" not in proc.stderr


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                                         max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(extensions=_json_values | st.dictionaries(st.just(EXTENSION_ID), _json_values),
       legacy_key=_json_values, pattern_type=st.sampled_from(["stix", "x-distillguard-minhash", "yara"]) | st.text(),
       pattern=st.sampled_from([INDICATOR["pattern"], "[artifact:extensions.'" + EXTENSION_ID
                                + "'.prompt_template_minhash = 'minhash-v1:3:" + "ab" * 256 + "']",
                                "minhash-v1:3:abcd", "minhash-v1:x:zz"]) | st.text(max_size=200))
def test_indicator_rows_from_any_peer_content_never_raise(extensions, legacy_key, pattern_type, pattern):
    """Peers' extension and pattern content (outside input): a row or a reason, never an exception."""
    obj = INDICATOR | {"extensions": extensions, "x_distillguard_key_id": legacy_key, "pattern_type": pattern_type,
                       "pattern": pattern}
    row, why = indicator_row(obj, "lab-a", "0" * 16, datetime(2026, 10, 2))
    assert (row is None) == (why != "ok") and why in ("ok", "ignored", "other_key")
    if row is not None:
        assert row["kind"] in ("email", "template") and (row["key_id"] is None or isinstance(row["key_id"], str))
