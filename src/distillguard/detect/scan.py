"""`distillguard scan`: ranked accounts and clusters with calibrated p-values and reasons."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from distillguard.detect.baseline import Baseline, load_default
from distillguard.detect.engine import account_totals, features_for, identities, local_features
from distillguard.detect.features import END_USER_SEP, split_end_user_key
from distillguard.detect.hydra import find_clusters
from distillguard.detect.scoring import Reason, Verdict, end_user_verdict, judge, judge_frame
from distillguard.detect.text import AREA_LIST
from distillguard.errors import UsageError
from distillguard.store import EventStore, SourceKind, source_kind
from distillguard.store.ingest import ingest_paths

DEFAULT_PRICE_PER_MILLION = 10.0  # USD per million output tokens, for damage estimates
PLOTTED_ACCOUNTS = 50


def evidence_series(store: EventStore, account: str, points: int = 60) -> dict[str, list]:
    """Hour-of-day histogram and coverage growth (distinct prompts vs queries) for one account."""
    quoted = "'" + account.replace("'", "''") + "'"
    hours = dict(store.run(f"SELECT hour(ts), count(*) FROM events WHERE account = {quoted} GROUP BY 1"))
    rows = store.run(f"SELECT prompt_text FROM events WHERE account = {quoted} ORDER BY ts")
    seen: set[str] = set()
    growth = []
    step = max(1, len(rows) // points)
    for i, (prompt,) in enumerate(rows, 1):
        seen.add(prompt)
        if i % step == 0 or i == len(rows):
            growth.append([i, len(seen)])
    return {"hour_histogram": [int(hours.get(h, 0)) for h in range(24)], "coverage_growth": growth}


@dataclass
class ScanOptions:
    baseline: Baseline | None = None
    fpr: float = 0.001
    allowlist: frozenset[str] = frozenset()
    engine: str = "local"
    price_per_million: float = DEFAULT_PRICE_PER_MILLION
    workers: int = 1  # processes for feature extraction on large inputs (the CLI uses every core)
    intel: Any = None  # an intel.match.IntelSignal: peers' indicators as one more (only additive) signal

    def check(self) -> None:
        if not 0.0 < self.fpr < 1.0:
            raise UsageError("--fpr must be between 0 and 1")
        if self.engine not in ("local", "spark"):
            raise UsageError("--engine must be 'local' or 'spark'")
        if self.price_per_million < 0:
            raise UsageError("--price-per-million must be >= 0")


@dataclass
class EndUserResult:
    """One of an account's own end users (request ``safety_identifier``/``user``), scored as a subject."""

    end_user: str
    queries: int
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {"end_user": self.end_user, "queries": self.queries, "status": self.verdict.status,
                "flagged": self.verdict.flagged, "p_value": float(f"{self.verdict.p_value:.4g}"),
                "reasons": [r.to_dict() for r in self.verdict.reasons]}


@dataclass
class AccountResult:
    account: str
    verdict: Verdict
    queries: int
    completion_tokens: int
    prompt_tokens: int
    first_seen: str
    last_seen: str
    top_area: str
    cluster: str | None = None
    cluster_flagged: bool = False
    plots: dict[str, list] = field(default_factory=dict)  # evidence series for reports (flagged accounts)
    intel: Any = None        # intel.match.AccountIntel when peers' indicators match this account
    intel_flagged: bool = False
    end_users: list[EndUserResult] = field(default_factory=list)  # its end users flagged on their own

    @property
    def flagged(self) -> bool:
        return self.verdict.flagged or self.cluster_flagged or self.intel_flagged

    def to_dict(self) -> dict[str, Any]:
        reasons = [r.to_dict() for r in self.verdict.reasons]
        if self.cluster_flagged and not self.verdict.flagged:
            reasons.insert(0, {"signal": "hydra_cluster", "family": "cluster", "value": None, "p_value": None,
                               "detail": f"member of flagged cluster {self.cluster}"})
        score = self.verdict.score
        if self.intel is not None:  # peers' intel only ever adds: the larger score, its reasons first
            score = max(score, self.intel.score)
            reasons = self.intel.reasons() + reasons
        out = {"account": self.account, "score": round(score, 4),
               "p_value": float(f"{self.verdict.p_value:.4g}"), "flagged": self.flagged,
               "status": "flagged" if self.flagged else self.verdict.status, "cluster": self.cluster,
               "queries": self.queries, "completion_tokens": self.completion_tokens,
               "first_seen": self.first_seen, "last_seen": self.last_seen, "top_area": self.top_area,
               "family_p": {k: float(f"{v:.4g}") for k, v in self.verdict.family_p.items()}, "reasons": reasons}
        if self.intel is not None:
            out["intel"] = self.intel.to_dict()
        if self.end_users:
            out["end_users"] = [u.to_dict() for u in self.end_users]
        return out


