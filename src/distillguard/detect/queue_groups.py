"""Queue groups: a swarm that deals one queue of requests over many accounts, found as a group.

A load-balanced swarm sends one script's requests from one queue, each request dealt to one of
30-60 accounts. Pairwise, two of its members look like two independent campaigns that draw on
the same public prompt library at the same time: shared prompt structure, overlapping activity
windows, no shared slots (each sends a random share of the queue), so no pairwise link can tell
them apart (:func:`distillguard.detect.hydra.timing_links`). As a *group* they can be told
apart, because dealing one queue over many accounts leaves marks that independent campaigns do
not share:

* **one script**: the members' script profiles agree (Jaccard of their script keys, the MinHash
  band keys seen in two or more of an account's prompts, at least ``KEY_JACCARD`` with another
  member; two users of a broad public library share a few of its skeletons, not their profile);
* **one window**: activity windows overlap (window Jaccard at least ``WINDOW_JACCARD``);
* **exchangeable timing**: each member's requests are a random share of the group's, so its
  times follow the others' pooled distribution, both over the window and over the time of day
  (chi-square over equal-mass bins of the others' pooled times; a campaign on its own schedule
  or in its own time zone does not, and an account active in fewer than ``MIN_SAMPLES`` slots,
  a person's few sessions, cannot be shown to be one); and its requests per active slot are
  what a random share of the queue's load in those slots gives (a person's sessions put several
  requests in slots where the rest of the group is quiet);
* **evenly dealt**: the members' volumes are alike (variance-to-mean ratio at most
  ``DISPERSION_MAX``; a random deal gives about 1, independent campaigns split over their own
  accounts give hundreds), since the point of dealing is that no account stands out;
* **many members**: at least ``QUEUE_MIN`` (smaller groups are left to the pairwise links).

Members that fail a test are peeled off one round at a time and the rest re-tested; what remains
of a candidate component (accounts linked by the first two marks) is one group, and the
remainder is searched again for a second group. A group becomes a clique of ``queue`` links in
hydra's link graph, so it is scored as one actor like any cluster.

Batch only: the test needs each member's whole history against the group's. The gateway's live
links (:mod:`distillguard.gateway.live_links`) keep pairwise links; a load-balanced swarm is
acted on live only when a scan (or ``fleet``'s batch pass) reports the cluster.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, Sequence

import networkx as nx
import numpy as np
from scipy.special import chdtrc, ndtr

# What every function here reads: ``detect.hydra.AccountIdentity`` (hydra imports this module, so
# the type is only named, not imported: no import cycle).
AccountIdentity = Any

KEY_JACCARD = 0.2        # template-key Jaccard between two members of one script
WINDOW_JACCARD = 0.7     # activity-window Jaccard between two members of one queue
QUEUE_MIN = 8            # members of a group found this way
DISPERSION_MAX = 5.0     # variance / mean of the members' volumes
VOLUME_BAND = 3.0        # members more than this factor off the median volume are peeled
ALPHA = 0.01             # family-wise level of the exchangeability test (Bonferroni over members)
BINS = 6                 # equal-mass bins of the others' pooled times
MIN_SHARED = 3           # a key counts toward a script when at least this many accounts use it
MAX_SHARED = 300         # a key shared by more accounts than this is too common to mean one script
GROUP_KEY_SHARE = 0.1    # a group's own keys: used by at least this share of its members
ADMIT_SHARE = 0.25       # an account joins a group when this share of its shared keys are the group's
MIN_SAMPLES = 8          # a member active in fewer ten-minute slots fails the timing test (too little to say)
DAY_S = 86400.0
SLOT_S = 600              # hydra's activity slots (hydra.SLOT_S; a test checks they agree)


def _window_jaccard(a: AccountIdentity, b: AccountIdentity) -> float:
    lo, hi = max(a.first, b.first), min(a.last, b.last)
    union = max(a.last, b.last) - min(a.first, b.first)
    return max(0.0, hi - lo) / union if union > 0 else 1.0


def script_of(ident: AccountIdentity) -> frozenset[int]:
    """The account's script profile: its script keys (band keys in two or more of its prompts),
    or its recurring template keys where those were not gathered (the Spark engine)."""
    return frozenset(ident.script_keys or ident.template_keys)


def shared_scripts(identities: Sequence[AccountIdentity]) -> tuple[dict[int, set[int]], dict[int, list[int]]]:
    """Each account's shared script keys (by index) and each such key's accounts. Keys of one
    account's own phrasing (in fewer than ``MIN_SHARED`` accounts) say nothing of a script; keys in
    more than ``MAX_SHARED`` are everyone's."""
    by_key: dict[int, list[int]] = defaultdict(list)
    for i, ident in enumerate(identities):
        # an account active in fewer than MIN_SAMPLES slots fails the timing test: not a candidate
        if ident.first is not None and ident.last is not None and len(ident.slots) >= MIN_SAMPLES:
            for key in script_of(ident):
                by_key[key].append(i)
    shared = {key: members for key, members in by_key.items() if MIN_SHARED <= len(members) <= MAX_SHARED}
    scripts: dict[int, set[int]] = defaultdict(set)
    for key, members in shared.items():
        for m in members:
            scripts[m].add(key)
    return scripts, shared


