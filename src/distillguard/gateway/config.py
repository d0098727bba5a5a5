"""Gateway configuration: a TOML file (``--config``) with command-line overrides.

Every key is optional; see ``docs/gateway.md`` for a commented example. Errors name the key::

    upstream = "http://127.0.0.1:8000"
    port = 8080
    trusted_proxies = ["10.0.0.0/8"]   # only these peers' X-Forwarded-For names the client
    [log]
    dir = "gateway-log"
    sink = "duckdb"              # duckdb | parquet | none
    [policy]
    mode = "enforce"             # enforce | shadow
    fail = "open"                # open | closed
    allowlist = ["research-lab"]
    [policy.limits]
    requests_per_minute = 600
    [[policy.rules]]
    name = "flagged"
    when = "flagged"
    actions = ["block"]
    [evidence]
    key = "intel/signing.pem"    # every logged exchange becomes a Merkle leaf; checkpoints signed (docs/evidence.md)
    interval_s = 60
    [intel]
    home = "intel"               # an intel home (distillguard intel init): peers' indicators feed the policy
    reload_s = 60                # re-read it when it changed (0: only on POST /admin/intel/reload)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from distillguard.errors import BadInputError
from distillguard.gateway.clientaddr import LOOPBACK, parse_trusted
from distillguard.gateway.policy import PolicyConfig
from distillguard.gateway.rules import (ACTIONS, CONDITIONS, DEFAULT_RULES, EVIDENCE, LINKS, STATUS_CONDITIONS, Limits,
                                       Rule)
from distillguard.shaping import MODES as SHAPE_MODES


@dataclass
class LogConfig:
    dir: Path = Path("gateway-log")
    sink: str = "duckdb"                 # duckdb | parquet | none
    parquet_dir: Path | None = None
    replica: str = "gw"
    shared_dir: Path | None = None       # the log root shared by --workers (the batch book lives there)
    segment_mb: float = 64.0
    load_interval_s: float = 2.0
    keep_segments: bool = False
    fsync: bool = True
    fail: str = "closed"                 # the log cannot be written: closed (503) | open (answer, spool)
    spool_mb: float = 64.0               # fail open: records held in memory until the disk takes them


@dataclass
class IntelConfig:
    home: Path | None = None             # an intel home; None: no peer intel
    reload_s: float = 60.0               # how often to check it for changes (0: admin endpoint only)


@dataclass
class EvidenceConfig:
    key: Path | None = None              # Ed25519 signing key (PEM): set it to put every exchange in a Merkle tree
    log_id: str | None = None            # the tree's origin (default: distillguard/<log.replica>)
    interval_s: float = 60.0             # sign a checkpoint this often (and on shutdown)


@dataclass
class GatewayConfig:
    upstream: str = ""
    upstream_api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    db: Path = Path("events.duckdb")
    keys: Path | None = None
    admin_token: str | None = None
    baseline: Path | None = None
    fpr: float = 0.001
    connect_timeout_s: float = 5.0
    timeout_s: float = 120.0
    max_connections: int = 512
    max_body_bytes: int = 4 << 20
    trust_forwarded_for: bool = False        # legacy switch: X-Forwarded-For from loopback peers only
    trusted_proxies: tuple[str, ...] = ()    # peers (IPs/CIDRs) whose X-Forwarded-For names the client
    trust_client_timestamps: bool = False    # replay tools only: honour x-distillguard-replay-ts
    state: str | None = None                 # redis://...: shared state of a fleet of replicas (None: embedded)
    state_prefix: str = "dg"                 # key prefix of this fleet in that Redis
    log: LogConfig = field(default_factory=LogConfig)
    intel: IntelConfig = field(default_factory=IntelConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    allowlist: set[str] = field(default_factory=set)

    def validate(self) -> "GatewayConfig":
        url = urlparse(self.upstream)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise BadInputError(f"expected an http(s) URL, got {self.upstream!r}", field="upstream")
        if not 0 < self.fpr < 1:
            raise BadInputError(f"expected a number between 0 and 1, got {self.fpr}", field="fpr")
        if not 0 <= self.port <= 65535:
            raise BadInputError(f"not a TCP port: {self.port}", field="port")
        if self.log.sink not in ("duckdb", "parquet", "none"):
            raise BadInputError(f"expected duckdb, parquet or none, got {self.log.sink!r}", field="log.sink")
        if self.log.sink == "parquet" and self.log.parquet_dir is None:
            raise BadInputError("the parquet sink needs log.parquet_dir", field="log.parquet_dir")
        if self.log.fail not in ("open", "closed"):
            raise BadInputError(f"expected open or closed, got {self.log.fail!r}", field="log.fail")
        if self.log.spool_mb <= 0:
            raise BadInputError(f"expected a positive number, got {self.log.spool_mb}", field="log.spool_mb")
        if self.intel.reload_s < 0:
            raise BadInputError(f"expected a number >= 0, got {self.intel.reload_s}", field="intel.reload_s")
        if self.evidence.interval_s <= 0:
            raise BadInputError(f"expected a number > 0, got {self.evidence.interval_s}", field="evidence.interval_s")
        if self.policy.mode not in ("enforce", "shadow"):
            raise BadInputError(f"expected enforce or shadow, got {self.policy.mode!r}", field="policy.mode")
        if self.state is not None:
            from distillguard.gateway.fleet.state import check_url
            check_url(self.state)
        self.proxy_networks()
        if self.policy.fail not in ("open", "closed"):
            raise BadInputError(f"expected open or closed, got {self.policy.fail!r}", field="policy.fail")
        return self

    def proxy_networks(self) -> tuple:
        """The networks whose ``X-Forwarded-For`` is believed (``trust_forwarded_for`` alone:
        loopback, for replay tools on the same host)."""
        entries = self.trusted_proxies or (LOOPBACK if self.trust_forwarded_for else ())
        return parse_trusted(entries)


_TOP = {"upstream": str, "upstream_api_key": str, "host": str, "port": int, "db": Path, "keys": Path,
        "admin_token": str, "baseline": Path, "fpr": float, "connect_timeout_s": float, "timeout_s": float,
        "max_connections": int, "max_body_bytes": int, "trust_forwarded_for": bool, "state": str, "state_prefix": str,
        "trust_client_timestamps": bool}
_INTEL = {"home": Path, "reload_s": float}
_EVIDENCE = {"key": Path, "log_id": str, "interval_s": float}
_LOG = {"dir": Path, "sink": str, "parquet_dir": Path, "replica": str, "shared_dir": Path, "segment_mb": float,
        "load_interval_s": float, "keep_segments": bool, "fsync": bool, "fail": str, "spool_mb": float}


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise BadInputError(f"expected true or false, got {value!r}", field=where)
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise BadInputError(f"expected a{'n integer' if kind is int else ' number'}, got {value!r}", field=where)
        return kind(value)
    if not isinstance(value, str):
        raise BadInputError(f"expected a string, got {value!r}", field=where)
    return Path(value) if kind is Path else value


def _limits(table: Any, where: str) -> Limits:
    if not isinstance(table, dict):
        raise BadInputError("expected a table", field=where)
    unknown = set(table) - {"requests_per_minute", "tokens_per_minute"}
    if unknown:
        raise BadInputError(f"unknown key '{sorted(unknown)[0]}'", field=where)
    values = {}
    for k, v in table.items():
        number = _typed(v, float, f"{where}.{k}")
        if number <= 0:
            raise BadInputError(f"expected a positive number, got {v!r}", field=f"{where}.{k}")
        values[k] = number
    return Limits(**values)


def _query_count(table: dict, key: str, where: str) -> int:
    """A rule's count of queries (``min_queries``, ``sustained_queries``): a non-negative integer, 0 if absent."""
    value = table.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadInputError(f"expected a non-negative integer, got {value!r}", field=f"{where}.{key}")
    return value


