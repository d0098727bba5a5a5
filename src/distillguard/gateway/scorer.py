"""The gateway's live risk: per-account online state and verdicts, for accounts and clusters.

``LiveScorer.observe`` is called once per request. It folds the request into the account's
bounded state (:mod:`distillguard.gateway.online`), links the account to others that share
infrastructure, identity or templates with timing (:mod:`distillguard.gateway.live_links`, the
batch scan's edge and behaviour rules), and returns the account's verdict and, when it belongs to
a cluster of ``MIN_CLUSTER`` or more, the cluster's verdict (the members' states merged and judged
as one actor).

A request that names its caller's end user (``safety_identifier``/``user``, as resellers and
platforms send) is folded into that end user's state too, as the batch scan scores busy end users
on their own. When the end user is flagged (or elevated) and its account is not, the request is
assessed as the end user's: the policy acts on that end user's requests only, with its own
throttle buckets. End-user states are an LRU of at most ``max_end_users``.

Verdicts are the batch scan's test (:func:`distillguard.detect.scoring.judge`) at the same
false-positive rate. A full verdict costs a few hundred microseconds, so it is recomputed on a
schedule: every query while harvest is significant and the account is young, then as traffic
grows (1% steps while harvesting, 10% otherwise). Harvest itself is checked on every query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from distillguard.detect.baseline import Baseline
from distillguard.detect.hydra import carried_by
from distillguard.detect.features import end_user_key, split_end_user_key
from distillguard.detect.scoring import HARVEST_ALPHA, MATERIAL_REQUESTS, Verdict, end_user_verdict, judge
from distillguard.detect.signals import HARVEST, SIGNALS
from distillguard.gateway.intel import FIRST_PROMPTS_CHECKED
from distillguard.gateway.assessment import INSUFFICIENT, Assessment, Observation  # noqa: F401 (re-exported)
from distillguard.gateway.live_links import LiveLinks
from distillguard.gateway.online import AccountState, RequestFacts, merged_features

_HARVEST_SIGNALS = tuple(s for s in SIGNALS if s.family == HARVEST)
YOUNG = 200     # queries during which a harvesting account is re-judged on every query
ELEVATED_FACTOR = 10.0
MAX_END_USERS = 20_000  # end-user states kept (LRU), under 8 KB each


class LiveScorer:
    def __init__(self, baseline: Baseline, fpr: float, *, allowlist: set[str] | None = None,
                 max_tokens_cap: int | None = None, max_end_users: int = MAX_END_USERS) -> None:
        self.baseline = baseline
        self.fpr = fpr
        self.allowlist = allowlist if allowlist is not None else set()
        self.max_tokens_cap = max_tokens_cap or baseline.max_tokens_cap
        self.accounts: dict[str, AccountState] = {}
        self.end_users: OrderedDict[str, AccountState] = OrderedDict()   # end_user_key -> state (LRU)
        self.max_end_users = max_end_users
        self._end_user_count: dict[str, int] = {}   # account -> end-user states it has in the LRU
        self.links = LiveLinks(self.accounts)      # hydra: accounts tied to one controller
        self.intel: Any = None      # gateway.intel.LiveIntel when peers' indicators are loaded
        self.lock = threading.Lock()

    # -- per request -----------------------------------------------------------------------
    def observe(self, observation: Observation | str, facts: RequestFacts | None = None, ts: float | None = None, *,
                ip: str | None = None, user_agent: str | None = None, identity: dict[str, Any] | None = None,
                prompt: str | None = None) -> Assessment:
        """Fold one request (see :class:`Observation`) into its account's state and assess it.

        The older form ``observe(account, facts, ts, ip=..., ...)`` builds the observation."""
        if not isinstance(observation, Observation):
            observation = Observation(observation, float(ts), facts, ip=ip, user_agent=user_agent, identity=identity,
                                      prompt=prompt)
        account, facts, ts = observation.account, observation.facts, observation.ts
        ip, prompt = observation.ip, observation.prompt
        with self.lock:
            state, repeat, new_templates = self._update_account(observation)
            verdict, elevated = self._account_verdict(account, state, account)
            end_user = eu_key = None
            eu_repeat = False
            if facts.end_user is not None:
                eu_key = end_user_key(account, facts.end_user)
                eu_state = self._end_user_state(account, eu_key)
                eu_repeat, _ = eu_state.update(facts, ts)
                # Judged only while the account has traffic besides this end user's (otherwise
                # the end user is the account, judged already).
                if eu_state.queries < state.queries and not verdict.flagged:
                    # Each of the account's k tracked end users at fpr / k, as in the scan.
                    k = self._end_user_count.get(account, 1)
                    eu_verdict, eu_elevated = self._account_verdict(eu_key, eu_state, account, self.fpr / k)
                    if eu_verdict.flagged or (eu_elevated and not elevated):
                        verdict = end_user_verdict(facts.end_user, eu_state.queries, state.queries, k, eu_verdict)
                        elevated, end_user = eu_elevated, facts.end_user
            cluster = self.links.cluster_of(account)
            cluster_verdict, cluster_queries = None, 0
            if cluster is not None:
                cluster_verdict, cluster_queries = self._cluster_verdict(cluster)
            intel = self.intel
            # An account's first prompts are checked too: an actor moving from a peer brings its
            # templates with its first request, before any template recurs here.
            check = new_templates or state.queries <= FIRST_PROMPTS_CHECKED
            evidence = None if intel is None else intel.observe(account, ip, prompt if check else None)
            return Assessment(account=account, queries=state.queries, verdict=verdict, elevated=elevated,
                              cluster=cluster.name if cluster else None,
                              cluster_size=len(cluster.members) if cluster else 0,
                              cluster_verdict=cluster_verdict,
                              cluster_confidence=self.links.confidence(cluster) if cluster else 0.0,
                              cluster_links=self.links.carried(account) if cluster else "infrastructure",
                              cluster_queries=cluster_queries, repeat=repeat,
                              rerun=verdict.flagged and end_user is None and state.rerun_in_progress(),
                              intel=evidence, end_user=end_user, end_user_key=eu_key, end_user_repeat=eu_repeat,
                              prompt_chars=facts.prompt_chars, probe=facts.probe, elicited=facts.elicited)

    def fold(self, observation: Observation) -> None:
        """Fold another replica's request into the state, without judging: the account's state,
        its hydra links, its end user's state and peers' IP indicators change as in
        :meth:`observe`, but no verdict is computed. Verdicts are read only where this replica
        decides on one of the account's own requests (:meth:`observe` re-judges when due, and the
        queries folded here count toward that) or shows the account (:meth:`judged`)."""
        account, facts, ts = observation.account, observation.facts, observation.ts
        with self.lock:
            self._update_account(observation)
            if facts.end_user is not None:
                self._end_user_state(account, end_user_key(account, facts.end_user)).update(facts, ts)
            if self.intel is not None and observation.ip:
                self.intel.observe(account, observation.ip, None)

    def _update_account(self, observation: Observation) -> tuple[AccountState, bool, tuple[int, ...]]:
        """Fold one request into its account's state and hydra links (the caller holds the lock):
        the state, whether the prompt was seen before, and the templates that just recurred."""
        account, ts = observation.account, observation.ts
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = AccountState()
        repeat, new_templates = state.update(observation.facts, ts)
        self.links.add(account, state, ts, observation.ip, observation.user_agent, observation.identity, new_templates)
        return state, repeat, new_templates

    def judged(self, account: str) -> AccountState | None:
        """The account's state with its verdict brought up to date (for the admin views: folded
        queries are not judged as they arrive)."""
        with self.lock:
            state = self.accounts.get(account)
            if state is not None:
                self._account_verdict(account, state, account)
            return state

    def _end_user_state(self, account: str, key: str) -> AccountState:
        """The end user's state, most recently used now; a new one may evict the least recent
        (``_end_user_count`` follows, it is each account's Bonferroni k)."""
        state = self.end_users.get(key)
        if state is not None:
            self.end_users.move_to_end(key)
            return state
        state = self.end_users[key] = AccountState(counts=False)   # no send counts: bounded memory for the LRU
        self._end_user_count[account] = self._end_user_count.get(account, 0) + 1
        if len(self.end_users) > self.max_end_users:
            owner = split_end_user_key(self.end_users.popitem(last=False)[0])[0]
            left = self._end_user_count[owner] - 1
            if left:
                self._end_user_count[owner] = left
            else:
                del self._end_user_count[owner]
        return state

    def add_output(self, account: str, completion_tokens: int, repeat: bool, *, end_user_key: str | None = None,
                   end_user_repeat: bool = False, prompt_chars: int | None = None, probe: bool = False,
                   elicited: bool = False, choices: int = 1) -> None:
        """An answered request's output tokens (``prompt_chars``, ``probe``, ``elicited``: from its
        assessment; ``choices``: answers in it, the request's ``n``)."""
        with self.lock:
            state = self.accounts.get(account)
            if state is not None:
                state.add_output(completion_tokens, repeat, prompt_chars, probe, elicited, choices)
            if end_user_key is not None:
                eu_state = self.end_users.get(end_user_key)
                if eu_state is not None:
                    eu_state.add_output(completion_tokens, end_user_repeat, prompt_chars, probe, elicited, choices)

    # -- verdicts --------------------------------------------------------------------------
    def _harvesting(self, features: dict[str, float]) -> bool:
        """Is the account near a harvest, so re-judged on (nearly) every query: its harvest p-value
        within ELEVATED_FACTOR of ``HARVEST_ALPHA``, or half the distinct requests that make a
        program's training set (``MATERIAL_REQUESTS``, see ``scoring.harvests``)?"""
        if features.get("distinct_prompts", 0.0) >= 0.5 * MATERIAL_REQUESTS:
            return True
        ps = [self.baseline.value_fits_[s.name].p_value(features[s.feature]) for s in _HARVEST_SIGNALS]
        return min(1.0, min(ps) * len(ps)) <= HARVEST_ALPHA * ELEVATED_FACTOR

    def _due(self, queries: float, scored_at: float, verdict: Verdict | None, harvesting: bool) -> bool:
        if verdict is None or verdict.status == "insufficient_data":
            return True
        if harvesting and not verdict.flagged:
            step = 1.0 if queries <= YOUNG else 0.01 * queries
        else:
            step = max(1.0, 0.1 * queries)
        return queries - scored_at >= step

    def _judge(self, features: dict[str, float], authorised: bool, fpr: float | None = None) -> tuple[Verdict, bool]:
        fpr = self.fpr if fpr is None else fpr
        verdict = judge(features, self.baseline, fpr, authorised=authorised)
        elevated = verdict.flagged or verdict.status == "authorised"
        if not elevated and verdict.family_p:
            loose = judge(features, self.baseline, fpr * ELEVATED_FACTOR, authorised=authorised) \
                if verdict.p_value <= fpr * ELEVATED_FACTOR else None
            elevated = loose is not None and loose.status in ("flagged", "authorised")
        return verdict, elevated

    def _account_verdict(self, name: str, state: AccountState, account: str,
                         fpr: float | None = None) -> tuple[Verdict, bool]:
        """The verdict of one state (an account's, or an end user's: ``name``); ``account`` is
        the billing account, whose allowlisting authorises it."""
        queries = state.queries
        if queries < self.baseline.min_queries:
            return INSUFFICIENT, False
        features = state.features()
        harvesting = self._harvesting(features)
        cached = state.verdict
        if self._due(queries, state.scored_at, cached, harvesting):
            verdict, elevated = self._judge(features, account in self.allowlist, fpr)
            state.verdict, state.elevated, state.scored_at = verdict, elevated, float(queries)
            return verdict, elevated
        return cached, state.elevated

    def _cluster_verdict(self, cluster: Any) -> tuple[Verdict, int]:
        """The cluster's verdict (its members judged as one actor) and its queries."""
        states = [self.accounts[m] for m in cluster.members if m in self.accounts]
        queries = sum(s.queries for s in states)
        total = float(queries)
        if total < self.baseline.min_queries:
            return INSUFFICIENT, queries
        features = None
        if cluster.verdict is not None and not cluster.verdict.flagged:
            features = merged_features(states)
            harvesting = self._harvesting(features)
        else:
            harvesting = False
        if self._due(total, cluster.scored_at, cluster.verdict, harvesting):
            features = features or merged_features(states)
            authorised = all(m in self.allowlist for m in cluster.members)
            cluster.verdict = judge(features, self.baseline, self.fpr, authorised=authorised)
            cluster.scored_at = total
        return cluster.verdict, queries

    # -- views for the admin API ------------------------------------------------------------
    def clusters(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for cluster in self.links.all():
                v = cluster.verdict
                out.append({"cluster": cluster.name, "accounts": sorted(cluster.members),
                            "confidence": self.links.confidence(cluster), "links": dict(cluster.links),
                            "carried_by": carried_by(cluster.links),
                            # the most members tied together by infrastructure alone: 3 or more of
                            # them are blocked at once, the others get the graduated ladder
                            "infrastructure_core": cluster.infrastructure,
                            "flagged": bool(v and v.flagged), "status": v.status if v else "unscored",
                            "score": round(v.score, 4) if v else 0.0,
                            "reasons": [r.to_dict() for r in v.reasons[:5]] if v else []})
            return sorted(out, key=lambda c: (-c["score"], c["cluster"]))

    def cluster_name(self, account: str) -> str | None:
        with self.lock:
            cluster = self.links.cluster_of(account)
            return cluster.name if cluster else None