@dataclass
class ClusterResult:
    cluster: str
    accounts: tuple[str, ...]
    verdict: Verdict
    queries: int
    completion_tokens: int
    link_counts: dict[str, int]
    confidence: float
    carried_by: str = "infrastructure"

    def to_dict(self) -> dict[str, Any]:
        links = ", ".join(f"{k} ({v} links)" for k, v in sorted(self.link_counts.items(), key=lambda kv: -kv[1]))
        reasons = [{"signal": "linked_accounts", "family": "cluster", "value": len(self.accounts), "p_value": None,
                    "detail": f"{len(self.accounts)} accounts linked by {links}; attribution confidence "
                              f"{self.confidence:.0%}, carried by {self.carried_by}"}]
        reasons += [r.to_dict() for r in self.verdict.reasons]
        return {"cluster": self.cluster, "accounts": list(self.accounts), "score": round(self.verdict.score, 4),
                "p_value": float(f"{self.verdict.p_value:.4g}"), "flagged": self.verdict.flagged,
                "queries": self.queries, "completion_tokens": self.completion_tokens,
                "attribution_confidence": self.confidence, "carried_by": self.carried_by, "links": self.link_counts,
                "reasons": reasons}


@dataclass
class ScanResult:
    accounts: list[AccountResult]
    clusters: list[ClusterResult]
    calibration: dict[str, Any]
    price_per_million: float
    features: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    end_user_features: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # keyed account␟end user

    def summary(self) -> dict[str, Any]:
        flagged = [a for a in self.accounts if a.flagged]
        flagged_clusters = [c for c in self.clusters if c.verdict.flagged]
        in_clusters = {acct for c in flagged_clusters for acct in c.accounts}
        alone = [a for a in flagged if a.account not in in_clusters]
        by_peer = intel_campaigns(alone)
        grouped = {acct for g in by_peer for acct in g["accounts"]}
        campaigns = len(flagged_clusters) + len(by_peer) + sum(1 for a in alone if a.account not in grouped)
        tokens = sum(a.completion_tokens for a in flagged)
        areas: dict[str, int] = {}
        for a in flagged:
            areas[a.top_area] = areas.get(a.top_area, 0) + a.queries
        return {"accounts_scanned": len(self.accounts), "campaigns": campaigns, "accounts_flagged": len(flagged),
                "clusters_flagged": len(flagged_clusters), "queries_extracted": sum(a.queries for a in flagged),
                "tokens_extracted": int(tokens),
                "estimated_cost_usd": round(tokens / 1e6 * self.price_per_million, 2),
                "price_per_million_tokens": self.price_per_million,
                "capability_areas": dict(sorted(areas.items(), key=lambda kv: -kv[1])),
                "attribution": {c.cluster: c.confidence for c in flagged_clusters},
                "intel_campaigns": by_peer}

    def to_dict(self, *, include_clear: bool = True) -> dict[str, Any]:
        accounts = sorted(self.accounts, key=lambda a: (-a.flagged, a.verdict.p_value, a.account))
        if not include_clear:
            accounts = [a for a in accounts if a.flagged]
        return {"accounts": [a.to_dict() for a in accounts],
                "clusters": [c.to_dict() for c in sorted(self.clusters, key=lambda c: (-c.verdict.flagged,
                                                                                      c.verdict.p_value))],
                "summary": self.summary(), "calibration": self.calibration}


