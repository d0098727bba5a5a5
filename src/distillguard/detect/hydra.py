"""Hydra clustering: link accounts that share templates, infrastructure, payment or timing.

One campaign split over many small accounts looks mild account by account. Accounts are linked
when they share *several* kinds of evidence (one shared office IP or one popular SDK user agent
links nothing), the linked components become candidate actors, and each is then scored as one
account over the union of its members' traffic.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx

# Link kinds and their weight. An edge needs two strong kinds, or one strong kind with enough
# weak ones to reach EDGE_WEIGHT_ONE_STRONG: coincidences of one kind are common in organic traffic.
STRONG = {"template": 1.0, "payment": 1.0, "ip24": 1.0, "email_pattern": 1.0}
WEAK = {"user_agent": 0.5, "created_burst": 0.5, "org": 0.5, "sync": 0.5}
EDGE_WEIGHT_ONE_STRONG = 2.5
MAX_GROUP = 300          # attribute values shared by more accounts than this are too common to link
SYNC_JACCARD = 0.3       # active-hour overlap that counts as synchronised timing
CREATED_BUCKET_S = 6 * 3600
MIN_CLUSTER = 3
_DIGITS = re.compile(r"\d")
WEBMAIL = frozenset({"gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "proton.me",
                     "protonmail.com", "gmx.de", "qq.com", "163.com", "naver.com", "fastmail.com"})


@dataclass(frozen=True)
class AccountIdentity:
    """What links accounts: per-account attributes gathered from its events."""

    account: str
    ip24: tuple[str, ...] = ()
    payment: str | None = None
    email: str | None = None
    org: str | None = None
    user_agent: str | None = None
    created: float | None = None
    active_hours: frozenset[int] = frozenset()
    template_keys: tuple[int, ...] = ()


def email_pattern(email: str | None) -> str | None:
    """``dev48213@quickinbox.io`` -> ``dev#####@quickinbox.io``; None unless the local part is patterned."""
    if not email or "@" not in email:
        return None
    local, _, domain = email.lower().rpartition("@")
    digits = len(_DIGITS.findall(local))
    # name123@gmail.com is common; a numbered series at webmail needs more digits to mean anything.
    if digits < (4 if domain in WEBMAIL else 3):
        return None
    return _DIGITS.sub("#", local) + "@" + domain


def attributes(ident: AccountIdentity) -> Iterable[tuple[str, Any]]:
    for prefix in ident.ip24:
        yield "ip24", prefix
    if ident.payment:
        yield "payment", ident.payment
    pattern = email_pattern(ident.email)
    if pattern:
        yield "email_pattern", pattern
    if ident.org:
        yield "org", ident.org.lower()
    if ident.user_agent:
        yield "user_agent", ident.user_agent
    if ident.created is not None:
        yield "created_burst", int(ident.created // CREATED_BUCKET_S)
    for key in ident.template_keys:
        yield "template", key


def link_graph(identities: list[AccountIdentity]) -> nx.Graph:
    """Accounts as nodes; an edge where shared evidence weighs at least ``EDGE_WEIGHT``."""
    by_value: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        for attr in set(attributes(ident)):
            by_value[attr].append(i)
    shared: dict[tuple[int, int], set[str]] = defaultdict(set)
    for (kind, _), members in by_value.items():
        if 2 <= len(members) <= MAX_GROUP:
            for a, b in itertools.combinations(members, 2):
                shared[(a, b)].add(kind)
    graph = nx.Graph()
    for (a, b), kinds in shared.items():
        edge = edge_evidence(kinds, identities[a].active_hours, identities[b].active_hours)
        if edge is not None:
            graph.add_edge(identities[a].account, identities[b].account, weight=edge[0], kinds=edge[1])
    return graph


def edge_evidence(kinds: set[str], hours_a: frozenset[int], hours_b: frozenset[int]) -> tuple[float, list[str]] | None:
    """The link between two accounts sharing attribute ``kinds``: (weight, kinds) or None.

    The one edge rule, used by the batch scan and by the gateway's live clustering.
    """
    strong = sum(1 for k in kinds if k in STRONG)
    if strong == 0:
        return None
    weight = sum(STRONG.get(k, 0.0) + WEAK.get(k, 0.0) for k in kinds)
    if strong < 2 and weight + WEAK["sync"] < EDGE_WEIGHT_ONE_STRONG:
        return None
    if hours_a and hours_b and len(hours_a & hours_b) / len(hours_a | hours_b) >= SYNC_JACCARD:
        kinds = kinds | {"sync"}
        weight += WEAK["sync"]
    if strong >= 2 or weight >= EDGE_WEIGHT_ONE_STRONG:
        return weight, sorted(kinds)
    return None


@dataclass(frozen=True)
class Cluster:
    cluster: str
    accounts: tuple[str, ...]
    link_counts: dict[str, int]      # link kind -> edges carrying it
    density: float
    confidence: float                # attribution confidence that the members are one actor


def find_clusters(identities: list[AccountIdentity]) -> list[Cluster]:
    """Connected components of the link graph with at least ``MIN_CLUSTER`` accounts."""
    graph = link_graph(identities)
    clusters = []
    components = sorted((sorted(c) for c in nx.connected_components(graph) if len(c) >= MIN_CLUSTER),
                        key=lambda c: (-len(c), c[0]))
    for index, members in enumerate(components):
        sub = graph.subgraph(members)
        counts: dict[str, int] = defaultdict(int)
        strong_per_edge = []
        for _, _, data in sub.edges(data=True):
            for kind in data["kinds"]:
                counts[kind] += 1
            strong_per_edge.append(sum(1 for k in data["kinds"] if k in STRONG))
        density = nx.density(sub)
        # Confidence grows with how many independent strong links tie members together and how
        # densely: two strong kinds on every edge of a dense component is near-certain.
        mean_strong = sum(strong_per_edge) / max(1, len(strong_per_edge))
        confidence = round(min(0.99, 1.0 - 0.5 ** (mean_strong + 2.0 * density)), 3)
        clusters.append(Cluster(cluster=f"c{index + 1}", accounts=tuple(members), link_counts=dict(counts),
                                density=round(density, 3), confidence=confidence))
    return clusters
