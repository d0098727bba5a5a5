"""What the dashboard reads: a snapshot of the event store (the scan plus pre-aggregated tables in
an in-memory DuckDB) and the analysts' own action log in a separate DuckDB file.

The event store is opened read-only, only while a snapshot is taken (at start and on refresh),
so the dashboard never holds the store's lock while the gateway or an ingest needs it, and a
page never scans the raw events: every page query runs on the small aggregate tables.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from distillguard.detect import text as tx
from distillguard.detect.baseline import load_default
from distillguard.detect.engine import identities, local_features
from distillguard.detect.hydra import link_graph
from distillguard.detect.scan import ScanOptions, ScanResult, score_features
from distillguard.errors import BadInputError
from distillguard.store import EventStore

ACTIONS = ("allowlist", "throttle", "block", "false_positive", "clear")
APPEAL_DECISIONS = ("uphold", "lift")      # audit rows of target_kind 'appeal'
TARGET_KINDS = ("account", "cluster", "appeal")
# Accounts whose latest action is one of these are scanned as authorised on the next refresh.
FEEDBACK_ACTIONS = ("allowlist", "false_positive")
SAMPLES_PER_ACCOUNT = 8

_AGGREGATES = {
    "hourly": "SELECT account, date_trunc('hour', ts) AS hour, count(*) AS requests, "
              "coalesce(sum(completion_tokens), 0)::BIGINT AS tokens FROM events GROUP BY ALL ORDER BY account, hour",
    # Gaps between consecutive requests of one account, binned by half-decades of seconds
    # (bin b covers [10^(b/2), 10^((b+1)/2)) s; bin -1 holds gaps under a second).
    "cadence": "WITH g AS (SELECT account, epoch(ts) - epoch(lag(ts) OVER (PARTITION BY account ORDER BY ts)) AS gap "
               "FROM events) SELECT account, CASE WHEN gap < 1 THEN -1 ELSE least(floor(log10(gap) * 2), 11)::INTEGER "
               "END AS bin, count(*) AS n FROM g WHERE gap IS NOT NULL GROUP BY ALL ORDER BY account, bin",
    "samples": f"SELECT account, ts, left(prompt_text, 400) AS prompt FROM (SELECT account, ts, prompt_text, "
               f"row_number() OVER (PARTITION BY account ORDER BY ts) AS rn FROM events) WHERE rn <= "
               f"{SAMPLES_PER_ACCOUNT} ORDER BY account, ts",
    # The gateway's policy decision kept with each event it logged (unknown fields land in `extra`).
    "decisions": "SELECT account, json_extract_string(extra, '$.decision.action') AS action, "
                 "coalesce(json_extract_string(extra, '$.decision.enforced'), 'true') = 'true' AS enforced, "
                 "count(*) AS n, max(ts) AS last FROM events WHERE extra IS NOT NULL AND "
                 "json_extract_string(extra, '$.decision.action') IS NOT NULL GROUP BY ALL ORDER BY account, n DESC",
}
# Coverage growth: capability areas (of the taxonomy's 17) among an account's first n queries, at
# these n; read for the first COVERAGE_QUERIES queries of every account (areas saturate well before).
COVERAGE_QUERIES = 200
COVERAGE_GRID = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200)
BAND_MIN_ACCOUNTS = 10     # organic accounts needed at a grid point to draw the band there
CADENCE_LABELS = ["<1s", "1s", "3s", "10s", "30s", "1m40", "5m", "17m", "50m", "2.8h", "8h", "28h", "≥3.7d"]


@dataclass
class Snapshot:
    """The scan of the store and its aggregates, taken at one moment."""

    result: ScanResult
    data: dict[str, Any]                    # result.to_dict(): ranked accounts, clusters, summary
    con: duckdb.DuckDBPyConnection          # in-memory: hourly, cadence, samples
    taken_at: str
    seconds: float
    events: int
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: dict[str, dict[str, list]] = field(default_factory=dict)
    links: dict[str, list[tuple[str, str, list[str]]]] = field(default_factory=dict)  # cluster -> edges

    @classmethod
    def take(cls, db: str | Path, options: ScanOptions) -> "Snapshot":
        started = time.perf_counter()
        mem = duckdb.connect(":memory:")
        with EventStore(db, read_only=True) as store:
            events = store.count()
            # The scan's own steps (scan_store), keeping the template keys to redraw the link graph.
            options.check()
            baseline = options.baseline or load_default()
            script_keys: dict[str, list[int]] = {}
            features, template_keys = local_features(store, max_tokens_cap=baseline.max_tokens_cap,
                                                     workers=options.workers, script_keys=script_keys)
            result = score_features(store, features, template_keys, baseline, options, script_keys)
            graph = link_graph(identities(store, template_keys, script_keys=script_keys)) if result.clusters else None
            for name, sql in _AGGREGATES.items():
                table = store.con.sql(sql).to_arrow_table()
                mem.register("_t", table)
                mem.execute(f"CREATE TABLE {name} AS SELECT * FROM _t")
                mem.unregister("_t")
            _coverage_tables(store, mem, result)
        data = result.to_dict()
        snap = cls(result=result, data=data, con=mem, events=events, seconds=time.perf_counter() - started,
                   taken_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        snap.accounts = {a["account"]: a for a in data["accounts"]}
        snap.clusters = {c["cluster"]: c for c in data["clusters"]}
        snap.plots = {a.account: a.plots for a in result.accounts if a.plots}
        if graph is not None:
            for c in result.clusters:
                sub = graph.subgraph(c.accounts)
                snap.links[c.cluster] = sorted((a, b, list(d["kinds"])) for a, b, d in sub.edges(data=True))
        return snap

    def coverage(self, account: str) -> list[tuple[int, int]]:
        """(queries, capability areas among them) of one account, at the grid points it reached."""
        return self._rows("SELECT n, areas FROM coverage WHERE account = ? ORDER BY n", [account])

    def coverage_band(self) -> list[tuple[int, float, float, float, int]]:
        """(queries, p10, median, p90, accounts) of the areas organic (unflagged) accounts covered."""
        return self._rows("SELECT n, p10, p50, p90, accounts FROM coverage_band ORDER BY n", [])

    def _rows(self, sql: str, params: list) -> list[tuple]:
        cur = self.con.cursor()  # one cursor per query: pages run in worker threads
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    def timeline(self, account: str) -> tuple[str, list[tuple[datetime, int, int]]]:
        """(unit, [(bucket, requests, tokens)]): hourly, or daily when the account spans > 10 days."""
        span = self._rows("SELECT min(hour), max(hour) FROM hourly WHERE account = ?", [account])[0]
        if span[0] is None:
            return "hour", []
        unit = "day" if (span[1] - span[0]).total_seconds() > 10 * 86400 else "hour"
        # A dense series (quiet hours/days as zero bars), so bar positions are true time.
        rows = self._rows(
            f"SELECT g.b, coalesce(sum(h.requests), 0)::BIGINT, coalesce(sum(h.tokens), 0)::BIGINT "
            f"FROM generate_series(date_trunc('{unit}', ?::TIMESTAMP), ?::TIMESTAMP, INTERVAL 1 {unit}) AS g(b) "
            f"LEFT JOIN hourly h ON h.account = ? AND date_trunc('{unit}', h.hour) = g.b GROUP BY 1 ORDER BY 1",
            [span[0], span[1], account])
        return unit, [(b, int(r), int(t)) for b, r, t in rows]

    def cadence(self, account: str) -> list[int]:
        counts = dict(self._rows("SELECT bin, n FROM cadence WHERE account = ?", [account]))
        return [int(counts.get(b, 0)) for b in range(-1, 12)]

    def samples(self, account: str) -> list[tuple[datetime, str]]:
        return self._rows("SELECT ts, prompt FROM samples WHERE account = ? ORDER BY ts", [account])

    def decisions(self, account: str) -> list[tuple[str, bool, int, datetime]]:
        """(action, enforced, requests, last) of the gateway's decisions on this account."""
        return self._rows("SELECT action, enforced, n, last FROM decisions WHERE account = ? ORDER BY n DESC",
                          [account])

    def close(self) -> None:
        self.con.close()