def intel_campaigns(accounts: Sequence[AccountResult]) -> list[dict[str, Any]]:
    """Accounts flagged by peers' intel alone, grouped by the peer campaigns they match.

    Two such accounts that match indicators of one peer campaign are one campaign to us too (the
    peer saw them as one actor); an account matching two campaigns joins their groups. Accounts
    our own scan flagged keep their own campaign: a peer's word does not merge our findings.
    """
    only_intel = [a for a in accounts if a.intel_flagged and not a.verdict.flagged and not a.cluster_flagged]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    names: dict[str, tuple[str, str]] = {}          # campaign node -> (peer, campaign name)
    for a in only_intel:
        for m in a.intel.matches:
            if m.campaign_id or m.campaign:
                node = f"{m.peer}\x00{m.campaign_id or m.campaign}"
                names[node] = (m.peer, m.campaign or m.campaign_id)
                parent[find(a.account)] = find(node)
    groups: dict[str, list[str]] = {}
    for a in only_intel:
        if a.account in parent:
            groups.setdefault(find(a.account), []).append(a.account)
    out = []
    for root, members in groups.items():
        nodes = sorted(n for n in names if find(n) == root)
        out.append({"accounts": sorted(members), "peer_campaigns": [
            {"peer": names[n][0], "campaign": names[n][1]} for n in nodes]})
    return sorted(out, key=lambda g: (-len(g["accounts"]), g["accounts"]))


def _iso(ts: Any) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_sources(paths: Sequence[str | Path], workdir: Path) -> EventStore:
    """A read-only store for one DuckDB file, or a scratch store the logs are ingested into."""
    if not paths:
        raise UsageError("give at least one event log or DuckDB store")
    if len(paths) == 1 and source_kind(paths[0]) is SourceKind.DUCKDB:
        return EventStore(paths[0], read_only=True)
    store = EventStore(workdir / "scan.duckdb")
    ingest_paths(store, paths)
    return store


def scan_store(store: EventStore, options: ScanOptions,
               progress: Callable[[str, int, int], None] | None = None) -> ScanResult:
    options.check()
    baseline = options.baseline or load_default()
    script_keys: dict[str, list[int]] | None = None   # the Spark engine does not gather them
    if options.engine == "spark":
        from distillguard.detect.spark_engine import spark_features

        features, template_keys = spark_features(store, max_tokens_cap=baseline.max_tokens_cap)
    else:
        script_keys = {}
        features, template_keys = local_features(
            store, max_tokens_cap=baseline.max_tokens_cap, workers=options.workers, script_keys=script_keys,
            progress=(lambda done, total: progress("features", done, total)) if progress else None)
    return score_features(store, features, template_keys, baseline, options, script_keys)


def score_features(store: EventStore, features: pd.DataFrame, template_keys: dict[str, list[int]],
                   baseline: Baseline, options: ScanOptions,
                   script_keys: dict[str, list[int]] | None = None) -> ScanResult:
    totals = account_totals(store)
    is_end_user = features.index.str.contains(END_USER_SEP, regex=False)
    user_features = features[is_end_user]
    features = features[~is_end_user]
    verdicts = judge_frame(features, baseline, options.fpr, options.allowlist)
    user_verdicts = judge_end_users(user_features, baseline, options.fpr, options.allowlist)
    results: dict[str, AccountResult] = {}
    for acct, verdict in verdicts.items():
        t = totals.loc[acct]
        top = features.at[acct, "top_area"]
        results[acct] = AccountResult(
            account=acct, verdict=verdict, queries=int(t["queries"]), completion_tokens=int(t["completion_tokens"]),
            prompt_tokens=int(t["prompt_tokens"]), first_seen=_iso(t["first_seen"]), last_seen=_iso(t["last_seen"]),
            top_area=AREA_LIST[int(top)] if np.isfinite(top) else "unknown")
    _fold_end_users(results, user_features, user_verdicts)
    clusters = []
    top_areas = {str(a): int(v) for a, v in features["top_area"].items()
                 if END_USER_SEP not in str(a) and np.isfinite(v)} if "top_area" in features else {}
    for cluster in find_clusters(identities(store, template_keys, top_areas, script_keys)):
        members = list(cluster.accounts)
        feats = features_for(store, members, max_tokens_cap=baseline.max_tokens_cap)
        authorised = all(m in options.allowlist for m in members)
        verdict = judge(feats, baseline, options.fpr, authorised=authorised)
        queries = sum(results[m].queries for m in members)
        tokens = sum(results[m].completion_tokens for m in members)
        clusters.append(ClusterResult(cluster=cluster.cluster, accounts=cluster.accounts, verdict=verdict,
                                      queries=queries, completion_tokens=tokens, link_counts=cluster.link_counts,
                                      confidence=cluster.confidence, carried_by=cluster.carried_by))
        for m in members:
            results[m].cluster = cluster.cluster
            results[m].cluster_flagged = verdict.flagged and m not in options.allowlist
    if options.intel is not None:
        for acct, evidence in options.intel.evaluate(store.con).items():
            if acct in results:
                results[acct].intel = evidence
                results[acct].intel_flagged = evidence.flagged and acct not in options.allowlist
    flagged = sorted((r for r in results.values() if r.flagged), key=lambda r: r.verdict.p_value)
    for r in flagged[:PLOTTED_ACCOUNTS]:
        r.plots = evidence_series(store, r.account)
    calibration = {"baseline": baseline.source or "default", "baseline_accounts": baseline.accounts_,
                   "target_fpr": options.fpr, "min_queries": baseline.min_queries,
                   "method": "per-signal p-values (beta-binomial / empirical tail) -> family Bonferroni -> "
                             "Fisher with Brown's correction, gated on harvest (per day or lifetime) + valuable as "
                             "training data (elicitation | automated self-contained/long-answer value | automated "
                             "coverage) and not one fixed instruction; probing and evaluation reported apart"}
    if options.intel is not None:
        calibration["intel"] = {"peers": sorted(options.intel.home.peers), **options.intel.stats_}
    return ScanResult(accounts=list(results.values()), clusters=clusters, calibration=calibration,
                      price_per_million=options.price_per_million, features=features,
                      end_user_features=user_features)


