"""distillguard's STIX 2.1 extension: what our objects carry beyond the specification.

STIX 2.1 (section 7.3) wants custom content declared by an ``extension-definition`` object and
carried under ``extensions`` keyed by its id, not as ``x_`` properties. Ours is one definition,
with a fixed id, a fixed creator and a version, so every distillguard producer emits the same
object and a consumer keys on one id:

* ``property-extension`` on an ``indicator``: ``kind`` (email, payment, ip24, asn, org_domain,
  template) and ``community_key_id`` (the public fingerprint of the community HMAC key the value
  was hashed under);
* ``property-extension`` on ``observed-data``: ``accounts``, ``queries``, ``output_tokens``;
* ``property-extension`` on an ``artifact`` inside a template indicator's pattern:
  ``prompt_template_minhash`` (``minhash-v1:<size>:<hex>``);
* ``new-sdo``: the detached signature object ``x-distillguard-signature`` (signing.py), and the
  evidence log's ``x-distillguard-checkpoint`` and ``x-distillguard-cosignature`` (evidence/exchange.py).

Readers also accept the previous form (``x_distillguard_kind``/``x_distillguard_key_id`` on the
indicator, ``pattern_type`` ``x-distillguard-minhash``) so peers on the previous version are not
cut off: :func:`indicator_extension` and :func:`template_pattern_value` read both.
"""

from __future__ import annotations

import re
from typing import Any

# Fixed ids (UUIDv4, drawn once for distillguard): never change them, bump VERSION instead.
EXTENSION_ID = "extension-definition--decaead2-8407-415e-969c-0d185d2c8fef"
CREATOR_ID = "identity--72106d4b-31fd-4c79-aa0b-01a51a2e3e5a"
CREATED = "2026-12-01T00:00:00.000Z"
VERSION = "1.0.0"
SCHEMA = ("urn:distillguard:stix-extension:intel:1.0.0 (JSON Schema: distillguard/intel/extension.py "
          "EXTENSION_SCHEMA; described in docs/intel.md, section 'The STIX extension')")

KINDS = ("email", "payment", "ip24", "asn", "org_domain", "template")
TEMPLATE_PROPERTY = "prompt_template_minhash"
LEGACY_TEMPLATE_PATTERN_TYPE = "x-distillguard-minhash"   # bundles of the previous version

# The normative definition of the properties (JSON Schema, draft 2020-12), per object type.
EXTENSION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:distillguard:stix-extension:intel:1.0.0",
    "title": "distillguard intel extension",
    "oneOf": [
        {"title": "indicator", "type": "object", "required": ["extension_type", "kind", "community_key_id"],
         "properties": {"extension_type": {"const": "property-extension"},
                        "kind": {"enum": list(KINDS)},
                        "community_key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"}},
         "additionalProperties": False},
        {"title": "observed-data", "type": "object", "required": ["extension_type", "accounts", "queries"],
         "properties": {"extension_type": {"const": "property-extension"},
                        "accounts": {"type": "integer", "minimum": 0},
                        "queries": {"type": "integer", "minimum": 0},
                        "output_tokens": {"type": "integer", "minimum": 0}},
         "additionalProperties": False},
        {"title": "artifact (in patterns)", "type": "object", "required": [TEMPLATE_PROPERTY],
         "properties": {TEMPLATE_PROPERTY: {"type": "string", "pattern": "^minhash-v1:[0-9]+:[0-9a-f]{512}$"}}},
        {"title": "new-sdo: x-distillguard-signature, x-distillguard-checkpoint, x-distillguard-cosignature",
         "type": "object", "required": ["extension_type"],
         "properties": {"extension_type": {"const": "new-sdo"}}},
    ],
}


def creator_identity() -> dict[str, Any]:
    """The identity that defines the extension (the same object at every producer)."""
    return {"type": "identity", "spec_version": "2.1", "id": CREATOR_ID, "created": CREATED, "modified": CREATED,
            "name": "distillguard project", "identity_class": "organization",
            "description": "Authors of the distillguard software; defines its STIX extension."}


def extension_definition() -> dict[str, Any]:
    return {"type": "extension-definition", "spec_version": "2.1", "id": EXTENSION_ID, "created": CREATED,
            "modified": CREATED, "created_by_ref": CREATOR_ID, "name": "distillguard intel",
            "description": ("Model-extraction (distillation) intelligence shared by distillguard: the kind and "
                            "community key of keyed-hash indicators, counts on observed data, keyed MinHash "
                            "signatures of prompt templates, and the detached signature object."),
            "schema": SCHEMA, "version": VERSION, "extension_types": ["property-extension", "new-sdo"]}


def extension(**properties: Any) -> dict[str, Any]:
    """An object's ``extensions`` member carrying our property extension."""
    return {EXTENSION_ID: {"extension_type": "property-extension", **properties}}


def new_sdo_extension() -> dict[str, Any]:
    return {EXTENSION_ID: {"extension_type": "new-sdo"}}


def indicator_extension(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(kind, community key id) of an indicator: our extension, else the previous ``x_`` form."""
    extensions = obj.get("extensions")
    ext = extensions.get(EXTENSION_ID) if isinstance(extensions, dict) else None
    if isinstance(ext, dict):
        kind, key_id = ext.get("kind"), ext.get("community_key_id")
    else:
        kind, key_id = obj.get("x_distillguard_kind"), obj.get("x_distillguard_key_id")
    return (kind if isinstance(kind, str) else None), (key_id if isinstance(key_id, str) else None)


def template_pattern(signature: str) -> str:
    """A STIX pattern over an artifact carrying the keyed MinHash in our extension."""
    return f"[artifact:extensions.'{EXTENSION_ID}'.{TEMPLATE_PROPERTY} = '{signature}']"


_TEMPLATE = re.compile(r"^\[artifact:extensions\.'" + re.escape(EXTENSION_ID) + r"'\." + TEMPLATE_PROPERTY
                       + r" = '(minhash-v1:[0-9]+:[0-9a-f]+)'\]$")


def template_pattern_value(pattern_type: object, pattern: object) -> str | None:
    """The ``minhash-v1:…`` signature of a template indicator (this version's form or the previous)."""
    if not isinstance(pattern, str):
        return None
    if pattern_type == LEGACY_TEMPLATE_PATTERN_TYPE:
        return pattern
    if pattern_type == "stix":
        m = _TEMPLATE.match(pattern)
        return m.group(1) if m else None
    return None