def _rule(table: Any, index: int) -> Rule:
    where = f"policy.rules[{index}]"
    if not isinstance(table, dict):
        raise BadInputError("expected a table", field=where)
    unknown = set(table) - {"name", "when", "actions", "requests_per_minute", "tokens_per_minute", "max_tokens",
                            "cohort", "shape", "evidence", "min_queries", "sustained_s",
                            "sustained_queries", "links"}
    if unknown:
        raise BadInputError(f"unknown key '{sorted(unknown)[0]}'", field=where)
    when = table.get("when")
    if when not in CONDITIONS:
        raise BadInputError(f"expected one of {', '.join(CONDITIONS)}, got {when!r}", field=f"{where}.when")
    actions = table.get("actions")
    if not isinstance(actions, list) or not actions or any(a not in ACTIONS for a in actions):
        raise BadInputError(f"expected a list drawn from {', '.join(ACTIONS)}, got {actions!r}",
                            field=f"{where}.actions")
    if when in STATUS_CONDITIONS and "block" in actions:
        raise BadInputError(f"'{when}' is a legitimate use and is never blocked on its status: use throttle and "
                            f"modifying actions", field=f"{where}.actions")
    limits = _limits({k: table[k] for k in ("requests_per_minute", "tokens_per_minute") if k in table}, where)
    max_tokens = table.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise BadInputError(f"expected a positive integer, got {max_tokens!r}", field=f"{where}.max_tokens")
    if "cap_max_tokens" in actions and max_tokens is None:
        raise BadInputError("cap_max_tokens needs max_tokens", field=f"{where}.max_tokens")
    if "throttle" in actions and limits == Limits():
        raise BadInputError("throttle needs requests_per_minute or tokens_per_minute", field=where)
    cohort = table.get("cohort")
    if "cohort" in actions and not isinstance(cohort, str):
        raise BadInputError("the cohort action needs a cohort name", field=f"{where}.cohort")
    shape = table.get("shape", "antidistillation")
    if shape not in SHAPE_MODES:
        raise BadInputError(f"expected one of {', '.join(SHAPE_MODES)}, got {shape!r}", field=f"{where}.shape")
    evidence = table.get("evidence", "any")
    if evidence not in EVIDENCE:
        raise BadInputError(f"expected one of {', '.join(EVIDENCE)}, got {evidence!r}", field=f"{where}.evidence")
    links = table.get("links", "any")
    if links not in LINKS:
        raise BadInputError(f"expected one of {', '.join(LINKS)}, got {links!r}", field=f"{where}.links")
    if links != "any" and when != "cluster_flagged":
        raise BadInputError("links applies to cluster_flagged rules only", field=f"{where}.links")
    min_queries = _query_count(table, "min_queries", where)
    sustained_queries = _query_count(table, "sustained_queries", where)
    sustained_s = table.get("sustained_s", 0)
    if (not isinstance(sustained_s, (int, float)) or isinstance(sustained_s, bool) or not math.isfinite(sustained_s)
            or sustained_s < 0):
        raise BadInputError(f"expected a non-negative number of seconds, got {sustained_s!r}",
                            field=f"{where}.sustained_s")
    return Rule(name=str(table.get("name") or when), when=when, actions=tuple(actions), limits=limits,
                max_tokens=max_tokens, cohort=cohort, shape=shape, evidence=evidence, min_queries=min_queries,
                sustained_s=float(sustained_s), sustained_queries=sustained_queries, links=links)