def judge_end_users(features: pd.DataFrame, baseline: Baseline, fpr: float,
                    allowlist: frozenset[str] | set[str] = frozenset()) -> dict[str, Verdict]:
    """Judge end-user rows; each of an account's k busy end users at ``fpr / k`` (Bonferroni), so
    an account's chance of a false flag through its end users stays within ``fpr`` however many
    customers it relays."""
    if features.empty:
        return {}
    account_of = {key: split_end_user_key(key)[0] for key in features.index}
    per_account = Counter(account_of.values())
    p_frame = baseline.p_value_frame(features)
    rows = features.to_dict("index")
    out = {}
    for key, p in zip(p_frame.index, p_frame.to_dict("records")):
        account = account_of[key]
        out[key] = judge(rows[key], baseline, fpr / per_account[account], authorised=account in allowlist, p=p)
    return out


def _fold_end_users(results: dict[str, AccountResult], features: pd.DataFrame,
                    verdicts: dict[str, Verdict]) -> None:
    """Attach end users flagged on their own to their accounts.

    An account that is clear on its own but carries a flagged end user is flagged through it (the
    end user's reasons, led by which end user and what share of the traffic it sent).
    """
    by_account: dict[str, list[EndUserResult]] = {}
    judged = Counter(split_end_user_key(key)[0] for key in verdicts)
    for key, verdict in verdicts.items():
        if verdict.status not in ("flagged", "authorised"):
            continue
        account, user = split_end_user_key(key)
        if account in results:
            by_account.setdefault(account, []).append(
                EndUserResult(end_user=user or "", queries=int(features.at[key, "queries"]), verdict=verdict))
    for account, users in by_account.items():
        users.sort(key=lambda u: u.verdict.p_value)
        result = results[account]
        result.end_users = users
        if result.verdict.status in ("flagged", "authorised", "repeated_runs"):
            continue
        lead_user = users[0]
        result.verdict = end_user_verdict(lead_user.end_user, lead_user.queries, result.queries, judged[account],
                                          lead_user.verdict, more=len(users) - 1)


def scan_paths(paths: Sequence[str | Path], options: ScanOptions,
               progress: Callable[[str, int, int], None] | None = None) -> ScanResult:
    with tempfile.TemporaryDirectory(prefix="distillguard-scan-") as tmp:
        with open_sources(paths, Path(tmp)) as store:
            return scan_store(store, options, progress)


__all__ = ["ScanOptions", "ScanResult", "AccountResult", "EndUserResult", "ClusterResult", "Reason", "scan_paths", "scan_store"]
