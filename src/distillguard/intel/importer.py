"""`intel import`: verify a peer's signed bundle, then store it in one transaction.

Order of checks: the signature (unsigned, unknown peer, bad signature, expired) before reading
a single object; then each object as it streams past (STIX rules, covered by the signature,
unchanged); then that no signed object is missing. Anything wrong rolls the whole import back.
A bundle imported before (same signature, objects unchanged) is a no-op; object versions already
held are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from distillguard.errors import BadInputError, load_json_file
from distillguard.intel.bundle import BundleHeader, read_bundle
from distillguard.intel.home import IntelHome
from distillguard.intel.identifiers import TemplateSignature
from distillguard.intel.signing import SignatureCheck
from distillguard.intel.store import IntelStore, peer_collection, utcnow
from distillguard.intel.extension import indicator_extension, template_pattern_value
from distillguard.intel.vocab import parse_identifier_pattern, parse_ts, tlp_name

BATCH = 20_000
DEFAULT_CONFIDENCE = 50   # STIX: no confidence given means unknown; count it as middling


@dataclass
class ImportResult:
    peer: str
    source: str
    objects: int = 0
    new_objects: int = 0
    indicators: int = 0            # indicator versions we can match on
    ignored: int = 0               # indicators whose pattern is not one of ours
    other_key: int = 0             # indicators hashed under another community key
    replayed: bool = False
    previously: str | None = None
    signature_id: str = ""
    kinds: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if self.replayed:
            return (f"{self.source}: already imported from peer {self.peer} on {self.previously} "
                    f"(signature {self.signature_id}); nothing to do")
        text = (f"{self.source}: {self.objects:,} objects from peer {self.peer} ({self.new_objects:,} new), "
                f"{self.indicators:,} indicators" + (f" ({', '.join(f'{k} {v:,}' for k, v in sorted(self.kinds.items()))})"
                                                     if self.kinds else ""))
        if self.ignored:
            text += f"; {self.ignored:,} indicators with patterns we do not match on were kept but not used"
        if self.other_key:
            text += (f"; {self.other_key:,} indicators were hashed under another community key and will never "
                     f"match (check community.key with the peer)")
        return text


def indicator_row(obj: dict[str, Any], peer: str, community_key_id: str, imported) -> tuple[dict | None, str]:
    """A row for ``intel_indicators`` ('ok'), or None with why ('ignored', 'other_key').

    Reads this version's form (distillguard's STIX extension) and the previous one (``x_`` properties,
    pattern type ``x-distillguard-minhash``), so peers on either version exchange indicators.
    """
    pattern_type, pattern = obj.get("pattern_type"), obj.get("pattern", "")
    _, key_id = indicator_extension(obj)
    template = template_pattern_value(pattern_type, pattern)
    if template is not None:
        try:
            TemplateSignature.from_pattern(template)
        except ValueError:
            return None, "ignored"
        kind, digest = "template", None
    elif pattern_type == "stix":
        parsed = parse_identifier_pattern(pattern)
        if parsed is None:
            return None, "ignored"
        kind, digest, template = parsed[0], parsed[1], None
    else:
        return None, "ignored"
    if key_id is not None and key_id != community_key_id:
        return None, "other_key"
    return {"peer": peer, "id": obj["id"], "modified": parse_ts(obj.get("modified") or obj.get("created")
                                                                 or obj["valid_from"]).replace(tzinfo=None),
            "kind": kind, "hash": digest, "template": template,
            "confidence": int(obj.get("confidence", DEFAULT_CONFIDENCE)), "tlp": tlp_name(obj.get("object_marking_refs")),
            "valid_from": parse_ts(obj["valid_from"]).replace(tzinfo=None),
            "valid_until": parse_ts(obj["valid_until"]).replace(tzinfo=None) if obj.get("valid_until") else None,
            "revoked": bool(obj.get("revoked", False)), "key_id": key_id, "imported": imported}, "ok"


def import_objects(objects: Iterable[dict[str, Any]], check: SignatureCheck, store: IntelStore, home: IntelHome, *,
                   source: str, bundle_id: Callable[[], str | None] = lambda: None,
                   progress: Callable[[int], None] | None = None) -> ImportResult:
    """Store verified objects and their indicators: all of them, or (on any error) none."""
    peer = check.peer.name
    result = ImportResult(peer=peer, source=source, signature_id=str(check.sig.get("id")))
    previous = store.previous_import(result.signature_id)
    if previous is not None:  # a replay: still verified, so a tampered copy is refused, not waved through
        for obj in objects:
            check.check(obj)
            result.objects += 1
        check.finish(lambda missing: store.held(peer_collection(peer), missing))
        result.replayed, result.previously = True, str(previous[1])[:19]
        return result
    key_id = home.community_key().key_id
    now = utcnow()
    with store.transaction():
        batch: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []

        def flush() -> None:
            result.new_objects += store.add_objects(peer_collection(peer), batch, source=source, added=now)
            if rows:
                store.add_indicators(pd.DataFrame(rows))
            batch.clear()
            rows.clear()
            if progress is not None:
                progress(result.objects)

        for obj in objects:
            check.check(obj)
            result.objects += 1
            batch.append(obj)
            if obj["type"] == "indicator":
                row, why = indicator_row(obj, peer, key_id, now)
                if row is None:
                    setattr(result, why, getattr(result, why) + 1)
                else:
                    rows.append(row)
                    result.indicators += 1
                    result.kinds[row["kind"]] = result.kinds.get(row["kind"], 0) + 1
            if len(batch) >= BATCH:
                flush()
        flush()
        check.finish(lambda missing: store.held(peer_collection(peer), missing))
        store.record_import(result.signature_id, peer, bundle_id(), result.objects, result.new_objects,
                            result.indicators, source)
    return result


def default_signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".sig")


def import_bundle(path: str | Path, home: IntelHome, store: IntelStore, *, signature: str | Path | None = None,
                  progress: Callable[[int], None] | None = None) -> ImportResult:
    path = Path(path)
    if not path.exists():
        raise BadInputError("no such bundle file", source=str(path))
    sig_path = Path(signature) if signature is not None else default_signature_path(path)
    sig = None
    if sig_path.exists():
        sig = load_json_file(sig_path, "signature file")
    elif signature is not None:
        raise BadInputError("no such signature file", source=str(sig_path))
    check = SignatureCheck(sig, home)
    header = BundleHeader()
    return import_objects(read_bundle(path, header), check, store, home, source=str(path),
                          bundle_id=lambda: header.fields.get("id"), progress=progress)
