"""Signing what we share, writing it out, and publishing it to our TAXII collection; revocation."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Sequence

import orjson

from distillguard.errors import UsageError
from distillguard.intel.home import IntelHome
from distillguard.intel.signing import sign_objects
from distillguard.intel.store import IntelStore
from distillguard.intel.vocab import now_ts

SHARED = "shared"


def sign_and_publish(bundle: dict[str, Any], home: IntelHome, store: IntelStore | None, *, valid_days: int,
                     out: Path | None = None, collection: str = SHARED) -> dict[str, Any]:
    """Sign the bundle's objects; write ``out`` and ``out.sig``; add objects and signature to our collection."""
    signature = sign_objects(bundle["objects"], home.signing_key(), home, bundle_id=bundle["id"],
                             valid_days=valid_days)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
        out.with_name(out.name + ".sig").write_bytes(orjson.dumps(signature, option=orjson.OPT_INDENT_2) + b"\n")
    if store is not None:
        with store.transaction():
            store.add_objects(collection, bundle["objects"], source="export")
            store.add_objects(collection, [signature], source="export")
    return signature


def revoke(home: IntelHome, store: IntelStore, ids: Sequence[str], *, valid_days: int,
           out: Path | None = None) -> dict[str, Any]:
    """New revoked versions of objects we published, signed and published like an export."""
    objects = []
    now = now_ts()
    for oid in ids:
        latest = store.latest(SHARED, oid)
        if latest is None:
            raise UsageError(f"{oid} is not an object we published (see 'intel export')")
        if latest.get("created_by_ref") != home.identity_id:
            raise UsageError(f"{oid} was not created by us; only its creator can revoke it")
        if latest.get("revoked"):
            raise UsageError(f"{oid} is already revoked")
        objects.append(latest | {"revoked": True, "modified": max(now, latest.get("modified", now))})
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    sign_and_publish(bundle, home, store, valid_days=valid_days, out=out)
    return bundle
