"""Hydra clusters in the gateway's policy: which links carried a cluster decides its ladder.

A cluster tied by shared infrastructure is blocked at once; one carried by behaviour alone (the
same prompt structure with synchronised timing: also what independent customers running one
public benchmark at the same time look like) is limited as one actor first and blocked only once
its flag persists (issue 14: no legitimate family blocked on its first pass).
"""

from __future__ import annotations

import itertools

import pytest

from distillguard.detect.baseline import load_default
from distillguard.detect.scoring import Verdict
from distillguard.errors import BadInputError
from distillguard.events.schema import prompt_view
from distillguard.gateway.assessment import Assessment
from distillguard.gateway.config import load_config
from distillguard.gateway.online import read_request
from distillguard.gateway.policy import DEFAULT_RULES, Policy, PolicyConfig
from distillguard.gateway.scorer import LiveScorer, Observation

BASE = 1.79e9
FAMILY = {"harvest": 1e-6, "coverage": 1e-3, "elicitation": 1e-5, "automation": 1e-3}
DAY = 86_400.0


def _member(account: str, links: str, cluster_queries: int, *, flagged: bool = False, queries: int = 30) -> Assessment:
    own = Verdict(p_value=1e-9 if flagged else 0.5, flagged=flagged, status="flagged" if flagged else "clear",
                  family_p=FAMILY, reasons=())
    cluster = Verdict(p_value=1e-8, flagged=True, status="flagged", family_p=FAMILY, reasons=())
    return Assessment(account=account, queries=queries, verdict=own, elevated=flagged, cluster="live-c1",
                      cluster_size=3, cluster_verdict=cluster, cluster_confidence=0.8, cluster_links=links,
                      cluster_queries=cluster_queries)


def test_a_cluster_tied_by_infrastructure_is_blocked_at_once():
    d = Policy(PolicyConfig()).decide(_member("m0", "infrastructure", 60), now=0.0)
    assert d.action == "block" and d.rule == "cluster_flagged" and d.codes == ["cluster_flagged"]
    assert "tied by shared infrastructure" in d.explanation


def test_a_behaviour_cluster_is_limited_as_one_actor_then_blocked_once_its_flag_persists():
    policy = Policy(PolicyConfig())
    # Its first flagged requests: limited, shaped, watermarked, not blocked; one request bucket for
    # the whole cluster (10 a minute), whichever member sends.
    actions = []
    for i in range(15):
        d = policy.decide(_member(f"m{i % 3}", "behaviour", 100 + i), now=1000.0)
        actions.append(d.action)
        assert d.rule == "cluster_limited" and d.codes[0] == "cluster_flagged" and d.cohort == "watch"
        assert d.max_tokens == 512 and d.strip_logprobs and d.shape == "antidistillation"
        assert "no shared infrastructure" in d.explanation and "rather than blocked" in d.explanation
        assert "1,000 more of the cluster's queries" in d.explanation
    assert actions == ["modify"] * 10 + ["throttle"] * 5          # the members share the bucket
    assert "rate_limit_cluster_requests" in d.codes
    # m2's first request under the flag was at 102 of the cluster's queries: a long sitting within
    # a day is not blocked, nor are days of fewer than 1,000 more queries (counted over all members).
    assert policy.decide(_member("m1", "behaviour", 9000), now=1000.0 + 23 * 3600).action != "block"
    assert policy.decide(_member("m2", "behaviour", 1101), now=1000.0 + 3 * DAY).action != "block"
    d = policy.decide(_member("m2", "behaviour", 1103), now=1000.0 + 3 * DAY + 1)
    assert d.action == "block" and d.rule == "cluster_persistent" and d.codes == ["cluster_flagged"]
    assert "persisted past a day and 1,000 more of the cluster's queries" in d.explanation
    # An account that joins the cluster days after its flag is limited from its first request
    # (the cluster's bucket) and counts its own day from there: not blocked on arrival.
    d = policy.decide(_member("m9", "behaviour", 1104, queries=1), now=1000.0 + 3 * DAY + 2)
    assert d.rule == "cluster_limited" and d.action in ("modify", "throttle")
    assert policy.decide(_member("m9", "behaviour", 2105), now=1000.0 + 4 * DAY + 3).action == "block"


def test_a_member_flagged_on_its_own_traffic_gets_the_single_account_ladder_first():
    policy = Policy(PolicyConfig())
    d = policy.decide(_member("m0", "behaviour", 200, flagged=True), now=0.0)
    assert d.rule == "flagged_elicitation" and d.shape == "summary" and d.action == "modify"