def candidate_graph(identities: Sequence[AccountIdentity], scripts: dict[int, set[int]],
                    shared: dict[int, list[int]]) -> nx.Graph:
    """Accounts (by index) joined where they share a script's profile and a window."""
    pairs: set[tuple[int, int]] = set()
    for members in shared.values():
        pairs.update(itertools.combinations(members, 2))
    graph = nx.Graph()
    for x, y in pairs:
        ka, kb = scripts[x], scripts[y]
        if len(ka & kb) >= KEY_JACCARD * len(ka | kb) and _window_jaccard(identities[x], identities[y]) >= WINDOW_JACCARD:
            graph.add_edge(x, y)
    return graph


def _admit(identities: Sequence[AccountIdentity], core: list[int], scripts: dict[int, set[int]],
           shared: dict[int, list[int]], taken: set[int]) -> list[int]:
    """Accounts outside ``core`` that belong to it as a group, though no single member is close
    enough to link them (a small account shares few bands with any one member): most of the
    script keys it shares with anyone are the group's own (used by ``GROUP_KEY_SHARE`` of its
    members), its window is the group's, its volume is dealt alike and its timing is the group's."""
    counts: dict[int, int] = defaultdict(int)
    for m in core:
        for key in scripts[m]:
            counts[key] += 1
    group_keys = {k for k, c in counts.items() if c >= max(2, GROUP_KEY_SHARE * len(core))}
    first = min(identities[m].first for m in core)
    last = max(identities[m].last for m in core)
    median = float(np.median([max(1, identities[m].queries) for m in core]))
    inside = set(core)
    out = []
    for x in sorted({x for k in group_keys for x in shared[k]} - inside - taken):
        ident = identities[x]
        own = scripts[x]
        if len(own & group_keys) < ADMIT_SHARE * len(own):
            continue
        lo, hi = max(first, ident.first), min(last, ident.last)
        if max(0.0, hi - lo) < WINDOW_JACCARD * (max(last, ident.last) - min(first, ident.first)):
            continue
        if not median / VOLUME_BAND <= max(1, ident.queries) <= median * VOLUME_BAND:
            continue
        if exchangeability(identities, [*core, x], only=[x])[x] >= ALPHA / (len(core) + 1):
            out.append(x)
    return out


def _times(ident: AccountIdentity) -> np.ndarray:
    return (np.fromiter(ident.slots, dtype=float, count=len(ident.slots)) + 0.5) * SLOT_S


def _chi2_p(sample: np.ndarray, pool: np.ndarray, weights: np.ndarray) -> float:
    """p-value that ``sample`` follows the weighted ``pool``: chi-square over ``BINS`` bins of
    equal pooled mass (expected count per bin: len(sample) / BINS)."""
    order = np.argsort(pool, kind="stable")
    cdf = np.cumsum(weights[order])
    cdf /= cdf[-1]
    edges = np.interp(np.arange(1, BINS) / BINS, cdf, pool[order])
    counts = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=BINS)
    expected = len(sample) / BINS
    return float(chdtrc(BINS - 1, float(((counts - expected) ** 2).sum()) / expected))


