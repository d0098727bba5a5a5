"""Hydra clustering: link accounts that share templates, infrastructure, payment or timing.

One campaign split over many small accounts looks mild account by account. Accounts are linked
when they share *several* kinds of evidence (one shared office IP or one popular SDK user agent
links nothing), the linked components become candidate actors, and each is then scored as one
account over the union of its members' traffic.

Two families of links:

* **infrastructure and identity**: payment, network, e-mail series, organisation, user agent,
  creation burst (the original rule: two strong kinds, or one with enough weak ones);
* **behaviour**: what accounts send and when, for swarms that share no infrastructure. A shared
  prompt structure (a recurring template skeleton) is content overlap, and content from a public
  prompt library is shared by many unrelated accounts, so it never links on its own; it links
  together with *timing* that ties the two accounts to one controller: synchronised activity
  (the same ten-minute slots, in accounts that are not busy all the time), one activity window
  (first and last requests within ``WINDOW_S`` of each other) or a hand-off (one account starts
  within ``WINDOW_S`` of the other's last request, as rotated accounts do). A shared target (the
  same capability area) adds to such a link. Campaigns drawing on one library at different
  times therefore stay apart; a swarm is linked by structure and timing together.
* **queue groups** (batch only): a load-balanced swarm, one queue dealt over many accounts, has
  no pair of members that the rules above can tell from two library users; it is found as a
  group (:mod:`distillguard.detect.queue_groups`) and linked by ``queue`` links.

Attribution confidence grows with how many independent kinds tie members together and how
densely; each cluster also says which family of links carried it (``carried_by``).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import networkx as nx

from distillguard.detect.queue_groups import QUEUE_MIN, queue_groups

# Link kinds and their weight. An edge needs two strong kinds, or one strong kind with enough
# weak ones to reach EDGE_WEIGHT_ONE_STRONG: coincidences of one kind are common in organic traffic.
STRONG = {"template": 1.0, "payment": 1.0, "ip24": 1.0, "email_pattern": 1.0}
WEAK = {"user_agent": 0.5, "created_burst": 0.5, "org": 0.5, "sync": 0.5}
EDGE_WEIGHT_ONE_STRONG = 2.5
MAX_GROUP = 300          # attribute values shared by more accounts than this are too common to link
SYNC_JACCARD = 0.3       # active-hour overlap that counts as synchronised timing
CREATED_BUCKET_S = 6 * 3600
MIN_CLUSTER = 3
# Behavioural links (see the module docstring).
SLOT_S = 600                 # activity slots of ten minutes
COACTIVE_JACCARD = 0.3       # shared slots / slots of either: synchronised activity
SPARSE_SHARE = 0.5           # ... counted only for accounts active in at most this share of their span's slots
WINDOW_S = 1800              # first/last requests this close: one window, or a hand-off
TIMING = ("co_active", "same_window", "handoff")
INFRASTRUCTURE = ("payment", "ip24", "email_pattern", "org", "user_agent", "created_burst")
QUEUE = "queue"              # a group dealt from one queue (batch only; see queue_groups)
BEHAVIOUR_WEIGHT = 2.5       # structure + timing: as strong as the infrastructure rule's edge
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
    slots: frozenset[int] = frozenset()   # ten-minute activity slots (epoch // SLOT_S)
    first: float | None = None            # first and last request (epoch seconds)
    last: float | None = None
    area: int | None = None               # top capability area (the shared-target link)
    queries: int = 0                      # requests sent (a queue group's members are dealt alike)
    script_keys: tuple[int, ...] = ()     # band keys in 2+ of its prompts (the queue-group test)


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
    """Accounts as nodes; an edge where shared evidence weighs at least ``EDGE_WEIGHT``, or where
    shared structure comes with timing that ties the accounts together (``behaviour_evidence``)."""
    by_value: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        for attr in set(attributes(ident)):
            by_value[attr].append(i)
    shared: dict[tuple[int, int], set[str]] = defaultdict(set)
    for (kind, _), members in by_value.items():
        if 2 <= len(members) <= MAX_GROUP:
            for a, b in itertools.combinations(members, 2):
                shared[(a, b)].add(kind)
    times = [t for ident in identities for t in (ident.first, ident.last) if t is not None]
    span = (min(times), max(times)) if times else None
    graph = nx.Graph()
    for (a, b), kinds in shared.items():
        ia, ib = identities[a], identities[b]
        edge = edge_evidence(kinds, ia.active_hours, ib.active_hours)
        if edge is None and "template" in kinds:
            edge = behaviour_evidence(ia, ib, span)
        if edge is not None:
            graph.add_edge(ia.account, ib.account, weight=edge[0], kinds=edge[1])
    groups = queue_groups(identities)
    if groups:
        # Pairwise synchronised timing (ten-minute slots) is finer than the group test: a group
        # that holds a few members of another pairwise cluster does not take them (nor the rest of
        # that cluster with them); one that holds most of a cluster takes it (a fragment of its own).
        components = [c for c in nx.connected_components(graph) if len(c) >= MIN_CLUSTER]
        cluster_of = {a: i for i, c in enumerate(components) for a in c}
        # Infrastructure draws operators' boundaries: a candidate group whose members fall into two
        # or more infrastructure teams (a shared card, network, e-mail series ...) is that many
        # operators on one public script, not one queue; the group test links only accounts that
        # infrastructure leaves unassigned.
        infra = nx.Graph((a, b) for a, b, data in graph.edges(data=True)
                         if any(k in INFRASTRUCTURE for k in data["kinds"]))
        team_of = {a: i for i, c in enumerate(nx.connected_components(infra)) for a in c}
        for group in groups:
            members = [identities[i] for i in group]
            if len({team_of[m.account] for m in members if m.account in team_of}) > 1:
                members = [m for m in members if m.account not in team_of]
                if len(members) < QUEUE_MIN:
                    continue
            seen = Counter(cluster_of[m.account] for m in members if m.account in cluster_of)
            if len(seen) > 1:
                main = seen.most_common(1)[0][0]
                members = [m for m in members if m.account not in cluster_of or cluster_of[m.account] == main
                           or seen[cluster_of[m.account]] >= 0.5 * len(components[cluster_of[m.account]])]
            _add_queue_links(graph, members)
    return graph


def _add_queue_links(graph: nx.Graph, members: list[AccountIdentity]) -> None:
    """A queue group (:mod:`distillguard.detect.queue_groups`) as a clique of ``queue`` links:
    one script and one queue dealt over its members (structure and timing, judged as a group)."""
    for a, b in itertools.combinations(members, 2):
        kinds = {"template", QUEUE}
        if a.area is not None and a.area == b.area:
            kinds.add("target")
        if graph.has_edge(a.account, b.account):
            data = graph.edges[a.account, b.account]
            data["kinds"] = sorted(set(data["kinds"]) | kinds)
        else:
            graph.add_edge(a.account, b.account, weight=BEHAVIOUR_WEIGHT + 0.5 * (len(kinds) - 2), kinds=sorted(kinds))


def _sparse(ident: AccountIdentity) -> bool:
    """Active in few of its span's slots: its co-activity with another account means something
    (a queue worker busy in every slot of the working day shares slots with every other one)."""
    if not ident.slots or ident.first is None or ident.last is None:
        return False
    span_slots = max(1.0, (ident.last - ident.first) / SLOT_S + 1.0)
    return len(ident.slots) <= SPARSE_SHARE * span_slots


def timing_links(a: AccountIdentity, b: AccountIdentity, span: tuple[float, float] | None = None) -> list[str]:
    """The timing links between two accounts (see ``TIMING``). ``span``: the first and last request
    of the whole log; a window that is the log's own (both accounts active from its start to its
    end, as long-running services are) is not one controller's window."""
    kinds = []
    if a.slots and b.slots and _sparse(a) and _sparse(b):
        inter = len(a.slots & b.slots)
        if inter and inter / len(a.slots | b.slots) >= COACTIVE_JACCARD:
            kinds.append("co_active")
    if None not in (a.first, a.last, b.first, b.last):
        whole_log = span is not None and max(a.first, b.first) <= span[0] + WINDOW_S \
            and min(a.last, b.last) >= span[1] - WINDOW_S
        if abs(a.first - b.first) <= WINDOW_S and abs(a.last - b.last) <= WINDOW_S and not whole_log:
            kinds.append("same_window")
        elif 0 <= b.first - a.last <= WINDOW_S or 0 <= a.first - b.last <= WINDOW_S:
            kinds.append("handoff")
    return kinds


