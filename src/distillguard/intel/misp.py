"""`intel export --format misp`: our STIX bundle as a native MISP event.

misp-stix turns our STIX bundle into an event with no correlatable attribute: MISP has no mapping
for keyed-hash patterns, so they stay opaque ``stix2-pattern`` objects. This module writes the
event directly, from the bundle (so exactly what the STIX export shares, nothing more):

* one ``distillguard-campaign`` object per campaign (our object template, shipped here): its
  name, first/last seen, confidence and counts (``counter``, not correlated), and one ``text``
  attribute per indicator, each the keyed hash of one identifier or a template signature, with a
  comment saying which keyed hash it is. MISP correlates ``text`` attributes on equal values, so
  two peers' events (one community key) correlate on every shared identifier;
* a sighting of each indicator attribute by us, at the campaign's last seen;
* the MITRE ATLAS techniques as ``mitre-atlas-attack-pattern`` galaxy clusters (tags and the
  galaxy block, by the clusters' uuids), the TLP as a ``tlp:`` tag and the matching distribution.

Attributes are not ``to_ids``: a keyed hash means nothing to an IDS without the community key.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from pymisp import MISPEvent, MISPObject, MISPOrganisation

from distillguard.intel.extension import EXTENSION_ID, indicator_extension, template_pattern_value
from distillguard.intel.vocab import ATLAS, parse_identifier_pattern, parse_ts, tlp_name

OBJECT_NAME = "distillguard-campaign"
_NS = uuid.UUID("decaead2-8407-415e-969c-0d185d2c8fef")   # our extension definition's uuid, as a namespace

# MISP object relation, MISP category, and what the value is (for the attribute's comment).
RELATIONS = {
    "email": ("email-hmac", "Social network", "HMAC-SHA256 of a normalised e-mail address"),
    "payment": ("payment-hmac", "Financial fraud", "HMAC-SHA256 of a payment-method fingerprint"),
    "ip24": ("ip-prefix-hmac", "Network activity", "HMAC-SHA256 of an IPv4 /24 (or IPv6 /48) prefix"),
    "asn": ("asn-hmac", "Network activity", "HMAC-SHA256 of an autonomous system number (AS<n>)"),
    "org_domain": ("org-domain-hmac", "Network activity", "HMAC-SHA256 of an organisation's e-mail domain"),
    "template": ("prompt-template-minhash", "Payload type",
                 "MinHash (64 permutations) of a prompt template's keyed 3-token shingles"),
}
INDICATOR_RELATIONS = frozenset(r for r, _, _ in RELATIONS.values())

TEMPLATE: dict[str, Any] = {
    "name": OBJECT_NAME, "uuid": str(uuid.uuid5(_NS, "misp-object-template/" + OBJECT_NAME)), "version": 1,
    "meta-category": "misc",
    "description": ("A model-extraction (distillation) campaign seen by a distillguard peer: keyed hashes "
                    "(HMAC-SHA256 under the community key) of its accounts' identifiers and keyed MinHash "
                    "signatures of its prompt templates. Values match only under the same community key."),
    "requiredOneOf": sorted(INDICATOR_RELATIONS),
    "attributes": {
        **{rel: {"description": what, "misp-attribute": "text", "multiple": True, "ui-priority": 1}
           for rel, _, what in RELATIONS.values()},
        "name": {"description": "Campaign name", "misp-attribute": "text", "disable_correlation": True,
                 "ui-priority": 1},
        "stix-id": {"description": "The campaign's STIX id", "misp-attribute": "text",
                    "disable_correlation": True, "ui-priority": 0},
        "first-seen": {"description": "First seen", "misp-attribute": "datetime", "ui-priority": 0},
        "last-seen": {"description": "Last seen", "misp-attribute": "datetime", "ui-priority": 0},
        "confidence": {"description": "Confidence 0-100", "misp-attribute": "counter", "ui-priority": 0},
        "accounts": {"description": "Accounts in the campaign", "misp-attribute": "counter", "ui-priority": 0},
        "queries": {"description": "Queries sent", "misp-attribute": "counter", "ui-priority": 0},
        "output-tokens": {"description": "Output tokens harvested", "misp-attribute": "counter", "ui-priority": 0},
        "community-key-id": {"description": "Public fingerprint of the community HMAC key",
                             "misp-attribute": "text", "disable_correlation": True, "ui-priority": 0},
    },
}

# MISP galaxy clusters of the techniques (MISP/misp-galaxy clusters/mitre-atlas-attack-pattern.json;
# the cluster uuids are stable, their names follow ATLAS's renames).
GALAXY_TYPE = "mitre-atlas-attack-pattern"
GALAXY_UUID = "95e55c7e-68a9-453b-9677-020c8fc06333"
ATLAS_CLUSTERS = {
    "AML.T0040": ("AI Model Inference API Access", "90a420d4-3f03-4800-86c0-223c4376804a"),
    "AML.T0024.002": ("Extract ML Model", "f78e0ac3-6d72-42ed-b20a-e10d8c752cf6"),
    "AML.T0005.001": ("Train Proxy via Replication", "a3660a2d-f6e5-4f1b-9618-332cceb389c8"),
}
# TLP -> MISP distribution (0 your organisation only, 1 this community only, 3 all communities).
DISTRIBUTION = {"TLP:RED": 0, "TLP:AMBER+STRICT": 0, "TLP:AMBER": 1, "TLP:GREEN": 1, "TLP:CLEAR": 3}


def galaxy_tag(technique: str) -> str:
    return f'misp-galaxy:{GALAXY_TYPE}="{ATLAS_CLUSTERS[technique][0]}"'


def _dt(ts: str | None) -> datetime | None:
    return parse_ts(ts) if ts else None


def _indicator_value(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, value) of one of our indicators, in this version's form or the previous one."""
    template = template_pattern_value(obj.get("pattern_type"), obj.get("pattern"))
    if template is not None:
        return "template", template
    if obj.get("pattern_type") == "stix":
        parsed = parse_identifier_pattern(str(obj.get("pattern", "")))
        if parsed is not None:
            return parsed
    return None


