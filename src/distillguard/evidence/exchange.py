"""Checkpoints over the intel channel: publish ours, witness peers', collect their cosignatures.

Everything travels as STIX 2.1 custom objects inside the intel module's signed bundles, in our
TAXII ``shared`` collection; peers pull them with ``distillguard intel sync`` (which verifies the
bundle signature and keeps the objects under ``peer:<name>``). No change to the intel protocol:

* ``x-distillguard-checkpoint``: our signed checkpoint (``note``), with consistency proofs from our
  earlier checkpoints (``proofs``: old size -> hex hashes) so a witness can check it extends
  whichever one it cosigned last;
* ``x-distillguard-cosignature``: a peer's cosigned version of one of our checkpoints (``note``).

Both are ``new-sdo`` objects of distillguard's STIX extension (:mod:`distillguard.intel.extension`).

The log key of a peer's checkpoint is that peer's registered Ed25519 key (the one that verifies its
bundles), so a witness needs no other key exchange.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson

from distillguard.evidence import treestore
from distillguard.evidence.note import Checkpoint, NoteError, SignedNote, open_checkpoint
from distillguard.evidence.witness import CHECKPOINT_TYPE, Witness, WitnessError
from distillguard.intel.extension import new_sdo_extension
from distillguard.intel.home import IntelHome
from distillguard.intel.keys import parse_public_key
from distillguard.intel.publish import sign_and_publish
from distillguard.intel.store import IntelStore
from distillguard.intel.vocab import now_ts
from distillguard.store import EventStore

COSIGNATURE_TYPE = "x-distillguard-cosignature"
MAX_PROOFS = 32


def _bundle(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}


def publish_checkpoints(store: EventStore, home: IntelHome, istore: IntelStore) -> int:
    """Publish the newest checkpoint of each of our trees (with proofs from the earlier ones)."""
    public = home.signing_key().public
    objects = []
    for log_id in treestore.logs(store):
        kept = treestore.checkpoints(store, log_id)
        if not kept:
            continue
        size, note = kept[-1]
        open_checkpoint(note, public, origin=log_id)     # only our own, valid ones leave
        levels = treestore.load_levels(store, log_id)
        proofs = {str(old): [h.hex() for h in levels.consistency_proof(old, size)]
                  for old, _ in kept[-MAX_PROOFS - 1:-1] if 0 < old < size}
        now = now_ts()
        objects.append({"type": CHECKPOINT_TYPE, "spec_version": "2.1", "id": f"{CHECKPOINT_TYPE}--{uuid.uuid4()}",
                        "created": now, "modified": now, "created_by_ref": home.identity_id, "origin": log_id,
                        "tree_size": size, "note": note, "proofs": proofs, "extensions": new_sdo_extension()})
    if objects:
        sign_and_publish(_bundle(objects), home, istore, valid_days=home.valid_days)
    return len(objects)


def _peer_objects(istore: IntelStore, kind: str) -> list[tuple[str, dict[str, Any]]]:
    rows = istore.all("SELECT collection, json FROM intel_objects WHERE type = ? AND collection LIKE 'peer:%' "
                      "ORDER BY seq", [kind])
    return [(c[len("peer:"):], orjson.loads(j)) for c, j in rows]


def witness_peers(home: IntelHome, istore: IntelStore, state: str | Path, name: str) -> dict[str, list[str]]:
    """Cosign every peer checkpoint received since, if it extends the last one we cosigned of that
    log; publish the cosignatures. Returns {"cosigned": [...], "refused": [reasons]}."""
    signing = home.signing_key()
    out: dict[str, list[str]] = {"cosigned": [], "refused": []}
    cosigned = []
    seen_path = Path(state) / "seen-objects.txt"
    seen = set(seen_path.read_text(encoding="utf-8").split()) if seen_path.exists() else set()
    for peer_name, obj in _peer_objects(istore, CHECKPOINT_TYPE):
        peer = home.peers.get(peer_name)
        note = obj.get("note")
        if peer is None or not isinstance(note, str) or obj.get("id") in seen:
            continue
        seen.add(str(obj.get("id")))
        try:
            cp = Checkpoint.parse(SignedNote.parse(note).text)
        except NoteError as exc:
            out["refused"].append(f"{peer_name}: {exc}")
            continue
        w = Witness(state, name, signing, {cp.origin: parse_public_key(peer.public_key, f"peer {peer_name}")})
        last = w.last(cp.origin)
        if last is not None and last[0] == cp.size and last[1] == cp.root:
            continue                                      # already cosigned
        proofs = obj.get("proofs") if isinstance(obj.get("proofs"), dict) else {}
        proof = proofs.get(str(last[0])) if last is not None else []
        try:
            note_out = w.cosign(note, [str(h) for h in (proof or [])])
        except WitnessError as exc:
            out["refused"].append(f"{peer_name} {cp.origin}@{cp.size}: {exc}")
            continue
        now = now_ts()
        cosigned.append({"type": COSIGNATURE_TYPE, "spec_version": "2.1", "id": f"{COSIGNATURE_TYPE}--{uuid.uuid4()}",
                         "created": now, "modified": now, "created_by_ref": home.identity_id, "origin": cp.origin,
                         "tree_size": cp.size, "note": note_out, "extensions": new_sdo_extension()})
        out["cosigned"].append(f"{cp.origin}@{cp.size}")
    Path(state).mkdir(parents=True, exist_ok=True)
    seen_path.write_text("".join(f"{i}\n" for i in sorted(seen)), encoding="utf-8")
    if cosigned:
        sign_and_publish(_bundle(cosigned), home, istore, valid_days=home.valid_days)
    return out


def collect_cosignatures(store: EventStore, home: IntelHome, istore: IntelStore) -> int:
    """Merge peers' valid cosignatures of our checkpoints into the store; returns how many were new."""
    public = home.signing_key().public
    added = 0
    for peer_name, obj in _peer_objects(istore, COSIGNATURE_TYPE):
        peer = home.peers.get(peer_name)
        note = obj.get("note")
        if peer is None or not isinstance(note, str):
            continue
        try:
            cp, signed = open_checkpoint(note, public)
        except NoteError:
            continue
        key = parse_public_key(peer.public_key, f"peer {peer_name}")
        names = {n for n, _ in signed.signatures if signed.cosignature(n, key) is not None}
        if not names:
            continue
        added += treestore.merge_cosignatures(store, cp, signed, {n: key for n in names})
    return added
