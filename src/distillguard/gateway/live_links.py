"""The gateway's live hydra links: accounts tied to one controller, found as requests arrive.

Each request's link attributes (network, user agent, identity fields, recurring templates) are
hashed and indexed; an account is tested against every account sharing a new attribute with the
batch scan's edge rule (:func:`distillguard.detect.hydra.edge_evidence`) or, for shared structure,
its behaviour rule (:func:`distillguard.detect.hydra.behaviour_evidence`: the same template with
timing that ties the two to one controller). Linked accounts are joined in a union-find; a
component of ``MIN_CLUSTER`` or more is a cluster, which :class:`~distillguard.gateway.scorer.LiveScorer`
judges as one actor (its ``verdict`` and ``scored_at`` live on the cluster).

Which links tie an account to its cluster is kept for the policy: the infrastructure edges (the
edge rule: shared payment, network, e-mail series, organisation, user agent, creation burst) are
also joined in a union-find of their own, and a member whose infrastructure edges alone tie it to
``MIN_CLUSTER`` or more accounts reads as ``infrastructure``; one tied to its cluster by shared
structure with timing only (or to fewer accounts by infrastructure) reads as ``behaviour``
(:meth:`LiveLinks.carried`). Per member, not per cluster: behaviour links can join accounts that
share nothing else to a cluster whose core shares a card (an over-merge), and they are not that
core.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from typing import Any

from distillguard.detect.hydra import (CREATED_BUCKET_S, EDGE_WEIGHT_ONE_STRONG, MAX_GROUP, MIN_CLUSTER, STRONG, WEAK,
                                      TIMING, AccountIdentity, behaviour_evidence, edge_evidence, email_pattern)
from distillguard.gateway.online import _AREAS, _HOURS, _Q, N_AREAS, S, AccountState

_KINDS = ("template", "payment", "ip24", "email_pattern", "org", "user_agent", "created_burst")
_KIND_BITS = 3


def _attr(kind: str, value: Any) -> int:
    return _attr_hash(kind, f"{value}")


@functools.lru_cache(maxsize=1 << 15)
def _attr_hash(kind: str, value: str) -> int:
    """A link attribute's hash (kind in the low bits); cached: an account sends the same address,
    user agent and identity with every request."""
    digest = hashlib.blake2b(f"{kind}\x00{value}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> _KIND_BITS << _KIND_BITS) | _KINDS.index(kind)


def _kind(attr: int) -> str:
    return _KINDS[attr & ((1 << _KIND_BITS) - 1)]


@functools.lru_cache(maxsize=1 << 16)
def ip24(ip: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of a client address (cached: parsed once per address)."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class _Cluster:
    __slots__ = ("name", "members", "verdict", "scored_at", "edges", "strong", "links", "infrastructure")

    def __init__(self, name: str, members: set[str]) -> None:
        self.name = name
        self.members = members
        self.verdict: Any = None
        self.scored_at = 0.0
        self.edges = 0
        self.strong = 0.0
        self.links: dict[str, int] = {}     # link kind -> edges carrying it
        self.infrastructure = 1             # its most accounts tied together by infrastructure edges alone


class LiveLinks:
    """The link index and clusters over ``accounts`` (the scorer's account states, shared)."""

    def __init__(self, accounts: dict[str, AccountState]) -> None:
        self.accounts = accounts
        self._by_attr: dict[int, list[str]] = {}   # attribute -> accounts (up to MAX_GROUP)
        self._too_common: set[int] = set()           # attributes shared by more than MAX_GROUP accounts
        self._parent: dict[str, str] = {}          # union-find over linked accounts
        self._infra: dict[str, str] = {}           # union-find over infrastructure edges alone
        self._infra_size: dict[str, int] = {}      # its roots -> accounts
        self._clusters: dict[str, _Cluster] = {}   # root -> cluster (components of MIN_CLUSTER+)
        self._cluster_seq = 0
        self._t0: float | None = None              # the first request seen (the log's start, for hydra spans)

    def add(self, account: str, state: AccountState, ts: float, ip: str | None, user_agent: str | None,
            identity: dict[str, Any] | None, templates: tuple[int, ...]) -> None:
        """One request of ``account`` (its state already updated): index what is new and link."""
        if self._t0 is None or ts < self._t0:
            self._t0 = ts
        fresh = self._new_attrs(state, ip, user_agent, identity, templates)
        if fresh:
            self._link(account, state, fresh)

    def _new_attrs(self, state: AccountState, ip: str | None, user_agent: str | None,
                   identity: dict[str, Any] | None, templates: tuple[int, ...]) -> list[int]:
        candidates = []
        net = ip24(ip)
        if net:
            candidates.append(_attr("ip24", net))
        if user_agent:
            candidates.append(_attr("user_agent", user_agent[:200]))
        if identity:
            if identity.get("payment"):
                candidates.append(_attr("payment", identity["payment"]))
            pattern = email_pattern(identity.get("email"))
            if pattern:
                candidates.append(_attr("email_pattern", pattern))
            if identity.get("org"):
                candidates.append(_attr("org", str(identity["org"]).lower()))
            created = identity.get("created")
            if isinstance(created, (int, float)) and not isinstance(created, bool):
                candidates.append(_attr("created_burst", int(created // CREATED_BUCKET_S)))
        for key in templates:
            candidates.append(_attr("template", key))
        fresh = [a for a in candidates if a not in state.attrs]
        if fresh:
            # Bounded: a few network prefixes and the most recent recurring templates.
            kept = sorted(state.attrs | set(fresh), key=lambda a: _kind(a) == "template")
            state.attrs = frozenset(kept[-16:])
        return fresh

    def _link(self, account: str, state: AccountState, fresh: list[int]) -> None:
        """Index the account's new attributes and test it against every account sharing one.

        Each other account is tested once per call, whatever it shares. Every edge needs a strong
        kind, so a new weak attribute only brings in accounts that already share a strong one.
        """
        too_common = self._too_common
        candidates: set[str] = set()
        weak: list[int] = []
        for attr in fresh:
            if attr in too_common:             # shared too widely to link anything (an office, a popular SDK)
                continue
            members = self._by_attr.setdefault(attr, [])
            if account not in members:
                members.append(account)
            if len(members) > MAX_GROUP:
                too_common.add(attr)
                del self._by_attr[attr]
            elif _kind(attr) in STRONG:
                candidates.update(members)
            else:
                weak.append(attr)
        if weak:
            near: set[str] = set()
            for attr in state.attrs:
                if _kind(attr) in STRONG:
                    near.update(self._by_attr.get(attr, ()))
            for attr in weak:
                candidates.update(m for m in self._by_attr.get(attr, ()) if m in near)
        candidates.discard(account)
        hours = None
        for other in candidates:
            # Accounts already in one cluster are still tested for an infrastructure edge (which
            # links carried the cluster), unless infrastructure already ties them.
            linked = self._find(other) == self._find(account)
            if linked and _find(self._infra, other) == _find(self._infra, account):
                continue
            other_state = self.accounts.get(other)
            if other_state is None:
                continue
            shared = (state.attrs & other_state.attrs) - too_common
            kinds = {_kind(a) for a in shared}
            edge = None
            # No infrastructure edge rests on one shared attribute (see hydra.edge_evidence).
            if len(shared) >= 2 and _may_link(kinds):
                hours = hours if hours is not None else state_hours(state)
                edge = edge_evidence(kinds, hours, state_hours(other_state))
            if edge is not None:
                if linked:
                    _count(self._clusters[self._find(account)], edge[1])
                else:
                    self._union(account, other, edge[1])
                self._infra_union(account, other)
            elif not linked and "template" in kinds:
                # Shared structure with timing that ties the two to one controller (hydra.behaviour_evidence).
                span = (self._t0, state.v[S["last_t"]]) if self._t0 is not None else None
                edge = behaviour_evidence(_behaviour(account, state), _behaviour(other, other_state), span)
                if edge is not None:
                    self._union(account, other, edge[1])

    def _find(self, account: str) -> str:
        return _find(self._parent, account)

    def _infra_union(self, a: str, b: str) -> None:
        """Join ``a`` and ``b`` (already in one cluster) by an infrastructure edge; the cluster
        keeps the size of its largest such component."""
        ra, rb = _find(self._infra, a), _find(self._infra, b)
        if ra == rb:
            return
        size = self._infra_size.pop(ra, 1) + self._infra_size.pop(rb, 1)
        self._infra[rb] = ra
        self._infra.setdefault(ra, ra)
        self._infra_size[ra] = size
        cluster = self._clusters.get(self._find(a))
        if cluster is not None:
            cluster.infrastructure = max(cluster.infrastructure, size)

    def _union(self, a: str, b: str, kinds: list[str]) -> None:
        ra, rb = self._find(a), self._find(b)
        ca, cb = self._clusters.pop(ra, None), self._clusters.pop(rb, None)
        members_a = ca.members if ca else {a}
        members_b = cb.members if cb else {b}
        if len(members_a) < len(members_b):
            ra, rb, ca, cb, members_a, members_b = rb, ra, cb, ca, members_b, members_a
        self._parent[rb] = ra
        self._parent.setdefault(ra, ra)
        members = members_a | members_b
        cluster = ca or cb
        if cluster is None or len(members) < MIN_CLUSTER:
            cluster = cluster or _Cluster("", members)
        cluster.members = members
        if cb is not None and cb is not cluster:
            cluster.edges += cb.edges
            cluster.strong += cb.strong
            for k, c in cb.links.items():
                cluster.links[k] = cluster.links.get(k, 0) + c
            cluster.infrastructure = max(cluster.infrastructure, cb.infrastructure)
        _count(cluster, kinds)
        if not cluster.name and len(members) >= MIN_CLUSTER:
            self._cluster_seq += 1
            cluster.name = f"live-c{self._cluster_seq}"
        cluster.verdict, cluster.scored_at = None, 0.0    # new members: judge afresh
        self._clusters[ra] = cluster

    def cluster_of(self, account: str) -> _Cluster | None:
        if account not in self._parent:
            return None
        cluster = self._clusters.get(self._find(account))
        if cluster is None or len(cluster.members) < MIN_CLUSTER:
            return None
        return cluster

    def carried(self, account: str) -> str:
        """``infrastructure`` when infrastructure edges alone tie ``account`` to ``MIN_CLUSTER`` or
        more accounts, else ``behaviour`` (shared structure with timing ties it to its cluster)."""
        size = self._infra_size.get(_find(self._infra, account), 1)
        return "infrastructure" if size >= MIN_CLUSTER else "behaviour"

    @staticmethod
    def confidence(cluster: _Cluster) -> float:
        n = len(cluster.members)
        density = min(1.0, cluster.edges / max(1.0, n * (n - 1) / 2.0))
        mean_strong = cluster.strong / max(1, cluster.edges)
        return round(min(0.99, 1.0 - 0.5 ** (mean_strong + 2.0 * density)), 3)

    def all(self) -> list[_Cluster]:
        """Every cluster (components of ``MIN_CLUSTER`` or more accounts)."""
        return [c for c in self._clusters.values() if len(c.members) >= MIN_CLUSTER]


def _count(cluster: _Cluster, kinds: list[str]) -> None:
    """One more edge of ``kinds`` inside ``cluster`` (its link counts and attribution strength)."""
    cluster.edges += 1
    for k in kinds:
        cluster.links[k] = cluster.links.get(k, 0) + 1
    cluster.strong += (sum(1 for k in kinds if k in ("template", "payment", "ip24", "email_pattern"))
                       + (1 if any(k in TIMING for k in kinds) else 0))


def _find(parent: dict[str, str], account: str) -> str:
    """The root of ``account`` in the union-find ``parent`` (itself if it was never joined)."""
    root = account
    while parent.get(root, root) != root:
        root = parent[root]
    while parent.get(account, account) != root:     # path compression
        parent[account], account = root, parent[account]
    return root


def _may_link(kinds: set[str]) -> bool:
    """Could these kinds make an edge even with synchronised timing? (Cheap: skips the hours.)"""
    strong = sum(1 for k in kinds if k in STRONG)
    weight = sum(STRONG.get(k, 0.0) + WEAK.get(k, 0.0) for k in kinds)
    return strong >= 2 or (strong == 1 and weight + WEAK["sync"] >= EDGE_WEIGHT_ONE_STRONG)


def _behaviour(account: str, state: AccountState) -> AccountIdentity:
    """What the behavioural link reads of a live account: recent activity slots, first and last
    request, top capability area. Cached on the state until its next request (every field moves
    only with a request, and the query count with it): an account sharing a popular template is
    read once per request of its own, not once per account it is compared with."""
    v = state.v
    queries = v[_Q]
    cached = state.behaviour
    if cached is not None and cached[0] == queries:
        return cached[1]
    areas = v[_AREAS:_AREAS + N_AREAS]
    area = max(range(N_AREAS), key=areas.__getitem__) if any(areas) else None
    identity = AccountIdentity(account=account, slots=frozenset(int(x) for x in state.slots), first=v[S["first_t"]],
                               last=v[S["last_t"]], area=area)
    state.behaviour = (queries, identity)
    return identity


def state_hours(state: AccountState) -> frozenset[int]:
    """Hours of the day (UTC) in which the account has sent anything (the sync link)."""
    return frozenset(h for h in range(24) if state.v[_HOURS + h] > 0)
