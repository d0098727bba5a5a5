"""`intel sync`: pull peers' TAXII collections, verify, import.

Every object added since the last pull is fetched (all versions, paged); objects are then
imported signature by signature: each ``x-distillguard-signature`` in the collection covers a
set of objects, verified exactly like a bundle file. Objects no valid signature covers are not
imported. The position (``X-TAXII-Date-Added-Last``) only moves when every signature verified,
so a failed pull is retried in full next time (already imported signatures are no-ops).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from distillguard.errors import BadInputError, DistillguardError
from distillguard.intel.home import IntelHome, Peer
from distillguard.intel.importer import ImportResult, import_objects
from distillguard.intel.signing import SIGNATURE_TYPE, SignatureCheck, VerificationError, object_version
from distillguard.intel.store import IntelStore, taxii_ts
from distillguard.intel.taxii import TAXII, last_added

PAGE = 1000
MAX_PAGES = 100_000


@dataclass
class SyncResult:
    peer: str
    collection: str = ""
    fetched: int = 0
    imports: list[ImportResult] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)   # one reason per signature refused
    unsigned: int = 0                                     # objects no valid signature covers
    position: str | None = None

    @property
    def ok(self) -> bool:
        return not self.rejected

    def summary(self) -> str:
        new = sum(r.new_objects for r in self.imports if not r.replayed)
        indicators = sum(r.indicators for r in self.imports if not r.replayed)
        text = (f"peer {self.peer} ({self.collection}): {self.fetched:,} objects fetched, {len(self.imports)} signed "
                f"set(s), {new:,} new objects, {indicators:,} indicators")
        if self.unsigned:
            text += f"; {self.unsigned:,} unsigned objects not imported"
        for reason in self.rejected:
            text += f"; rejected: {reason}"
        return text


def _auth_headers(peer: Peer) -> dict[str, str]:
    """HTTP Basic when we know the user name the peer gave us, else a bearer token."""
    headers = {"Accept": TAXII}
    if peer.secret and peer.username:
        token = base64.b64encode(f"{peer.username}:{peer.secret}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    elif peer.secret:
        headers["Authorization"] = f"Bearer {peer.secret}"
    return headers


def _get(client: httpx.Client, url: str, params: dict[str, Any] | None = None) -> httpx.Response:
    try:
        response = client.get(url, params=params)
    except httpx.HTTPError as exc:
        raise DistillguardError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        detail = ""
        try:
            detail = response.json().get("description", "")
        except ValueError:
            pass
        raise DistillguardError(f"{url}: HTTP {response.status_code} {detail}".rstrip())
    return response


def fetch(peer: Peer, added_after: str | None, *, client: httpx.Client | None = None,
          progress: Callable[[int], None] | None = None) -> tuple[str, list[dict[str, Any]], str | None]:
    """(collection id, objects added after the position, new position) from a peer's server."""
    if not peer.url or not peer.collection:
        raise BadInputError(f"peer {peer.name} has no TAXII url/collection to pull from (intel add-peer --url "
                            f"--collection)")
    base = peer.url.rstrip("/") + "/"
    own = client is None
    client = client or httpx.Client(headers=_auth_headers(peer), timeout=60.0)
    try:
        listing = _get(client, base + "collections/").json().get("collections", [])
        match = [c for c in listing if peer.collection in (c.get("id"), c.get("title"))]
        if not match:
            raise DistillguardError(f"peer {peer.name}: no readable collection {peer.collection!r} at {base}")
        cid = match[0]["id"]
        params: dict[str, Any] = {"match[version]": "all", "limit": PAGE}
        if added_after:
            params["added_after"] = added_after
        objects: list[dict[str, Any]] = []
        position = None
        for _ in range(MAX_PAGES):
            response = _get(client, f"{base}collections/{cid}/objects/", params)
            envelope = response.json()
            objects += envelope.get("objects", [])
            last = last_added({k.lower(): v for k, v in response.headers.items()})
            if last is not None:
                position = taxii_ts(last) if position is None else max(position, taxii_ts(last))
            if progress is not None:
                progress(len(objects))
            if not envelope.get("more") or not envelope.get("next"):
                break
            params["next"] = envelope["next"]
        return cid, objects, position
    finally:
        if own:
            client.close()


def sync_peer(home: IntelHome, peer: Peer, store: IntelStore, *, client: httpx.Client | None = None,
              progress: Callable[[int], None] | None = None) -> SyncResult:
    result = SyncResult(peer=peer.name, collection=str(peer.collection))
    position = store.sync_position(peer.name, str(peer.collection))
    cid, objects, new_position = fetch(peer, position, client=client, progress=progress)
    result.fetched = len(objects)
    signatures = sorted((o for o in objects if o.get("type") == SIGNATURE_TYPE), key=lambda o: str(o.get("created")))
    by_ref = {(o.get("id"), object_version(o)): o for o in objects if o.get("type") != SIGNATURE_TYPE}
    covered: set[tuple[str, str]] = set()
    for sig in signatures:
        try:
            check = SignatureCheck(sig, home)
            mine = [obj for ref, obj in by_ref.items() if ref in check.signed]
            result.imports.append(import_objects(mine, check, store, home, source=f"taxii:{peer.name}"))
            covered.update(ref for ref in by_ref if ref in check.signed)
        except (VerificationError, BadInputError) as exc:
            result.rejected.append(f"{sig.get('id')}: {exc}")
    result.unsigned = len(set(by_ref) - covered)
    if result.ok and new_position:
        store.set_sync_position(peer.name, str(peer.collection), new_position)
        result.position = new_position
    return result
