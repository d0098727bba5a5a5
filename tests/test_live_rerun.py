"""The whole-pass re-run criterion live: the gateway's scorer counts sends per request (lazily,
bounded) and reaches the batch scan's ``evaluation`` status on the same traffic, no sooner."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.detect.baseline import load_default
from distillguard.detect.features import pass_share, prompt_space
from distillguard.detect.scoring import EVAL_MAX_ITEMS, judge, rerun
from distillguard.events.schema import prompt_view
from distillguard.gateway.fleet.observation import Observation as StreamObservation
from distillguard.gateway.fleet.observation import decode, encode, fold
from distillguard.gateway.online import BLOOM_BITS, AccountState, read_request
from distillguard.gateway.scorer import LiveScorer
from distillguard.gateway.sends import MAX_BEFORE_RESEND, SendCounts, request_key

from test_legit_criteria import _cot_items, _features
from test_value_rule import BASE, FPR


@pytest.fixture(scope="module")
def baseline():
    return load_default()


def _facts(prompts: list[str], temperature: float = 0.7):
    return [read_request(prompt_view({"model": "m", "messages": [{"role": "user", "content": p}],
                                      "temperature": temperature, "max_tokens": 1024}), 4096) for p in prompts]


def _times(n: int, seed: int = 3) -> np.ndarray:
    # As test_legit_criteria._features times the scan's copy of the same traffic.
    return BASE + np.cumsum(np.random.default_rng(seed).uniform(1.0, 3.0, size=n))


def _live(scorer: LiveScorer, account: str, prompts: list[str], seed: int = 3):
    """Send ``prompts`` through the live scorer (answers of 300-700 tokens, as the scan's copy);
    the last assessment and every status the account had."""
    facts = {p: f for p, f in zip(dict.fromkeys(prompts), _facts(list(dict.fromkeys(prompts))))}
    rng = np.random.default_rng(seed)
    completion = rng.integers(300, 700, size=len(prompts))
    statuses = []
    for p, ts, tokens in zip(prompts, _times(len(prompts), seed), completion):
        a = scorer.observe(account, facts[p], float(ts))
        scorer.add_output(account, int(tokens), a.repeat, prompt_chars=a.prompt_chars, probe=a.probe,
                          elicited=a.elicited)
        statuses.append(a.verdict.status)
    return a, statuses


def _exact_row(prompts: list[str]) -> dict[str, float]:
    counts = np.array(list({p: prompts.count(p) for p in dict.fromkeys(prompts)}.values()))
    distinct = float(len(counts))
    return {"distinct_prompts": distinct, "resent_share": 1.0 - distinct / len(prompts),
            "prompt_space": prompt_space(counts), "pass_share": pass_share(counts)}


def test_whole_pass_rerun_reaches_evaluation_live_as_the_scan_does(baseline):
    items = _cot_items(400)
    scorer = LiveScorer(baseline, FPR)
    first, statuses = _live(scorer, "harness", items)
    # One free-form chain-of-thought pass: flagged live as in the scan (no re-send, no counts kept).
    assert first.verdict.flagged and judge(_features(items, 0.7), baseline, FPR).flagged
    assert not scorer.accounts["harness"].sends.resent      # a log of digests, no table yet
    last, statuses = _live(scorer, "harness", items * 3)
    state = scorer.accounts["harness"]
    live = state.features()
    scan = _features(items * 4, 0.7)
    assert isinstance(state.sends, SendCounts) and state.sends.resent
    assert live["pass_share"] == scan["pass_share"] == 1.0
    assert live["prompt_space"] == scan["prompt_space"] == 400
    assert live["resent_share"] == pytest.approx(scan["resent_share"])
    assert judge(scan, baseline, FPR).status == "evaluation"
    assert last.verdict.status == "evaluation" and not last.verdict.flagged
    assert "whole passes" in last.verdict.reasons[0].detail
    # The second pass reads as one from about 80 % of its items on; from then on, through the
    # third and fourth passes in progress (items sent r - 1 or r times), never flagged again.
    first_eval = statuses.index("evaluation")
    assert 0.7 * 400 <= first_eval <= 400
    assert "flagged" not in statuses[first_eval:]
    assert judge(_features(items * 2 + items[:200], 0.7), baseline, FPR).status == "evaluation"


def test_a_resampler_that_is_not_whole_passes_stays_flagged_live(baseline):
    items = _cot_items(300)
    rng = np.random.default_rng(11)
    drawn = [items[i] for i in rng.integers(0, 300, size=900)]     # 1-8 samples an item, unequal
    scorer = LiveScorer(baseline, FPR)
    last, statuses = _live(scorer, "resampler", drawn)
    live = scorer.accounts["resampler"].features()
    assert live["pass_share"] < 0.6 and not rerun(live)
    assert last.verdict.flagged and "evaluation" not in statuses
    assert judge(_features(drawn, 0.7), baseline, FPR).flagged


def test_new_requests_beside_a_rerun_count_against_it(baseline):
    """Two passes then a harvest of new items: the scan's reading exactly."""
    items, more = _cot_items(300), _cot_items(700)[300:]
    prompts = items + items + more
    scorer = LiveScorer(baseline, FPR)
    last, _ = _live(scorer, "mixed", prompts)
    live = scorer.accounts["mixed"].features()
    exact = _exact_row(prompts)
    for name in exact:
        assert live[name] == pytest.approx(exact[name])
    assert not rerun(live) and last.verdict.flagged


def _random_facts(template, rng: np.random.Generator, n: int):
    return [dataclasses.replace(template, bloom_bits=tuple(int(b) for b in rng.integers(0, BLOOM_BITS, size=4)))
            for _ in range(n)]


def test_send_counts_are_bounded():
    template = _facts(["What is 2 + 2? Think step by step."])[0]
    rng = np.random.default_rng(4)
    # Never re-sent: a log of digests, 8 bytes each, dropped past MAX_BEFORE_RESEND (no bounded
    # benchmark re-run sends that many items before its first re-send).
    ordinary = AccountState()
    pool = _random_facts(template, rng, EVAL_MAX_ITEMS + 200)
    for i, f in enumerate(pool[:300]):
        ordinary.update(f, BASE + i)
    assert not ordinary.sends.resent and ordinary.memory_bytes() <= 8192 + 8 * 300
    for i, f in enumerate(pool[300:MAX_BEFORE_RESEND + 1]):
        ordinary.update(f, BASE + 300 + i)
    assert ordinary.sends is False and ordinary.memory_bytes() <= 8192
    ordinary.update(pool[0], BASE + 5000)      # a re-send after that: still unknown
    assert ordinary.sends is False and not rerun(ordinary.features())
    # Re-sends early, then more distinct requests than a benchmark holds: unknown, freed, and
    # never an exemption.
    big = AccountState()
    big.update(pool[0], BASE)
    big.update(pool[0], BASE + 1)
    assert big.sends.resent
    peak = 0
    for i, f in enumerate(pool[1:]):
        big.update(f, BASE + 2 + i)
        if i % 1000 == 0:
            peak = max(peak, big.memory_bytes())
    assert big.sends is False
    assert big.memory_bytes() <= 8192 and peak <= 400_000
    features = big.features()
    assert math.isnan(features["pass_share"]) and not rerun(features)
    # End users' states (an LRU of 20,000) keep no counts.
    assert AccountState(counts=False).sends is False


def test_a_crafted_bloom_hit_is_not_a_re_send():
    """As the attacker: a new request whose Bloom positions earlier requests already set (cheap
    to find once the filter fills) reads as 'seen' to the filter, but the counts are kept by
    digest: it is a new request sent once."""
    template = _facts(["What is 2 + 2? Think step by step."])[0]
    first = [dataclasses.replace(template, bloom_bits=(1, 2, 3, 4)),
             dataclasses.replace(template, bloom_bits=(5, 6, 7, 8))]
    crafted = dataclasses.replace(template, bloom_bits=(1, 6, 3, 8))
    state = AccountState()
    for i, f in enumerate(first):
        state.update(f, BASE + i)
    seen, _ = state.update(crafted, BASE + 2)
    assert seen                                  # the filter is fooled ...
    assert not state.sends.resent and state.sends.size == 3    # ... the counts are not
    state.update(first[0], BASE + 3)             # a true re-send
    assert state.sends.resent
    assert list(state.sends.histogram()[1:3]) == [2, 1]


def test_fold_counts_what_observe_counts(baseline):
    """Every replica folds every request's facts (the stream record carries the Bloom positions,
    the counts' key): a peer reads the same counts as the replica that served the requests."""
    items = _cot_items(200)
    prompts = items + items[:150] + _cot_items(260)[200:] + items
    facts = dict(zip(dict.fromkeys(prompts), _facts(list(dict.fromkeys(prompts)))))
    served, peer = LiveScorer(baseline, FPR), LiveScorer(baseline, FPR)
    for ts, p in zip(_times(len(prompts)), prompts):
        served.observe("acct", facts[p], float(ts))
        fold(peer, decode(encode(StreamObservation("q", "acct", float(ts), facts=facts[p]))))
    a, b = served.accounts["acct"].sends, peer.accounts["acct"].sends
    assert a.resent and b.resent and a.size == b.size == len(set(prompts))
    assert np.array_equal(a.histogram(), b.histogram())
    exact = _exact_row(prompts)
    assert served.accounts["acct"].features()["pass_share"] == exact["pass_share"]
    live, other = served.accounts["acct"].features(), peer.accounts["acct"].features()
    for name in ("distinct_prompts", "resent_share", "prompt_space", "pass_share"):
        assert live[name] == other[name]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(pool=st.integers(2, 250), order=st.lists(st.integers(0, 10_000), min_size=2, max_size=900))
def test_live_rerun_never_exempts_what_exact_counts_do_not(pool, order):
    """Whatever the order of sends over a pool of requests (re-sends, new requests after the
    first re-send, partial passes), the live reading is the exact counts' (the scan's)."""
    rng = np.random.default_rng(pool)
    template = _facts(["Solve: 3 + 4. Let's think step by step."])[0]
    facts = _random_facts(template, rng, pool)
    sent = [i % pool for i in order]
    state = AccountState()
    for t, i in enumerate(sent):
        state.update(facts[i], BASE + t)
    live = state.features()
    counts = np.bincount(sent)
    counts = counts[counts > 0]
    exact = {"distinct_prompts": float(len(counts)), "resent_share": 1.0 - len(counts) / len(sent),
             "prompt_space": prompt_space(counts), "pass_share": pass_share(counts)}
    if isinstance(state.sends, SendCounts) and state.sends.resent:
        for name in exact:
            assert live[name] == pytest.approx(exact[name])
    else:
        assert not rerun(live)
    if rerun(live):
        assert rerun(exact)


def test_digests_sharing_their_low_bits_do_not_make_one_probe_chain():
    """As the attacker: requests whose digests share their low bits (one Bloom position fixed)
    would all hash to one slot of a table indexed by those bits; the salted slot spreads them."""
    import time

    counts = SendCounts()
    keys = [request_key((7, b1, b2, 9), BLOOM_BITS) for b1 in range(100) for b2 in range(100)]
    counts.add(keys[0], False)
    counts.add(keys[0], True)                    # the first re-send: the table from here on
    t0 = time.perf_counter()
    for k in keys[1:]:
        assert counts.add(k, False)
    assert time.perf_counter() - t0 < 2.0        # one chain: ~50M probe steps, minutes
    assert counts.size == len(keys) and list(counts.histogram()[1:3]) == [len(keys) - 1, 1]
