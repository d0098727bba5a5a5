"""The intel tables in a DuckDB file: published and received objects, imported indicators,
import history (replays are no-ops), TAXII status resources and sync positions.

Objects are kept as the JSON text they arrived in, per collection and version, with the time
they were added (TAXII's ``date_added``) and a sequence number that pages them.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import orjson
import pandas as pd

from distillguard.errors import BadInputError

_DDL = (
    "CREATE SEQUENCE IF NOT EXISTS intel_seq",
    """CREATE TABLE IF NOT EXISTS intel_objects (
        seq BIGINT NOT NULL DEFAULT nextval('intel_seq'), collection VARCHAR NOT NULL, id VARCHAR NOT NULL,
        type VARCHAR NOT NULL, version VARCHAR NOT NULL, added TIMESTAMP NOT NULL, source VARCHAR,
        json VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS intel_indicators (
        peer VARCHAR NOT NULL, id VARCHAR NOT NULL, modified TIMESTAMP NOT NULL, kind VARCHAR NOT NULL,
        hash VARCHAR, template VARCHAR, confidence INTEGER, tlp VARCHAR, valid_from TIMESTAMP,
        valid_until TIMESTAMP, revoked BOOLEAN NOT NULL, key_id VARCHAR, imported TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS intel_imports (
        signature_id VARCHAR PRIMARY KEY, peer VARCHAR, bundle_id VARCHAR, objects BIGINT, new_objects BIGINT,
        indicators BIGINT, source VARCHAR, imported TIMESTAMP)""",
    "CREATE TABLE IF NOT EXISTS intel_status (id VARCHAR PRIMARY KEY, collection VARCHAR, json VARCHAR)",
    """CREATE TABLE IF NOT EXISTS intel_sync (
        peer VARCHAR, collection VARCHAR, added_after VARCHAR, synced TIMESTAMP, PRIMARY KEY (peer, collection))""",
)
OBJECT_COLUMNS = ("collection", "id", "type", "version", "added", "source", "json")
INDICATOR_COLUMNS = ("peer", "id", "modified", "kind", "hash", "template", "confidence", "tlp", "valid_from",
                     "valid_until", "revoked", "key_id", "imported")


def utcnow() -> datetime:
    """Naive UTC (DuckDB TIMESTAMP), microseconds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def taxii_ts(ts: datetime) -> str:
    """TAXII timestamps carry microseconds, so paging by date_added never skips an object."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IntelStore:
    """Intel tables in one DuckDB file. Opening waits a little for another process's lock."""

    def __init__(self, path: str | Path, *, read_only: bool = False, wait_s: float = 10.0) -> None:
        self.path = str(path)
        if read_only and not Path(self.path).exists():
            raise BadInputError("no intel store yet (nothing exported or imported)", source=self.path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.con = duckdb.connect(self.path, read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise BadInputError(f"cannot open the intel store ({str(exc).splitlines()[0]})",
                                        source=self.path) from None
                time.sleep(0.05)
            except duckdb.Error as exc:
                raise BadInputError(f"cannot open the intel store ({exc})", source=self.path) from None
        self.con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            for statement in _DDL:
                self.con.execute(statement)

    @classmethod
    def over(cls, con) -> "IntelStore":
        """The store's methods over a connection (or cursor) opened elsewhere; tables exist."""
        store = cls.__new__(cls)
        store.path = ""
        store.con = con
        return store

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "IntelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def one(self, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
        return self.con.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: an exception inside rolls every statement back."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- objects ---------------------------------------------------------------------------------
    def add_objects(self, collection: str, objects: Sequence[dict[str, Any]], *, source: str | None = None,
                    added: datetime | None = None) -> int:
        """Store object versions in a collection; a version already there is skipped. Returns new ones."""
        if not objects:
            return 0
        added = added or utcnow()
        frame = pd.DataFrame({
            "collection": collection, "id": [o["id"] for o in objects], "type": [o["type"] for o in objects],
            "version": [str(o.get("modified") or o.get("created") or "") for o in objects], "added": added,
            "source": source, "json": [orjson.dumps(o).decode("utf-8") for o in objects]})
        frame = frame.drop_duplicates(["id", "version"])
        self.con.register("_incoming_objects", frame)
        try:
            row = self.one(f"""INSERT INTO intel_objects ({', '.join(OBJECT_COLUMNS)})
                SELECT {', '.join('i.' + c for c in OBJECT_COLUMNS)} FROM _incoming_objects i
                WHERE NOT EXISTS (SELECT 1 FROM intel_objects o WHERE o.collection = i.collection AND o.id = i.id
                                  AND o.version = i.version)""")
        finally:
            self.con.unregister("_incoming_objects")
        return int(row[0]) if row else 0

    def created_of(self, collection: str) -> dict[str, str]:
        """id -> created of every object in a collection (re-exports keep ``created``)."""
        rows = self.all("SELECT id, arg_min(json, seq) FROM intel_objects WHERE collection = ? GROUP BY id",
                        [collection])
        out = {}
        for oid, text in rows:
            created = orjson.loads(text).get("created")
            if created:
                out[oid] = created
        return out

    def latest(self, collection: str, oid: str) -> dict[str, Any] | None:
        row = self.one("SELECT json FROM intel_objects WHERE collection = ? AND id = ? ORDER BY version DESC, seq DESC "
                       "LIMIT 1", [collection, oid])
        return orjson.loads(row[0]) if row else None

    def held(self, collection: str, wanted: dict[tuple[str, str], str]) -> int:
        """How many of the (id, version) -> digest pairs this collection holds with that digest."""
        from distillguard.intel.signing import object_digest

        if not wanted:
            return 0
        frame = pd.DataFrame({"id": [r[0] for r in wanted], "version": [r[1] for r in wanted]})
        self.con.register("_wanted", frame)
        try:
            rows = self.all("SELECT o.id, o.version, o.json FROM intel_objects o JOIN _wanted w USING (id, version) "
                            "WHERE o.collection = ?", [collection])
        finally:
            self.con.unregister("_wanted")
        return len({(i, v) for i, v, text in rows if wanted.get((i, v)) == object_digest(orjson.loads(text))})

    def count(self, collection: str | None = None) -> int:
        if collection is None:
            return int(self.one("SELECT count(*) FROM intel_objects")[0])
        return int(self.one("SELECT count(*) FROM intel_objects WHERE collection = ?", [collection])[0])

    # -- indicators and imports ------------------------------------------------------------------
    def add_indicators(self, frame: pd.DataFrame) -> int:
        if frame.empty:
            return 0
        self.con.register("_incoming_indicators", frame)
        try:
            row = self.one(f"""INSERT INTO intel_indicators ({', '.join(INDICATOR_COLUMNS)})
                SELECT {', '.join('i.' + c for c in INDICATOR_COLUMNS)} FROM _incoming_indicators i
                WHERE NOT EXISTS (SELECT 1 FROM intel_indicators x WHERE x.peer = i.peer AND x.id = i.id
                                  AND x.modified = i.modified)""")
        finally:
            self.con.unregister("_incoming_indicators")
        return int(row[0]) if row else 0

    def previous_import(self, signature_id: str) -> tuple | None:
        return self.one("SELECT peer, imported, objects FROM intel_imports WHERE signature_id = ?", [signature_id])

    def record_import(self, signature_id: str, peer: str, bundle_id: str | None, objects: int, new_objects: int,
                      indicators: int, source: str) -> None:
        self.con.execute("INSERT INTO intel_imports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [signature_id, peer, bundle_id, objects, new_objects, indicators, source, utcnow()])

    def active_indicators(self, peers: Sequence[str], now: datetime | None = None) -> pd.DataFrame:
        """The latest version of every indicator from these peers, unless revoked or expired."""
        now = now or utcnow()
        if not peers:
            return pd.DataFrame(columns=list(INDICATOR_COLUMNS))
        self.con.register("_peers", pd.DataFrame({"peer": list(peers)}))
        try:
            return self.con.execute("""
                SELECT * EXCLUDE (rn) FROM (
                    SELECT *, row_number() OVER (PARTITION BY peer, id ORDER BY modified DESC, imported DESC) AS rn
                    FROM intel_indicators WHERE peer IN (SELECT peer FROM _peers))
                WHERE rn = 1 AND NOT revoked AND (valid_until IS NULL OR valid_until > ?)
                  AND (valid_from IS NULL OR valid_from <= ?)""", [now, now]).df()
        finally:
            self.con.unregister("_peers")

    def campaign_names(self, peer: str, indicator_ids: Sequence[str]) -> dict[str, str]:
        """indicator id -> name of the campaign it indicates (from the peer's relationships)."""
        return {iid: name for iid, (_, name) in self.campaigns(peer, indicator_ids).items()}

    def campaigns(self, peer: str, indicator_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """indicator id -> (id, name) of the campaign it indicates (from the peer's relationships)."""
        if not indicator_ids:
            return {}
        self.con.register("_ind", pd.DataFrame({"id": list(indicator_ids)}))
        try:
            rows = self.all("""
                WITH rel AS (SELECT json_extract_string(json, '$.source_ref') AS src,
                                    json_extract_string(json, '$.target_ref') AS dst
                             FROM intel_objects WHERE collection = ? AND type = 'relationship'
                               AND json_extract_string(json, '$.relationship_type') = 'indicates'),
                     camp AS (SELECT id, arg_max(json_extract_string(json, '$.name'), version) AS name
                              FROM intel_objects WHERE collection = ? AND type = 'campaign' GROUP BY id)
                SELECT DISTINCT rel.src, camp.id, camp.name FROM rel JOIN camp ON camp.id = rel.dst
                WHERE rel.src IN (SELECT id FROM _ind) ORDER BY rel.src, camp.id""",
                            [peer_collection(peer), peer_collection(peer)])
        finally:
            self.con.unregister("_ind")
        return {src: (cid, name) for src, cid, name in rows}

    # -- TAXII -----------------------------------------------------------------------------------
    def page(self, collection: str, *, added_after: datetime | None = None, after_seq: int | None = None,
             limit: int = 1000, ids: Sequence[str] = (), types: Sequence[str] = (), version: str = "last",
             ) -> tuple[list[tuple[int, datetime, str, str, str]], bool]:
        """(seq, added, id, version, json) rows in date_added order, and whether more follow."""
        where = ["collection = ?"]
        params: list[Any] = [collection]
        if added_after is not None:
            where.append("added > ?")
            params.append(added_after)
        if after_seq is not None:
            where.append("seq > ?")
            params.append(after_seq)
        if ids:
            where.append(f"id IN ({', '.join('?' for _ in ids)})")
            params += list(ids)
        if types:
            where.append(f"type IN ({', '.join('?' for _ in types)})")
            params += list(types)
        base = f"SELECT seq, added, id, version, json FROM intel_objects WHERE {' AND '.join(where)}"
        if version in ("last", "first"):
            order = "DESC" if version == "last" else "ASC"
            base = (f"SELECT seq, added, id, version, json FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY "
                    f"version {order}) AS rn FROM ({base})) WHERE rn = 1")
        elif version != "all":
            base += " AND version = ?"
            params.append(version)
        rows = self.all(f"{base} ORDER BY seq LIMIT {int(limit) + 1}", params)
        return rows[:limit], len(rows) > limit

    def put_status(self, status_id: str, collection: str, status: dict[str, Any]) -> None:
        self.con.execute("INSERT OR REPLACE INTO intel_status VALUES (?, ?, ?)",
                         [status_id, collection, orjson.dumps(status).decode()])

    def get_status(self, status_id: str) -> tuple[str, dict[str, Any]] | None:
        row = self.one("SELECT collection, json FROM intel_status WHERE id = ?", [status_id])
        return (row[0], orjson.loads(row[1])) if row else None

    # -- sync positions --------------------------------------------------------------------------
    def sync_position(self, peer: str, collection: str) -> str | None:
        row = self.one("SELECT added_after FROM intel_sync WHERE peer = ? AND collection = ?", [peer, collection])
        return row[0] if row else None

    def set_sync_position(self, peer: str, collection: str, added_after: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO intel_sync VALUES (?, ?, ?, ?)", [peer, collection, added_after,
                                                                                 utcnow()])


def peer_collection(peer: str) -> str:
    """Where objects received from a peer are kept (not served to anyone)."""
    return f"peer:{peer}"
