"""`intel serve`: a TAXII 2.1 server over the intel store (Starlette).

Endpoints (one API root, ``/api1/``): discovery ``/taxii2/``, API root, collections, one
collection, objects (GET with ``added_after``, ``limit``/``next`` paging and ``match[id|type|
version|spec_version]``; POST an envelope → a status resource), one object, manifest, status.

Peers authenticate with HTTP Basic (user = peer name, password = their secret) or a bearer
token (the secret); each peer has read and write rights per collection (``intel.json``).
Collections a peer can neither read nor write do not exist for it (404).

The store is opened while requests are in flight and closed when none is (each request works in
a worker thread on its own cursor), so ``intel export``/``import``/``sync`` in other processes can
write while the server is idle: DuckDB allows one writing process at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import uuid
from pathlib import Path
from datetime import datetime
from typing import Any, Callable, Iterator

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distillguard import __version__
from distillguard.errors import BadInputError
from distillguard.intel.bundle import check_object
from distillguard.intel.home import IntelHome, Peer
from distillguard.intel.store import IntelStore, taxii_ts, utcnow
from distillguard.intel.vocab import parse_ts

TAXII = "application/taxii+json;version=2.1"
STIX = "application/stix+json;version=2.1"
API_ROOT = "api1"
MAX_PAGE = 1000
MAX_CONTENT = 64 << 20


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=TAXII, headers=headers)


def taxii_error(status: int, title: str, description: str = "", headers: dict[str, str] | None = None) -> Response:
    return _json({"title": title, "description": description, "http_status": str(status)}, status, headers)


class StoreUnavailable(Exception):
    """The store could not be opened (another process holds it too long): HTTP 503."""


class SharedStore:
    """One connection for all requests in flight (DuckDB refuses a second open of the same file
    in one process); each request gets its own cursor; the file is closed when nothing is in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._store: IntelStore | None = None
        self._users = 0

    @contextlib.contextmanager
    def use(self) -> Iterator[IntelStore]:
        with self._lock:
            if self._store is None:
                try:
                    self._store = IntelStore(self.path)
                except BadInputError as exc:
                    raise StoreUnavailable(str(exc)) from None
            self._users += 1
            cursor = self._store.con.cursor()
        try:
            yield IntelStore.over(cursor)
        finally:
            cursor.close()
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._store.close()
                    self._store = None