def test_cluster_links_in_the_config(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[[policy.rules]]\nwhen = "cluster_flagged"\nactions = ["block"]\nlinks = "behaviour"\n')
    [rule] = load_config(path, upstream="http://127.0.0.1:1").policy.rules
    assert rule.links == "behaviour"
    policy = Policy(PolicyConfig(rules=(rule,)))
    assert policy.decide(_member("m0", "behaviour", 60), now=0.0).action == "block"
    assert policy.decide(_member("m0", "infrastructure", 60), now=0.0).action == "allow"
    assert [r.links for r in DEFAULT_RULES if r.when == "cluster_flagged"] == ["infrastructure", "behaviour",
                                                                               "behaviour"]
    for bad, match in (('when = "cluster_flagged"\nactions = ["block"]\nlinks = "dna"', "expected one of"),
                       ('when = "flagged"\nactions = ["block"]\nlinks = "behaviour"', "cluster_flagged rules only")):
        path.write_text(f"[[policy.rules]]\n{bad}\n")
        with pytest.raises(BadInputError, match=match) as info:
            load_config(path, upstream="http://127.0.0.1:1")
        assert info.value.field == "policy.rules[0].links"


LANGS = ("Python", "Rust", "Go", "TypeScript", "Java", "C++", "Kotlin", "Haskell")
TASKS = ("checks whether a string is a palindrome", "merges two sorted linked lists",
         "parses an ISO 8601 timestamp without libraries", "validates an IBAN checksum",
         "converts Roman numerals to integers", "counts word frequencies in a large file",
         "finds every prime below n with a sieve", "reverses the words of a sentence in place")


def _swarm(scorer: LiveScorer, waves: range, identity=lambda m: ({"email": f"p{m}@host{m}.example"},
                                                                 f"203.0.{m}.{10 + m}")) -> dict[str, Assessment]:
    """Five accounts, each with its own network, agent and identity, fed in hourly waves with one
    prompt skeleton (linked by behaviour alone); each account's last assessment."""
    combos = itertools.cycle(itertools.product(LANGS, TASKS))
    last = {}
    for wave in waves:
        for m in range(5):
            lang, task = next(combos)
            body = {"model": "m", "messages": [{"role": "user", "content": (
                f"You are an expert software engineer on our team. Write a {lang} function that {task}. Return "
                f"only the code, with no prose and no explanation, in a single fenced block.")}]}
            ident, ip = identity(m)
            last[f"swarm-{m}"] = scorer.observe(Observation(
                f"swarm-{m}", BASE + wave * 3600.0 + m * 7.0, read_request(prompt_view(body), 4096), ip=ip,
                user_agent=f"client/{m}", identity=ident))
    return last


@pytest.mark.parametrize("sharing", [2, 3])
def test_live_clusters_say_which_links_tie_each_member(sharing):
    """Linked by behaviour alone, a swarm's members read as ``behaviour``; once members already in
    the cluster also share a card and a network, those members read as ``infrastructure`` when it
    ties three or more of them, still ``behaviour`` when it ties only two; the members it does not
    tie stay ``behaviour`` (an account joined by behaviour to a cluster whose core shares a card
    is not that core)."""
    scorer = LiveScorer(load_default(), 1e-3)
    last = _swarm(scorer, range(12))
    a = last["swarm-4"]
    assert a.cluster is not None and a.cluster_size == 5
    assert a.cluster_queries == 60 and {b.cluster_links for b in last.values()} == {"behaviour"}
    [view] = scorer.clusters()
    assert view["infrastructure_core"] == 1

    def shared_card(m):
        if m < sharing:
            return {"email": f"p{m}@host{m}.example", "payment": "card-4242"}, f"198.51.100.{m + 1}"
        return {"email": f"p{m}@host{m}.example"}, f"203.0.{m}.{10 + m}"

    last = _swarm(scorer, range(12, 14), shared_card)
    assert last["swarm-4"].cluster_size == 5 and last["swarm-4"].cluster_queries == 70
    tied = "infrastructure" if sharing >= 3 else "behaviour"
    assert [last[f"swarm-{m}"].cluster_links for m in range(5)] == [tied] * sharing + ["behaviour"] * (5 - sharing)
    [view] = scorer.clusters()
    assert view["infrastructure_core"] == sharing and view["links"].get("payment") == sharing - 1
