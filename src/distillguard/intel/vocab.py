"""Fixed STIX content: TLP 2.0 markings, the MITRE ATLAS techniques, identifier patterns, timestamps."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# TLP 2.0 marking definitions as published by OASIS (cti-stix-common-objects, extension
# definition 60a3c5c5…): fixed ids, fixed created, so every producer emits the same objects.
TLP_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP_CREATED = "2022-10-01T00:00:00.000Z"
TLP_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_BY_ID = {v: k for k, v in TLP_IDS.items()}


def tlp_marking(level: str) -> dict:
    return {"type": "marking-definition", "spec_version": "2.1", "id": TLP_IDS[level], "created": TLP_CREATED,
            "name": f"TLP:{level.upper()}",
            "extensions": {TLP_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}}}


def tlp_name(marking_refs: list[str] | None) -> str:
    """The strictest TLP among an object's markings, as 'TLP:AMBER' (or 'TLP:unmarked')."""
    order = ("clear", "green", "amber", "amber+strict", "red")
    levels = [TLP_BY_ID[r] for r in marking_refs or () if r in TLP_BY_ID]
    return f"TLP:{max(levels, key=order.index).upper()}" if levels else "TLP:unmarked"


# MITRE ATLAS techniques a distillation campaign uses, under ATLAS's OWN STIX ids, so every
# producer (and MITRE's data) refers to the same objects. Source: MITRE's published STIX bundle,
# github.com/mitre-atlas/atlas-navigator-data dist/stix-atlas.json (ATLAS 5.6.0, commit 6f66878,
# 2026-04-30). MITRE mints these ids as UUIDv5, which stix2-validator --strict flags (103: SDOs
# SHOULD use UUIDv4), so bundles refer to them (relationships, the MISP galaxy) without embedding
# MITRE's objects: a consumer resolves them from ATLAS's own feed.
ATLAS = (
    ("AML.T0040", "AI Model Inference API Access", "attack-pattern--5ac1f849-523e-51bf-a1e9-1a97ab91cc91"),
    ("AML.T0024.002", "Extract AI Model", "attack-pattern--3f567912-629a-5e0b-ab0c-0102977c2d6c"),
    ("AML.T0005.001", "Train Proxy via Replication", "attack-pattern--298dc6c6-5683-5475-b724-2a2a3db3a7dc"),
)
_ATLAS_IDS = {tid: sid for tid, _, sid in ATLAS}


def atlas_id(technique: str) -> str:
    """ATLAS's own STIX id of a technique we use."""
    return _ATLAS_IDS[technique]


def atlas_url(technique: str) -> str:
    return f"https://atlas.mitre.org/techniques/{technique}"


# Identifier indicators: one STIX pattern per kind, a custom property holding the keyed hash.
PATTERN_FOR_KIND = {
    "email": ("email-addr", "x_hmac_sha256"),
    "payment": ("user-account", "x_payment_hmac_sha256"),
    "ip24": ("ipv4-addr", "x_prefix_hmac_sha256"),
    "asn": ("autonomous-system", "x_hmac_sha256"),
    "org_domain": ("domain-name", "x_hmac_sha256"),
}
KIND_FOR_PATTERN = {v: k for k, v in PATTERN_FOR_KIND.items()}
# Template indicators of the previous version (read, no longer written: see extension.py).
TEMPLATE_PATTERN_TYPE = "x-distillguard-minhash"
_PATTERN = re.compile(r"^\[([a-z0-9-]+):([a-z0-9_]+) = '([0-9a-f]{64})'\]$")


def identifier_pattern(kind: str, digest: str) -> str:
    obj, prop = PATTERN_FOR_KIND[kind]
    return f"[{obj}:{prop} = '{digest}']"


def parse_identifier_pattern(pattern: str) -> tuple[str, str] | None:
    """(kind, hash) of one of our identifier patterns, or None."""
    m = _PATTERN.match(pattern)
    if not m:
        return None
    kind = KIND_FOR_PATTERN.get((m.group(1), m.group(2)))
    return (kind, m.group(3)) if kind else None


# ---------------------------------------------------------------- timestamps

def stix_ts(dt: datetime) -> str:
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_ts(offset: timedelta = timedelta(0)) -> str:
    return stix_ts(datetime.now(timezone.utc) + offset)


_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def parse_ts(value: object) -> datetime | None:
    """A STIX timestamp (RFC 3339, UTC 'Z') as an aware datetime; None if it is not one."""
    if not isinstance(value, str) or not _TS.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
