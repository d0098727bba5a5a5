"""The MISP path: `intel export --format misp` as a native MISP event (pymisp), what misp-stix
makes of our STIX bundle, and privacy of the MISP export.

Lab A (tests/intel_support.py) flags its hydra campaign; its export is turned into a MISP event,
loaded back with pymisp's ``MISPEvent().load``, and compared indicator by indicator.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import orjson
import pytest
from misp_stix_converter import ExternalSTIX2toMISPParser
from pymisp import MISPEvent

from distillguard.intel.export import ExportOptions, export_bundle
from distillguard.intel.extension import EXTENSION_ID, template_pattern_value
from distillguard.intel.identifiers import hash_values, ip_prefix
from distillguard.intel.misp import (ATLAS_CLUSTERS, GALAXY_TYPE, OBJECT_NAME, RELATIONS, bundle_to_misp,
                                     misp_indicator_attributes)
from distillguard.intel.vocab import parse_identifier_pattern
from distillguard.store import EventStore
from intel_support import make_homes, make_lab_a, raw_needles, read_events


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("intel-misp")
    lab_a = make_lab_a(work)
    home_a, _ = make_homes(work)
    with EventStore(lab_a.db, read_only=True) as store:
        result = export_bundle(lab_a.scan, store.con, home_a, ExportOptions())
    return lab_a, home_a, result


def _indicators(bundle: dict) -> dict[str, tuple[str, str]]:
    """indicator id -> (kind, value) read straight from the STIX bundle."""
    out = {}
    for obj in bundle["objects"]:
        if obj["type"] == "indicator":
            kind = obj["extensions"][EXTENSION_ID]["kind"]
            template = template_pattern_value(obj["pattern_type"], obj["pattern"])
            out[obj["id"]] = (kind, template if kind == "template" else parse_identifier_pattern(obj["pattern"])[1])
    return out


def _loaded(bundle: dict) -> MISPEvent:
    event = MISPEvent()
    event.load(bundle_to_misp(bundle).to_json())
    return event


def test_every_indicator_becomes_one_correlatable_attribute(lab):
    """Count in = count out, value for value, loaded back by pymisp."""
    _, home_a, result = lab
    wanted = _indicators(result.bundle)
    assert len(wanted) == sum(result.indicators.values()) >= 15
    event = _loaded(result.bundle)
    attributes = misp_indicator_attributes(event)
    assert len(attributes) == len(wanted)
    got = sorted((a.object_relation, a.value) for a in attributes)
    assert got == sorted((RELATIONS[kind][0], value) for kind, value in wanted.values())
    key_id = home_a.community_key().key_id
    for attr in attributes:
        assert attr.type == "text" and not attr.disable_correlation and not attr.to_ids
        assert key_id in attr.comment and ("HMAC-SHA256" in attr.comment or "MinHash" in attr.comment)
        assert len(attr.sightings) == 1 and attr.sightings[0].source == "Lab A"
        assert [t.name for t in attr.tags] == ["tlp:amber"]
    kinds = {a.object_relation: a.category for a in attributes}
    assert kinds["email-hmac"] == "Social network" and kinds["payment-hmac"] == "Financial fraud"


def test_event_groups_the_campaign_and_carries_atlas_galaxy_and_tlp(lab):
    lab_a, _, result = lab
    event = _loaded(result.bundle)
    assert event.Orgc.name == "Lab A" and event.distribution == 1 and "distillation" in event.info
    objects = [o for o in event.objects if o.name == OBJECT_NAME]
    assert len(objects) == len(result.campaigns) == 1
    by_rel = {a.object_relation: a.value for a in objects[0].attributes}
    cluster = next(c for c in lab_a.scan["clusters"] if c["flagged"])
    assert int(by_rel["accounts"]) == len(cluster["accounts"]) and int(by_rel["queries"]) == cluster["queries"]
    assert by_rel["stix-id"].startswith("campaign--") and by_rel["name"].startswith("Distillation campaign")
    tags = {t.name for t in event.tags}
    assert "tlp:amber" in tags
    for technique, (name, cluster_uuid) in ATLAS_CLUSTERS.items():
        assert f'misp-galaxy:{GALAXY_TYPE}="{name}"' in tags
        clusters = [c for g in event.galaxies for c in g.clusters if c.uuid == cluster_uuid]
        assert clusters and clusters[0].meta["external_id"] == [technique]


def test_attributes_are_what_a_peer_computes_from_the_same_identifiers(lab):
    """MISP correlates equal values: a peer hashing one of the actor's e-mails, cards or /24s under
    the community key gets exactly the attribute we export."""
    lab_a, home_a, result = lab
    key = home_a.community_key()
    values = {a.value for a in misp_indicator_attributes(_loaded(result.bundle))}
    hydra = set(lab_a.hydra)
    events = [e for e in read_events(lab_a.events) if e["account"] in hydra]
    emails = hash_values(key, "email", [e["identity"]["email"] for e in events])
    cards = hash_values(key, "payment", [e["identity"].get("payment") for e in events])
    prefixes = hash_values(key, "ip24", [ip_prefix(e["ip"]) for e in events])
    assert len(values & set(emails)) == result.indicators["email"]
    assert len(values & set(cards)) == result.indicators["payment"]
    assert len(values & set(prefixes)) == result.indicators["ip24"]


def test_no_raw_identifier_in_the_misp_export(lab):
    lab_a, _, result = lab
    text = bundle_to_misp(result.bundle).to_json().lower()
    needles = raw_needles(lab_a)
    assert len(needles) > 1000
    assert [n for n in needles if n in text] == []


def test_bundles_of_the_previous_version_convert_alike(lab):
    _, _, result = lab
    old = copy.deepcopy(result.bundle)
    for obj in old["objects"]:
        if obj["type"] == "indicator":
            ext = obj.pop("extensions")[EXTENSION_ID]
            obj["x_distillguard_kind"], obj["x_distillguard_key_id"] = ext["kind"], ext["community_key_id"]
            if ext["kind"] == "template":
                obj["pattern"] = template_pattern_value(obj["pattern_type"], obj["pattern"])
                obj["pattern_type"] = "x-distillguard-minhash"
    new = sorted((a.object_relation, a.value) for a in misp_indicator_attributes(_loaded(result.bundle)))
    assert sorted((a.object_relation, a.value) for a in misp_indicator_attributes(_loaded(old))) == new


def test_misp_stix_maps_none_of_our_keyed_hashes(lab, tmp_path):
    """Why the native path exists: misp-stix (the converter MISP uses for STIX) keeps each of our
    indicators as an opaque stix2-pattern object and yields no attribute holding a hash value.
    If this starts failing, misp-stix maps our patterns now: update docs/intel.md."""
    _, _, result = lab
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(result.bundle))
    from misp_stix_converter.misp_stix_converter import load_stix2_file

    parser = ExternalSTIX2toMISPParser()
    parser.load_stix_bundle(load_stix2_file(path))
    parser.parse_stix_bundle(single_event=True)
    event = MISPEvent()
    event.load(parser.misp_event.to_json())
    values = {v for _, v in _indicators(result.bundle).values()}
    attributes = list(event.attributes) + [a for o in event.objects for a in o.attributes]
    hash_valued = [a for a in attributes if a.value in values]
    patterns = [o for o in event.objects if o.name == "stix2-pattern"]
    print(f"misp-stix: {len(event.attributes)} event attributes, {len(event.objects)} objects "
          f"({len(patterns)} stix2-pattern), {len(hash_valued)} attributes holding an indicator's value; "
          f"native export: {len(misp_indicator_attributes(_loaded(result.bundle)))} of {len(values)}")
    assert hash_valued == [] and len(patterns) == len(values)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillguard", "intel", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_export_format_misp(lab, tmp_path):
    """`intel export --format misp`: a MISP event file pymisp loads, nothing published by default."""
    lab_a, _, result = lab
    home = tmp_path / "a"
    assert _cli("init", "--org", "Lab A", "--home", str(home)).returncode == 0
    out = tmp_path / "event.misp.json"
    proc = _cli("export", "--from", str(lab_a.db), "--out", str(out), "--format", "misp", "--home", str(home))
    assert proc.returncode == 0, proc.stderr
    event = MISPEvent()
    event.load_file(str(out))
    n = len(misp_indicator_attributes(event))
    assert n == sum(result.indicators.values()) and f"{n} indicator attribute(s)" in " ".join(proc.stdout.split())
    assert not out.with_name(out.name + ".sig").exists()
    from distillguard.intel.home import IntelHome
    from distillguard.intel.publish import SHARED
    from distillguard.intel.store import IntelStore

    h = IntelHome.load(home)
    if h.db_path.exists():
        with IntelStore(h.db_path) as store:
            assert store.count(SHARED) == 0          # --format misp publishes nothing unless --publish
    proc = _cli("export", "--from", str(lab_a.db), "--out", str(out), "--format", "openioc", "--home", str(home))
    assert proc.returncode == 2 and "--format" in proc.stderr and "Traceback" not in proc.stderr