def load_config(path: str | Path | None, **overrides: Any) -> GatewayConfig:
    """Read the TOML file (if any), then apply overrides that are not None."""
    config = GatewayConfig()
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError("no such config file", source=source) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInputError(f"not valid TOML ({exc})", source=source) from None
        try:
            config = _from_dict(data)
        except BadInputError as exc:
            raise BadInputError(exc.message, source=source, field=exc.field) from None
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    return config.validate()


def _from_dict(data: dict[str, Any]) -> GatewayConfig:
    config = GatewayConfig()
    unknown = set(data) - set(_TOP) - {"log", "policy", "intel", "trusted_proxies", "evidence"}
    if unknown:
        raise BadInputError(f"unknown key '{sorted(unknown)[0]}'", field=sorted(unknown)[0])
    for key, kind in _TOP.items():
        if key in data:
            setattr(config, key, _typed(data[key], kind, key))
    if "trusted_proxies" in data:
        proxies = data["trusted_proxies"]
        if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
            raise BadInputError("expected a list of IP addresses or networks", field="trusted_proxies")
        config.trusted_proxies = tuple(proxies)
    log = data.get("log", {})
    if not isinstance(log, dict):
        raise BadInputError("expected a table", field="log")
    for key, value in log.items():
        if key not in _LOG:
            raise BadInputError(f"unknown key '{key}'", field=f"log.{key}")
        setattr(config.log, key, _typed(value, _LOG[key], f"log.{key}"))
    intel = data.get("intel", {})
    if not isinstance(intel, dict):
        raise BadInputError("expected a table", field="intel")
    for key, value in intel.items():
        if key not in _INTEL:
            raise BadInputError(f"unknown key '{key}'", field=f"intel.{key}")
        setattr(config.intel, key, _typed(value, _INTEL[key], f"intel.{key}"))
    evidence = data.get("evidence", {})
    if not isinstance(evidence, dict):
        raise BadInputError("expected a table", field="evidence")
    for key, value in evidence.items():
        if key not in _EVIDENCE:
            raise BadInputError(f"unknown key '{key}'", field=f"evidence.{key}")
        setattr(config.evidence, key, _typed(value, _EVIDENCE[key], f"evidence.{key}"))
    policy = data.get("policy", {})
    if not isinstance(policy, dict):
        raise BadInputError("expected a table", field="policy")
    unknown = set(policy) - {"mode", "fail", "allowlist", "limits", "cluster_limits", "rules", "cohorts"}
    if unknown:
        raise BadInputError(f"unknown key '{sorted(unknown)[0]}'", field=f"policy.{sorted(unknown)[0]}")
    pc = PolicyConfig()
    if "mode" in policy:
        pc.mode = _typed(policy["mode"], str, "policy.mode")
    if "fail" in policy:
        pc.fail = _typed(policy["fail"], str, "policy.fail")
    if "cohorts" in policy:
        pc.cohorts = _typed(policy["cohorts"], int, "policy.cohorts")
    if "limits" in policy:
        pc.limits = _limits(policy["limits"], "policy.limits")
    if "cluster_limits" in policy:
        pc.cluster_limits = _limits(policy["cluster_limits"], "policy.cluster_limits")
    if "rules" in policy:
        rules = policy["rules"]
        if not isinstance(rules, list):
            raise BadInputError("expected an array of tables ([[policy.rules]])", field="policy.rules")
        pc.rules = tuple(_rule(r, i) for i, r in enumerate(rules))
    else:
        pc.rules = DEFAULT_RULES
    allow = policy.get("allowlist", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise BadInputError("expected a list of account names", field="policy.allowlist")
    config.allowlist = set(allow)
    config.policy = pc
    return config

