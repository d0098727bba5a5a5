"""Detached Ed25519 signatures over a bundle's objects.

The signature is a small STIX object (``x-distillguard-signature``, a ``new-sdo`` of distillguard's
extension, so strict STIX tools accept it) kept beside the bundle
(``bundle.json.sig``) or beside the objects in a TAXII collection. It lists every signed object
by id, version and SHA-256 of its canonical JSON (keys sorted, no whitespace, UTF-8), so it
survives transport that re-serialises objects (TAXII envelopes, pretty-printing) but not a
changed value, an added or a dropped object. It expires: an old signed bundle cannot be
replayed into a peer after its signer has moved on.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import orjson

from distillguard.errors import DistillguardError
from distillguard.events.schema import MAX_JSON_DEPTH, nesting_exceeds
from distillguard.intel.extension import new_sdo_extension
from distillguard.intel.home import IntelHome
from distillguard.intel.keys import SigningKey, verify
from distillguard.intel.vocab import now_ts, parse_ts

SIGNATURE_TYPE = "x-distillguard-signature"


class VerificationError(DistillguardError):
    """A bundle that must not be imported: unsigned, tampered, expired or from an unknown peer."""


def object_digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def object_version(obj: dict[str, Any]) -> str:
    return str(obj.get("modified") or obj.get("created") or "")


def _message(sig: dict[str, Any]) -> bytes:
    body = {k: v for k, v in sig.items() if k != "signature"}
    return b"distillguard-intel-signature/1\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_objects(objects: Iterable[dict[str, Any]], key: SigningKey, home: IntelHome, *, bundle_id: str,
                 valid_days: int) -> dict[str, Any]:
    now = now_ts()
    digests = sorted([o["id"], object_version(o), object_digest(o)] for o in objects)
    sig = {"type": SIGNATURE_TYPE, "spec_version": "2.1", "id": f"{SIGNATURE_TYPE}--{uuid.uuid4()}",
           "created": now, "modified": now, "created_by_ref": home.identity_id, "signer": home.org,
           "key_id": key.key_id, "algorithm": "Ed25519", "bundle_id": bundle_id,
           "expires": now_ts(timedelta(days=valid_days)), "object_digests": digests,
           "extensions": new_sdo_extension()}
    sig["signature"] = key.sign(_message(sig))
    return sig


@dataclass(frozen=True)
class Verified:
    peer: str
    trust: float
    signature_id: str
    expires: str


class SignatureCheck:
    """Checks a signature, then each object as it streams past, then that none is missing.

    Raises :class:`VerificationError` with the reason at the first failure.
    """

    def __init__(self, sig: dict[str, Any] | None, home: IntelHome, *, now: datetime | None = None) -> None:
        from distillguard.intel.keys import parse_public_key

        if sig is None:
            raise VerificationError("unsigned bundle: no detached signature (peers' bundles must be signed; "
                                    "give --signature or put BUNDLE.sig beside it)")
        if not isinstance(sig, dict) or sig.get("type") != SIGNATURE_TYPE or not isinstance(
                sig.get("object_digests"), list):
            raise VerificationError(f"not a distillguard signature (expected a {SIGNATURE_TYPE} object)")
        if nesting_exceeds(sig):          # its signed message could not even be serialised
            raise VerificationError(f"not a distillguard signature (nested deeper than {MAX_JSON_DEPTH} levels)")
        key_id = sig.get("key_id")
        peer = home.peer_by_key_id(str(key_id))
        if peer is None:
            raise VerificationError(f"unknown peer: signed by key {key_id} ({sig.get('signer', '?')!s}), which no "
                                    f"registered peer holds (register it with 'distillguard intel add-peer')")
        try:
            message = _message(sig)
        except orjson.JSONEncodeError as exc:
            raise VerificationError(f"not a distillguard signature ({exc})") from None
        if not verify(parse_public_key(peer.public_key), message, str(sig.get("signature", ""))):
            raise VerificationError(f"tampered signature: it does not verify under peer {peer.name}'s key {key_id}")
        expires = parse_ts(sig.get("expires"))
        now = now or datetime.now(timezone.utc)
        if expires is None or expires <= now:
            raise VerificationError(f"expired bundle: peer {peer.name}'s signature expired on {sig.get('expires')}")
        self.peer = peer
        self.sig = sig
        self.signed = {(d[0], d[1]): d[2] for d in sig["object_digests"] if isinstance(d, list) and len(d) == 3}
        self.seen: set[tuple[str, str]] = set()

    def covers(self, obj: dict[str, Any]) -> bool:
        return (obj.get("id"), object_version(obj)) in self.signed

    def check(self, obj: dict[str, Any]) -> None:
        ref = (obj.get("id"), object_version(obj))
        want = self.signed.get(ref)
        if want is None:
            raise VerificationError(f"tampered bundle: object {ref[0]} (version {ref[1]}) is not covered by "
                                    f"peer {self.peer.name}'s signature")
        try:
            digest = object_digest(obj)
        except orjson.JSONEncodeError as exc:   # e.g. an integer past 64 bits: it cannot be what was signed
            raise VerificationError(f"tampered bundle: object {ref[0]} cannot be digested ({exc})") from None
        if want != digest:
            raise VerificationError(f"tampered bundle: object {ref[0]} changed after peer {self.peer.name} signed it")
        self.seen.add(ref)

    def finish(self, held: Callable[[dict[tuple[str, str], str]], int] | None = None) -> Verified:
        """All signed objects seen? ``held`` counts missing ones we already hold unchanged (a TAXII
        pull only brings versions added since the last one)."""
        missing = {ref: d for ref, d in self.signed.items() if ref not in self.seen}
        count = len(missing) - (held(missing) if missing and held is not None else 0)
        if count:
            raise VerificationError(f"tampered bundle: {count} signed object(s) missing from the bundle")
        return Verified(peer=self.peer.name, trust=self.peer.trust, signature_id=str(self.sig.get("id")),
                        expires=str(self.sig["expires"]))


def verify_objects(objects: list[dict[str, Any]], sig: dict[str, Any] | None, home: IntelHome, *,
                   now: datetime | None = None) -> Verified:
    """Check a signature against its objects; raises :class:`VerificationError` with the reason."""
    check = SignatureCheck(sig, home, now=now)
    for obj in objects:
        check.check(obj)
    return check.finish()