class TaxiiServer:
    """The TAXII application for one intel home."""

    def __init__(self, home: IntelHome, *, max_page: int = MAX_PAGE) -> None:
        self.home = home
        self.max_page = max_page
        self.shared = SharedStore(home.db_path)

    # -- plumbing --------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Peer | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            for peer in self.home.peers.values():
                if peer.accepts(value.strip()):
                    return peer
        elif scheme.lower() == "basic" and value:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            peer = self.home.peers.get(user)
            if peer is not None and peer.accepts(password):
                return peer
        return None

    def _collection(self, peer: Peer, ident: str) -> tuple[str, dict[str, str]] | None:
        name = self.home.collection_name(ident)
        if name is None or (name not in peer.read and name not in peer.write):
            return None
        return name, self.home.collections[name]

    def _describe(self, peer: Peer, name: str) -> dict[str, Any]:
        c = self.home.collections[name]
        return {"id": c["id"], "title": c["title"], "description": c.get("description", ""),
                "can_read": name in peer.read, "can_write": name in peer.write, "media_types": [STIX]}

    async def _store(self, fn: Callable[[IntelStore], Any]) -> Any:
        def work() -> Any:
            with self.shared.use() as store:
                return fn(store)
        return await run_in_threadpool(work)

    def app(self) -> Starlette:
        def guarded(handler):
            async def endpoint(request: Request) -> Response:
                accept = request.headers.get("accept", "*/*")
                if not any(t in accept for t in ("application/taxii+json", "*/*", "application/*", "application/json")):
                    return taxii_error(406, "Not Acceptable", f"this server speaks {TAXII}")
                peer = self.authenticate(request)
                if peer is None:
                    return taxii_error(401, "Unauthorized", "give HTTP Basic (peer name, secret) or a bearer token",
                                       {"WWW-Authenticate": 'Basic realm="distillguard TAXII"'})
                try:
                    return await handler(request, peer)
                except BadInputError as exc:
                    return taxii_error(400, "Bad Request", str(exc))
                except StoreUnavailable as exc:
                    return taxii_error(503, "Service Unavailable", str(exc), {"Retry-After": "1"})
            return endpoint

        root = f"/{API_ROOT}"
        routes = [
            Route("/taxii2/", guarded(self.discovery)),
            Route(f"{root}/", guarded(self.api_root)),
            Route(f"{root}/status/{{status_id}}/", guarded(self.status)),
            Route(f"{root}/collections/", guarded(self.collections)),
            Route(f"{root}/collections/{{cid}}/", guarded(self.collection)),
            Route(f"{root}/collections/{{cid}}/objects/", guarded(self.objects), methods=["GET", "POST"]),
            Route(f"{root}/collections/{{cid}}/objects/{{oid}}/", guarded(self.object)),
            Route(f"{root}/collections/{{cid}}/objects/{{oid}}/versions/", guarded(self.versions)),
            Route(f"{root}/collections/{{cid}}/manifest/", guarded(self.manifest)),
        ]
        return Starlette(routes=routes)

    # -- discovery and metadata ------------------------------------------------------------------
    async def discovery(self, request: Request, peer: Peer) -> Response:
        base = str(request.base_url).rstrip("/")
        return _json({"title": f"{self.home.org} distillation intel", "description":
                      "Signed STIX 2.1 about model-extraction campaigns (distillguard)", "contact": self.home.org,
                      "default": f"{base}/{API_ROOT}/", "api_roots": [f"{base}/{API_ROOT}/"]})

    async def api_root(self, request: Request, peer: Peer) -> Response:
        return _json({"title": f"{self.home.org} intel", "description": f"distillguard {__version__}",
                      "versions": [TAXII], "max_content_length": MAX_CONTENT})

    async def collections(self, request: Request, peer: Peer) -> Response:
        names = [n for n in self.home.collections if n in peer.read or n in peer.write]
        return _json({"collections": [self._describe(peer, n) for n in names]} if names else {})

    async def collection(self, request: Request, peer: Peer) -> Response:
        found = self._collection(peer, request.path_params["cid"])
        if found is None:
            return taxii_error(404, "Not Found", "no such collection")
        return _json(self._describe(peer, found[0]))

    # -- objects -----------------------------------------------------------------------------------
    def _filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        added_after = None
        if "added_after" in q:
            added_after = parse_ts(q["added_after"])
            if added_after is None:
                raise BadInputError(f"added_after {q['added_after'][:40]!r} is not a timestamp like "
                                    f"2026-10-05T12:00:00.000Z")
            added_after = added_after.replace(tzinfo=None)
        limit = self.max_page
        if "limit" in q:
            try:
                limit = int(q["limit"])
            except ValueError:
                raise BadInputError("limit must be a positive integer") from None
            if limit <= 0:
                raise BadInputError("limit must be a positive integer")
            limit = min(limit, self.max_page)
        after_seq = None
        if q.get("next"):
            try:
                after_seq = int(q["next"])
            except ValueError:
                raise BadInputError("next is not a cursor this server gave") from None
        split = lambda name: [v for v in q.get(name, "").split(",") if v]  # noqa: E731
        spec = split("match[spec_version]")
        if spec and "2.1" not in spec:
            return {"empty": True}
        versions = split("match[version]") or ["last"]
        return {"added_after": added_after, "limit": limit, "after_seq": after_seq, "ids": split("match[id]"),
                "types": split("match[type]"), "version": versions[0] if len(versions) == 1 else "all"}

    async def _page(self, request: Request, peer: Peer, oid: str | None = None, version: str | None = None):
        found = self._collection(peer, request.path_params["cid"])
        if found is None:
            return None, taxii_error(404, "Not Found", "no such collection")
        name = found[0]
        if name not in peer.read:
            return None, taxii_error(403, "Forbidden", f"peer {peer.name} may not read collection {name!r}")
        filters = self._filters(request)
        if filters.pop("empty", False):
            return ([], False), None
        if oid is not None:
            filters["ids"] = [oid]
        if version is not None:
            filters["version"] = version
        rows, more = await self._store(lambda store: store.page(name, **filters))
        return (rows, more), None

    @staticmethod
    def _headers(rows: list[tuple]) -> dict[str, str]:
        if not rows:
            return {}
        added = [r[1] for r in rows]
        return {"X-TAXII-Date-Added-First": taxii_ts(min(added)), "X-TAXII-Date-Added-Last": taxii_ts(max(added))}

    @staticmethod
    def _envelope(rows: list[tuple], more: bool) -> bytes:
        # The stored JSON text goes out as it is: no decode and re-encode per object.
        body = b'{"more":' + (b"true" if more else b"false")
        if more:
            body += b',"next":"' + str(rows[-1][0]).encode() + b'"'
        if rows:
            body += b',"objects":[' + ",".join(r[4] for r in rows).encode("utf-8") + b"]"
        return body + b"}"

    async def objects(self, request: Request, peer: Peer) -> Response:
        if request.method == "POST":
            return await self.add_objects(request, peer)
        page, error = await self._page(request, peer)
        if error is not None:
            return error
        rows, more = page
        return Response(self._envelope(rows, more), media_type=TAXII, headers=self._headers(rows))

    async def object(self, request: Request, peer: Peer) -> Response:
        page, error = await self._page(request, peer, oid=request.path_params["oid"])
        if error is not None:
            return error
        rows, more = page
        if not rows:
            return taxii_error(404, "Not Found", "no such object in this collection")
        return Response(self._envelope(rows, more), media_type=TAXII, headers=self._headers(rows))

    async def versions(self, request: Request, peer: Peer) -> Response:
        page, error = await self._page(request, peer, oid=request.path_params["oid"], version="all")
        if error is not None:
            return error
        rows, more = page
        if not rows:
            return taxii_error(404, "Not Found", "no such object in this collection")
        body = {"more": more, "versions": [r[3] for r in rows]}
        if more:
            body["next"] = str(rows[-1][0])
        return _json(body, headers=self._headers(rows))

    async def manifest(self, request: Request, peer: Peer) -> Response:
        page, error = await self._page(request, peer)
        if error is not None:
            return error
        rows, more = page
        body: dict[str, Any] = {"more": more}
        if more:
            body["next"] = str(rows[-1][0])
        if rows:
            body["objects"] = [{"id": r[2], "date_added": taxii_ts(r[1]), "version": r[3], "media_type": STIX}
                               for r in rows]
        return _json(body, headers=self._headers(rows))

    async def add_objects(self, request: Request, peer: Peer) -> Response:
        found = self._collection(peer, request.path_params["cid"])
        if found is None:
            return taxii_error(404, "Not Found", "no such collection")
        name = found[0]
        if name not in peer.write:
            return taxii_error(403, "Forbidden", f"peer {peer.name} may not write to collection {name!r}")
        ctype = request.headers.get("content-type", "")
        if not any(t in ctype for t in ("application/taxii+json", "application/json")):
            return taxii_error(415, "Unsupported Media Type", f"send {TAXII}")
        if int(request.headers.get("content-length") or 0) > MAX_CONTENT:
            return taxii_error(413, "Payload Too Large", f"at most {MAX_CONTENT:,} bytes")
        body = await request.body()
        if len(body) > MAX_CONTENT:
            return taxii_error(413, "Payload Too Large", f"at most {MAX_CONTENT:,} bytes")
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return taxii_error(400, "Bad Request", f"body is not JSON ({exc})")
        if not isinstance(envelope, dict) or not isinstance(envelope.get("objects"), list):
            return taxii_error(400, "Bad Request", "expected an envelope: {\"objects\": [...]}")
        good, failures = [], []
        for i, obj in enumerate(envelope["objects"], 1):
            try:
                check_object(obj, i, "envelope")
                good.append(obj)
            except BadInputError as exc:
                oid = obj.get("id") if isinstance(obj, dict) else None
                failures.append({"id": str(oid), "message": exc.message})
        requested = utcnow()
        status_id = str(uuid.uuid4())
        status = {"id": status_id, "status": "complete", "request_timestamp": taxii_ts(requested),
                  "total_count": len(envelope["objects"]), "success_count": len(good),
                  "failure_count": len(failures), "pending_count": 0,
                  "successes": [{"id": o["id"], "version": str(o.get("modified") or o.get("created") or "")}
                                for o in good],
                  "failures": failures}

        def work(store: IntelStore) -> None:
            with store.transaction():
                store.add_objects(name, good, source=f"taxii:{peer.name}", added=requested)
                store.put_status(status_id, name, status)
        await self._store(work)
        return _json(status, 202)

    async def status(self, request: Request, peer: Peer) -> Response:
        found = await self._store(lambda store: store.get_status(request.path_params["status_id"]))
        if found is None or found[0] not in peer.write:
            return taxii_error(404, "Not Found", "no such status")
        return _json(found[1])


def last_added(headers: dict[str, str]) -> datetime | None:
    value = headers.get("x-taxii-date-added-last")
    ts = parse_ts(value) if value else None
    return ts.replace(tzinfo=None) if ts else None
