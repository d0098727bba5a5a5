"""What one gateway process holds (keys, live scorer, policy, durable log, loader, peers' intel,
appeals, admin state) and its lifecycle. The request path lives beside it, one module per step:
:mod:`auth` → :mod:`decide` → :mod:`forward` / :mod:`streaming` → :mod:`record`, run by :mod:`proxy`;
the admin and appeals APIs in :mod:`admin` and :mod:`appeals_api`; :mod:`app` holds the route table.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from distillguard.detect.baseline import Baseline, load_default
from distillguard.events.jsonl import Quarantine
from distillguard.gateway.owners import ResponseOwners
from distillguard.gateway.appeals import AppealBook
from distillguard.gateway.config import GatewayConfig
from distillguard.gateway.intel import LiveIntel
from distillguard.gateway.keys import KeyRing
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.policy import Limits, ManualAction, Policy
from distillguard.gateway.scorer import LiveScorer
from distillguard.gateway.sinks import DuckDBSink, Loader, NullSink, ParquetSink
from distillguard.gateway.upstream import make_upstream
from distillguard.gateway.wal import DurableLog
from distillguard.private import private_dir, write_private


class Gateway:
    """Everything one gateway process holds; :func:`build_app` serves it."""

    def __init__(self, config: GatewayConfig, *, baseline: Baseline | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.baseline = baseline or (Baseline.load(config.baseline) if config.baseline else load_default())
        self.metrics = Metrics()
        self.keys = KeyRing()
        if config.keys is not None:
            self.keys.load_file(config.keys)
        self.state_path = Path(config.log.dir) / "admin-state.json"
        self.allowlist: set[str] = set(config.allowlist)
        self.scorer = LiveScorer(self.baseline, config.fpr, allowlist=self.allowlist)
        self.policy = Policy(config.policy, allowlist=self.allowlist)
        self._load_admin_state()
        self.appeals = AppealBook(Path(config.log.dir) / "appeals.jsonl")
        self.refusals: dict[str, dict[str, Any]] = {}   # account -> its latest enforced block/throttle
        self.responses = ResponseOwners()                # Responses API answer id -> account
        self.batch_book: Any = None                      # gateway.batches.BatchBook, made on first use
        self.log = DurableLog(config.log.dir, segment_bytes=int(config.log.segment_mb * (1 << 20)),
                              sync=config.log.fsync,
                              spool_bytes=int(config.log.spool_mb * (1 << 20)) if config.log.fail == "open" else 0)
        # Records the loader cannot store are kept beside the log, never dropped in silence.
        self.quarantine = Quarantine(Path(config.log.dir) / "quarantine.jsonl")
        self.proxy_networks = config.proxy_networks()
        fleet_loader = config.state is not None and config.log.sink == "duckdb"
        if fleet_loader:
            # A fleet: the replica holding the loader lease opens the store and loads every
            # replica's log (<log root>/<replica>/); the others only write their own.
            from distillguard.gateway.fleet.loader import FleetLoader
            self.sink = NullSink()
            self.loader = FleetLoader(Path(config.log.dir).parent, lambda: DuckDBSink(config.db, quarantine=self.quarantine), config.state,
                                      holder=f"{config.log.replica}.{os.getpid()}", prefix=config.state_prefix,
                                      keep_segments=config.log.keep_segments, interval_s=config.log.load_interval_s)
        elif config.log.sink == "duckdb":
            self.sink = DuckDBSink(config.db, quarantine=self.quarantine)
            with self.sink.lock:
                self.keys.load_store(self.sink.store.api_keys())
        elif config.log.sink == "parquet":
            self.sink = ParquetSink(config.log.parquet_dir, replica=config.log.replica, quarantine=self.quarantine)
        else:
            self.sink = NullSink()
        if not fleet_loader:
            self.loader = Loader(config.log.dir, self.sink, current_segment=lambda: self.log.current_segment,
                                 keep_segments=config.log.keep_segments, interval_s=config.log.load_interval_s)
        self.tree = None
        if config.evidence.key is not None:   # every logged exchange a Merkle leaf (docs/evidence.md)
            from distillguard.evidence.gateway_tree import GatewayTree
            from distillguard.intel.keys import SigningKey

            self.tree = GatewayTree(config.log.dir, config.evidence.log_id or f"distillguard/{config.log.replica}",
                                    SigningKey.load(config.evidence.key), interval_s=config.evidence.interval_s)
            self.log.on_commit = self.tree.add_logged     # leaves only for records written, in log order
        self.recovered = self.loader.load_once()     # what an earlier run logged but did not load
        self.metrics.gauges(backlog=self.log.backlog, unloaded_bytes=self.loader.pending_bytes,
                            accounts=lambda: len(self.scorer.accounts), loaded=lambda: self.loader.loaded)
        self.intel: LiveIntel | None = None
        if config.intel.home is not None:    # peers' indicators: identities hashed once, the store read once
            self.intel = LiveIntel(config.intel.home, reload_s=config.intel.reload_s, keys=self.keys.infos)
            self.intel.add_keys(self.keys.infos())
            self.intel.reload()
            self.scorer.intel = self.intel
        self.transport = transport
        self.upstream_client = None
        self.upstream = config.upstream.rstrip("/")
        self.admin_token = config.admin_token or os.environ.get("DISTILLGUARD_ADMIN_TOKEN") or None
        self.fleet = None             # fleet.member.FleetMember with --state: the replicas' shared state
        if config.state is not None:
            from distillguard.gateway.fleet.member import FleetMember
            self.fleet = FleetMember(self, config.state, replica=config.log.replica, prefix=config.state_prefix)
            self.metrics.fleet(self.fleet)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        # Long-lived state (baseline, keys, per-account sketches) holds no reference cycles worth
        # scanning; full collections over it were the gateway's worst latency spikes. Freeze what
        # exists at start and collect the young generation less often.
        self._gc_threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        self.upstream_client = make_upstream(self.upstream, max_connections=self.config.max_connections,
                                             connect_timeout=self.config.connect_timeout_s,
                                             timeout=self.config.timeout_s, transport=self.transport)
        self.loader.start()
        if self.tree is not None:
            self.tree.start()
        if self.intel is not None:
            self.intel.start()
        if self.fleet is not None:
            await self.fleet.start()

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        if self.upstream_client is not None:
            await self.upstream_client.aclose()
        if self.intel is not None:
            self.intel.stop()
        gc.unfreeze()                 # the process may go on (tests, the demo) and must collect again
        gc.set_threshold(*self._gc_threshold)
        self.log.close()
        if self.tree is not None:
            self.tree.stop()        # a last checkpoint covering everything logged
        self.loader.stop(final_load=True)
        self.sink.close()

    # -- admin state (allowlist, manual actions) survives restarts ------------------------------
    def _load_admin_state(self) -> None:
        try:
            data = orjson.loads(self.state_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return
        self.allowlist.update(a for a in data.get("allowlist", []) if isinstance(a, str))
        for account, m in (data.get("manual") or {}).items():
            try:
                self.policy.manual[account] = ManualAction(
                    action=m["action"], reason=m.get("reason", ""), limits=Limits(**(m.get("limits") or {})),
                    set_at=float(m.get("set_at", 0.0)), expires_at=m.get("expires_at"))
            except (KeyError, TypeError, ValueError):
                continue

    def save_admin_state(self) -> None:
        data = {"allowlist": sorted(self.allowlist),
                "manual": {a: m.to_dict() for a, m in self.policy.manual.items()}}
        private_dir(self.state_path.parent)
        write_private(self.state_path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