def bundle_to_misp(bundle: dict[str, Any]) -> MISPEvent:
    """The MISP event of one of our bundles: every indicator becomes one correlatable attribute."""
    objects = bundle["objects"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_type.setdefault(obj["type"], []).append(obj)
    identities = by_type.get("identity", [])
    creator_ref = next((o.get("created_by_ref") for o in by_type.get("campaign", []) if o.get("created_by_ref")), None)
    org = next((i for i in identities if i["id"] == creator_ref), identities[0] if identities else {"name": "?"})
    campaigns = {c["id"]: c for c in by_type.get("campaign", [])}
    indicates = {r["source_ref"]: r["target_ref"] for r in by_type.get("relationship", [])
                 if r.get("relationship_type") == "indicates"}
    observed = {s["sighting_of_ref"]: s for s in by_type.get("sighting", [])}
    counts = {o["id"]: (o.get("extensions") or {}).get(EXTENSION_ID, {}) for o in by_type.get("observed-data", [])}
    tlp = tlp_name(next((o.get("object_marking_refs") for o in objects if o.get("object_marking_refs")), None))

    event = MISPEvent()
    event.uuid = str(uuid.uuid5(_NS, "misp-event/" + bundle["id"]))
    creator = MISPOrganisation()
    creator.name = org.get("name", "?")
    creator.uuid = str(uuid.uuid5(_NS, "misp-org/" + org.get("id", "")))
    event.Orgc = creator
    event.info = (f"distillguard: {len(campaigns)} model-extraction (distillation) campaign(s) seen by "
                  f"{creator.name}")
    event.distribution = DISTRIBUTION.get(tlp, 0)
    event.threat_level_id = 2
    event.analysis = 2
    dates = [d for d in (_dt(c.get("last_seen")) for c in campaigns.values()) if d is not None]
    event.date = max(dates).date() if dates else datetime.now().date()
    if tlp != "TLP:unmarked":
        event.add_tag(tlp.lower())
    if campaigns:
        galaxy = event.add_galaxy(type=GALAXY_TYPE, name="MITRE ATLAS Techniques", uuid=GALAXY_UUID)
        for technique, _, _ in ATLAS:
            name, cluster_uuid = ATLAS_CLUSTERS[technique]
            event.add_tag(galaxy_tag(technique))
            galaxy.add_galaxy_cluster(type=GALAXY_TYPE, value=name, uuid=cluster_uuid, tag_name=galaxy_tag(technique),
                                      meta={"external_id": [technique]})

    grouped: dict[str, MISPObject] = {}
    for cid, campaign in campaigns.items():
        obj = MISPObject(OBJECT_NAME, misp_objects_template_custom=TEMPLATE, standalone=False)
        obj.uuid = str(uuid.uuid5(_NS, "misp-object/" + cid))
        obj.add_attribute("name", value=campaign.get("name", cid), disable_correlation=True)
        obj.add_attribute("stix-id", value=cid, disable_correlation=True)
        for rel, key in (("first-seen", "first_seen"), ("last-seen", "last_seen")):
            if campaign.get(key):
                obj.add_attribute(rel, value=_dt(campaign[key]))
        if "confidence" in campaign:
            obj.add_attribute("confidence", value=int(campaign["confidence"]))
        sighting = observed.get(cid, {})
        numbers = next((counts[o] for o in sighting.get("observed_data_refs", []) if o in counts), {})
        for rel, key in (("accounts", "accounts"), ("queries", "queries"), ("output-tokens", "output_tokens")):
            if key in numbers:
                obj.add_attribute(rel, value=int(numbers[key]))
        grouped[cid] = obj
    for ind in by_type.get("indicator", []):
        found = _indicator_value(ind)
        cid = indicates.get(ind["id"])
        if found is None or cid not in grouped:
            continue
        kind, value = found
        rel, category, what = RELATIONS[kind]
        _, key_id = indicator_extension(ind)
        obj = grouped[cid]
        if key_id and not any(a.object_relation == "community-key-id" for a in obj.attributes):
            obj.add_attribute("community-key-id", value=key_id, disable_correlation=True)
        attr = obj.add_attribute(
            rel, value=value, type="text", category=category, to_ids=False,
            uuid=str(uuid.uuid5(_NS, "misp-attribute/" + ind["id"])),
            comment=(f"{what}, keyed under distillguard community key {key_id or '?'} (normalised as in "
                     f"distillguard docs/intel.md); STIX {ind['id']}, confidence {ind.get('confidence', '?')}, "
                     f"valid until {ind.get('valid_until', '-')}"),
            first_seen=_dt(campaigns[cid].get("first_seen")), last_seen=_dt(campaigns[cid].get("last_seen")))
        if tlp != "TLP:unmarked":
            attr.add_tag(tlp.lower())
        seen = _dt(observed.get(cid, {}).get("last_seen")) or _dt(ind.get("valid_from"))
        attr.add_sighting(type="0", source=creator.name, date_sighting=int(seen.timestamp()) if seen else None)
    for obj in grouped.values():
        event.add_object(obj)
    return event


def misp_indicator_attributes(event: MISPEvent) -> list:
    """The attributes of an event that carry our indicators (what a count in = count out compares)."""
    return [a for o in event.objects if o.name == OBJECT_NAME for a in o.attributes
            if a.object_relation in INDICATOR_RELATIONS]


def write_misp_event(bundle: dict[str, Any], out: Path) -> int:
    """Write the bundle's MISP event to ``out`` (MISP JSON); returns the indicator attributes written."""
    event = bundle_to_misp(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(event.to_json(indent=2) + "\n", encoding="utf-8")
    return len(misp_indicator_attributes(event))