def _coverage_tables(store: EventStore, mem: duckdb.DuckDBPyConnection, result: ScanResult) -> None:
    """``coverage`` (account, n, areas) and ``coverage_band`` (n, p10, p50, p90, accounts).

    The band is drawn from the accounts this scan did not flag: the store's own organic traffic,
    measured the same way as the account it is compared with. (The baseline file keeps fitted
    signal distributions, not curves; a store's own population also matches its product's mix.)
    Areas are classified once per distinct prompt among each account's first COVERAGE_QUERIES
    queries: ~15 s per million events, at start-up and on re-scan only.
    """
    firsts = store.con.sql(
        "SELECT account, rn, left(prompt_text, 600) AS prompt FROM (SELECT account, prompt_text, "
        "row_number() OVER (PARTITION BY account ORDER BY ts, id) AS rn, "
        "row_number() OVER (PARTITION BY account, hash(prompt_text) ORDER BY ts, id) AS k FROM events) "
        f"WHERE rn <= {COVERAGE_QUERIES} AND k = 1").to_arrow_table()
    import pyarrow as pa

    areas = tx.area_ids(firsts.column("prompt").to_pylist())
    mem.register("_areas", pa.table({"account": firsts.column("account"), "rn": firsts.column("rn"),
                                     "area": pa.array(areas, type=pa.int16())}))
    mem.register("_queries", pa.table({"account": [a.account for a in result.accounts],
                                       "queries": [a.queries for a in result.accounts],
                                       "flagged": [a.flagged for a in result.accounts]}))
    grid = "[" + ", ".join(str(n) for n in COVERAGE_GRID) + "]"
    mem.execute(
        "CREATE TABLE coverage AS WITH first_area AS (SELECT account, area, min(rn) AS rn FROM _areas GROUP BY ALL), "
        f"points AS (SELECT account, flagged, unnest(list_distinct(list_filter({grid}, lambda x: x <= queries) || "
        f"[least(queries, {COVERAGE_QUERIES})])) AS n FROM _queries WHERE queries > 0) "
        "SELECT p.account, p.n::INTEGER AS n, p.flagged, count(f.area)::INTEGER AS areas FROM points p "
        "LEFT JOIN first_area f ON f.account = p.account AND f.rn <= p.n GROUP BY ALL ORDER BY p.account, n")
    mem.execute(
        "CREATE TABLE coverage_band AS SELECT n, quantile_cont(areas, 0.1) AS p10, quantile_cont(areas, 0.5) AS p50, "
        f"quantile_cont(areas, 0.9) AS p90, count(*) AS accounts FROM coverage WHERE NOT flagged AND n IN "
        f"(SELECT unnest({grid})) GROUP BY n HAVING count(*) >= {BAND_MIN_ACCOUNTS} ORDER BY n")
    mem.unregister("_areas")
    mem.unregister("_queries")