def exchangeability(identities: Sequence[AccountIdentity], members: Sequence[int],
                    only: Sequence[int] | None = None) -> dict[int, float]:
    """Each member's p-value that its times are a random share of the others' (each other
    member weighted equally, so one busy account does not set the group's profile); the smaller
    of the window and time-of-day tests, Bonferroni-corrected for the two, and of the thinning
    test (:func:`_thin_p`). ``only``: test just these members (against all the others)."""
    times = {m: _times(identities[m]) for m in members}
    tested = [m for m in members if len(times[m]) >= MIN_SAMPLES]
    # An account active in too few slots cannot be shown to be a share of the queue (and a few
    # sessions of a person's are what that looks like): it fails.
    out = {m: 0.0 for m in (members if only is None else only)}
    if len(tested) < 3:
        return out
    pool = np.concatenate([times[m] for m in tested])
    weights = np.concatenate([np.full(len(times[m]), 1.0 / len(times[m])) for m in tested])
    owner = np.concatenate([np.full(len(times[m]), i) for i, m in enumerate(tested)])
    # The queue's requests per slot, estimated from every member's slots and requests per slot.
    queries = np.array([max(identities[m].queries, len(times[m])) for m in tested], dtype=float)
    per_slot = queries / np.array([len(times[m]) for m in tested], dtype=float)
    slots, load = np.unique(pool, return_inverse=True)
    load = np.bincount(load, weights=per_slot[owner])
    for i, m in enumerate(tested):
        if m not in out:
            continue
        keep = owner != i
        others, w = pool[keep], weights[keep]
        p_window = _chi2_p(times[m], others, w)
        p_day = _chi2_p(times[m] % DAY_S, others % DAY_S, w)
        others_load = load[np.searchsorted(slots, times[m])] - per_slot[i]
        p_thin = _thin_p(queries[i], queries.sum() - queries[i], np.maximum(others_load, 0.0))
        out[m] = min(1.0, 2.0 * min(p_window, p_day), p_thin)
    return out


def _thin_p(own: float, others: float, others_load: np.ndarray) -> float:
    """p-value that an account's requests per active slot are what a random share of the queue
    gives: where the queue sends ``load`` requests in a slot, a share ``p`` of it puts
    Poisson(p * load) there, and given that it is active, a zero-truncated count. A person's
    sessions (several requests in a slot where the queue is otherwise quiet) are far above it."""
    share = own / (own + others)
    mu = share / (1.0 - share) * others_load
    tiny = mu < 1e-9
    safe = np.where(tiny, 1.0, mu)
    mean = np.where(tiny, 1.0, safe / -np.expm1(-safe))
    var = np.where(tiny, 0.0, mean * (1.0 + safe - mean))
    z = (own - float(mean.sum())) / np.sqrt(float(var.sum()) + 1.0)
    return float(ndtr(-z))


def _peel(identities: Sequence[AccountIdentity], members: list[int]) -> list[int]:
    """Drop volume outliers and members whose timing is not the group's, until none is dropped."""
    alive = list(members)
    for _ in range(10):
        if len(alive) < QUEUE_MIN:
            return alive
        volumes = np.array([max(1, identities[m].queries) for m in alive], dtype=float)
        median = float(np.median(volumes))
        keep = [m for m, v in zip(alive, volumes) if median / VOLUME_BAND <= v <= median * VOLUME_BAND]
        if len(keep) < QUEUE_MIN:
            return keep
        p = exchangeability(identities, keep)
        level = ALPHA / len(keep)
        keep = [m for m in keep if p[m] >= level]
        if keep == alive:
            return alive
        alive = keep
    return alive


def evenly_dealt(identities: Sequence[AccountIdentity], members: Sequence[int]) -> bool:
    volumes = np.array([identities[m].queries for m in members], dtype=float)
    mean = float(volumes.mean()) if len(volumes) else 0.0
    return mean > 0 and float(volumes.var()) / mean <= DISPERSION_MAX


def queue_groups(identities: Sequence[AccountIdentity]) -> list[list[int]]:
    """Groups of account indices that pass every test (see the module docstring)."""
    groups: list[list[int]] = []
    scripts, shared = shared_scripts(identities)
    graph = candidate_graph(identities, scripts, shared)
    todo = [sorted(c) for c in nx.connected_components(graph) if len(c) >= QUEUE_MIN]
    taken: set[int] = set()
    while todo:
        component = [m for m in todo.pop() if m not in taken]
        core = _peel(identities, component)
        if len(core) < QUEUE_MIN:
            continue
        taken.update(core)
        if evenly_dealt(identities, core):
            core = sorted(core + _admit(identities, core, scripts, shared, taken))
            taken.update(core)
            groups.append(core)
        # what is left is searched again, in the pieces that still hang together
        rest = graph.subgraph(m for m in component if m not in taken)
        todo.extend(sorted(c) for c in nx.connected_components(rest) if len(c) >= QUEUE_MIN)
    return sorted(groups)