def behaviour_evidence(a: AccountIdentity, b: AccountIdentity,
                       span: tuple[float, float] | None = None) -> tuple[float, list[str]] | None:
    """The behavioural link between two accounts that share a template skeleton: (weight, kinds)
    when timing ties them together too, else None (shared content alone is a public library)."""
    timing = timing_links(a, b, span)
    if not timing:
        return None
    kinds = {"template", *timing}
    if a.area is not None and a.area == b.area:
        kinds.add("target")
    return BEHAVIOUR_WEIGHT + 0.5 * (len(kinds) - 2), sorted(kinds)


def carried_by(counts: dict[str, int]) -> str:
    """Which family of links carried a cluster: infrastructure, behaviour, or both."""
    infrastructure = any(counts.get(k) for k in INFRASTRUCTURE)
    behaviour = any(counts.get(k) for k in (*TIMING, QUEUE))
    if infrastructure and behaviour:
        return "infrastructure and behaviour"
    return "behaviour (shared prompt structure with synchronised timing)" if behaviour else "infrastructure"


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
    carried_by: str = "infrastructure"   # which family of links carried it (see ``carried_by``)


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
            # Structure with timing counts as two independent kinds (what and when).
            strong_per_edge.append(sum(1 for k in data["kinds"] if k in STRONG)
                                   + (1 if any(k in TIMING or k == QUEUE for k in data["kinds"]) else 0))
        density = nx.density(sub)
        # Confidence grows with how many independent strong links tie members together and how
        # densely: two strong kinds on every edge of a dense component is near-certain.
        mean_strong = sum(strong_per_edge) / max(1, len(strong_per_edge))
        confidence = round(min(0.99, 1.0 - 0.5 ** (mean_strong + 2.0 * density)), 3)
        clusters.append(Cluster(cluster=f"c{index + 1}", accounts=tuple(members), link_counts=dict(counts),
                                density=round(density, 3), confidence=confidence, carried_by=carried_by(counts)))
    return clusters