class ActionLog:
    """The analysts' audit log: one row per action, in its own DuckDB file (never the event store)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = str(path)
        if read_only and not Path(self.path).exists():
            raise BadInputError("no such dashboard state file", source=self.path)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as exc:
            raise BadInputError(f"cannot open the dashboard's DuckDB file ({exc})", source=self.path) from None
        self._lock = threading.Lock()
        self.con.execute("SET TimeZone = 'UTC'")
        if read_only:
            if not self.con.execute("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_name = 'audit_log'").fetchone()[0]:
                self.con.close()
                raise BadInputError("not a dashboard state file (no audit_log table)", source=self.path)
            return
        self.con.execute("CREATE SEQUENCE IF NOT EXISTS audit_seq")
        self.con.execute("CREATE TABLE IF NOT EXISTS audit_log (id BIGINT DEFAULT nextval('audit_seq') PRIMARY KEY, "
                         "ts TIMESTAMP NOT NULL, analyst VARCHAR NOT NULL, client VARCHAR, target_kind VARCHAR NOT NULL, "
                         "target VARCHAR NOT NULL, action VARCHAR NOT NULL, note VARCHAR)")
        # pushed: NULL without a gateway; 'pending' while the push runs; 'sent'; 'failed: why'.
        self.con.execute("ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS pushed VARCHAR")
        self.con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")

    @functools.cached_property
    def _pushed_column(self) -> bool:
        """False only for a file opened read-only that was written before the column existed."""
        return bool(self.con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'audit_log' "
                                     "AND column_name = 'pushed'").fetchone()[0])

    def record(self, *, analyst: str, client: str, target_kind: str, target: str, action: str, note: str,
               pushed: str | None = None) -> int:
        allowed = APPEAL_DECISIONS if target_kind == "appeal" else ACTIONS
        if target_kind not in TARGET_KINDS or action not in allowed:
            raise ValueError(f"unknown action {action!r} on a {target_kind!r}")
        with self._lock:
            row = self.con.execute(
                "INSERT INTO audit_log (ts, analyst, client, target_kind, target, action, note, pushed) "
                "VALUES (now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [analyst, client, target_kind, target, action, note, pushed]).fetchone()
        return int(row[0])

    def set_pushed(self, entry_id: int, pushed: str) -> None:
        with self._lock:
            self.con.execute("UPDATE audit_log SET pushed = ? WHERE id = ?", [pushed, entry_id])

    def get(self, entry_id: int) -> dict[str, Any] | None:
        rows = self._select("WHERE id = ?", [entry_id], 1)
        return rows[0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def meta(self, key: str) -> str | None:
        with self._lock:
            if not self.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
                                    ).fetchone()[0]:
                return None
            row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def entries(self, *, target_kind: str | None = None, target: str | None = None,
                limit: int = 500) -> list[dict[str, Any]]:
        where, params = [], []
        if target_kind is not None:
            where.append("target_kind = ?")
            params.append(target_kind)
        if target is not None:
            where.append("target = ?")
            params.append(target)
        return self._select("WHERE " + " AND ".join(where) if where else "", params, limit)

    def _select(self, where: str, params: list, limit: int) -> list[dict[str, Any]]:
        keys = ("id", "ts", "analyst", "client", "target_kind", "target", "action", "note", "pushed")
        with self._lock:
            pushed = "pushed" if self._pushed_column else "NULL AS pushed"
            rows = self.con.execute(f"SELECT id, ts, analyst, client, target_kind, target, action, note, {pushed} "
                                    f"FROM audit_log {where} ORDER BY id DESC LIMIT {int(limit)}", params).fetchall()
        return [dict(zip(keys, r)) for r in rows]

    def current(self, target_kind: str = "account") -> dict[str, str]:
        """target → its latest action (``clear`` removes a target)."""
        with self._lock:
            rows = self.con.execute(
                "SELECT target, arg_max(action, id) FROM audit_log WHERE target_kind = ? GROUP BY target",
                [target_kind]).fetchall()
        return {t: a for t, a in rows if a != "clear"}

    def appeal_decisions(self) -> dict[str, int]:
        """Appeals decided from the dashboard (the gateway took the decision): upheld, lifted."""
        with self._lock:
            pushed = "coalesce(pushed, 'sent')" if self._pushed_column else "'sent'"
            rows = self.con.execute(
                f"SELECT action, count(DISTINCT target) FROM audit_log WHERE target_kind = 'appeal' AND {pushed} = 'sent' "
                f"GROUP BY action").fetchall()
        named = {"uphold": "upheld", "lift": "lifted"}
        return {named[a]: int(n) for a, n in rows if a in named}

    def feedback_allowlist(self) -> frozenset[str]:
        return frozenset(t for t, a in self.current("account").items() if a in FEEDBACK_ACTIONS)

    def false_positives(self, current: dict[str, str] | None = None) -> frozenset[str]:
        """Accounts whose latest action is ``false_positive`` (``current``: ``current("account")``
        if the caller has it already)."""
        current = self.current("account") if current is None else current
        return frozenset(t for t, a in current.items() if a == "false_positive")

    def close(self) -> None:
        with self._lock:
            self.con.close()
