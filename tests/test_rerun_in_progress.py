"""A re-run in progress, live: a second pass over a benchmark's items reads as a re-run from its
first re-send (the scan's whole-pass criterion sees it only from ~80 % of the pass), and the
persistent flag's block waits while it holds; re-sampling at random, new requests between
re-sends, or an item re-sent twice do not read so (issue 14: no harness blocked mid-pass, no
extractor exempted by re-sending a few prompts)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.detect.baseline import load_default
from distillguard.detect.scoring import Verdict
from distillguard.gateway.assessment import Assessment
from distillguard.gateway.policy import Policy, PolicyConfig
from distillguard.gateway.scorer import LiveScorer
from distillguard.gateway.sends import SendCounts

from test_legit_criteria import _cot_items
from test_live_rerun import _facts, _times
from test_value_rule import FPR

DAY = 86_400.0


@pytest.fixture(scope="module")
def baseline():
    return load_default()


def _send(scorer: LiveScorer, account: str, prompts: list[str], facts: dict, start: int = 0) -> list[Assessment]:
    out = []
    times = _times(start + len(prompts))[start:]
    for p, ts in zip(prompts, times):
        a = scorer.observe(account, facts[p], float(ts))
        scorer.add_output(account, 500, a.repeat, prompt_chars=a.prompt_chars, probe=a.probe, elicited=a.elicited)
        out.append(a)
    return out


def test_a_second_pass_reads_as_a_rerun_from_its_first_re_send(baseline):
    items = _cot_items(300)
    facts = dict(zip(items, _facts(items)))
    scorer = LiveScorer(baseline, FPR)
    first = _send(scorer, "harness", items, facts)
    assert first[-1].verdict.flagged and not any(a.rerun for a in first)
    second = _send(scorer, "harness", items, facts, start=300)
    flagged = [a for a in second if a.verdict.flagged]
    # Flagged through most of the second pass (the scan's criterion needs ~80 % of it) ...
    assert len(flagged) >= 150
    # ... and read as a re-run in progress on every one of those requests.
    assert all(a.rerun for a in flagged)
    assert scorer.accounts["harness"].sends.rerun_in_progress()
    # A new request ends it; re-sending the earlier items again does not bring it back.
    new = _cot_items(301)[300]
    facts[new] = _facts([new])[0]
    after = _send(scorer, "harness", [new] + items[:50], facts, start=600)
    assert not any(a.rerun for a in after)


def test_re_sampling_and_a_few_re_sends_do_not_read_as_a_rerun(baseline):
    items = _cot_items(300)
    facts = dict(zip(items, _facts(items)))
    # A re-sampler drawing items at random, after a first pass.
    rng = np.random.default_rng(5)
    scorer = LiveScorer(baseline, FPR)
    _send(scorer, "resampler", items, facts)
    drawn = [items[i] for i in rng.integers(0, 300, size=600)]
    resampled = _send(scorer, "resampler", drawn, facts, start=300)
    # It reads as a pass in progress only until an item comes up a second time (a birthday
    # collision: after about sqrt(300) draws), and never again.
    twice = next(k for k in range(len(drawn)) if drawn[k] in drawn[:k])
    flagged = [a.verdict.flagged for a in resampled]
    assert all(flagged[:twice]) and [a.rerun for a in resampled] == [True] * twice + [False] * (600 - twice)
    assert twice < 100
    # An extractor re-sending one earlier prompt after every nine new ones: at most its first
    # re-send reads so (a re-send of an old prompt; the next new one ends it).
    scorer = LiveScorer(baseline, FPR)
    more = _cot_items(900)
    facts = dict(zip(more, _facts(more)))
    mixed = [p for k in range(90) for p in more[9 * k:9 * k + 9] + [more[k]]]
    assert sum(a.rerun for a in _send(scorer, "mixed", mixed, facts)) <= 1


def _brute(sent: list[int]) -> bool:
    """The definition from the whole sequence: the requests since the last new one are re-sends
    (at least one), every item is at c or c + 1 sends, and there are at least as many of those
    re-sends as items at c + 1 (c + 1 >= 2)."""
    first = {}
    for t, k in enumerate(sent):
        first.setdefault(k, t)
    streak = len(sent) - 1 - max(first.values())
    if not streak:
        return False
    counts = Counter(Counter(sent).values())
    levels = sorted(counts)
    if len(levels) == 1:
        return levels[0] >= 2 and streak >= counts[levels[0]]
    return len(levels) == 2 and levels[1] == levels[0] + 1 and streak >= counts[levels[1]]


@settings(max_examples=300, deadline=None)
@given(pool=st.integers(1, 40), order=st.lists(st.integers(0, 10_000), max_size=400),
       passes=st.integers(0, 3), cut=st.integers(0, 40))
def test_the_counts_read_a_rerun_in_progress_as_the_whole_sequence_defines_it(pool, order, passes, cut):
    """Any order of sends (random, or whole passes then part of one): the incremental reading
    (the log, its conversion to a table, the table's growth) equals the definition."""
    sent = [i % pool for i in order] if order else []
    sent += list(range(pool)) * passes + list(range(min(cut, pool)))
    counts = SendCounts()
    seen: set[int] = set()
    for k in sent:
        key = (1 << 63) | (k * 2_654_435_761 + 7)
        assert counts.add(key, k in seen)
        seen.add(k)
    assert counts.rerun_in_progress() == (_brute(sent) if sent else False)


def _flagged(queries: int, rerun: bool) -> Assessment:
    v = Verdict(p_value=1e-9, flagged=True, status="flagged", family_p={"elicitation": 1e-6, "harvest": 1e-6},
                reasons=())
    return Assessment(account="harness", queries=queries, verdict=v, elevated=True, rerun=rerun)


def test_the_persistent_block_waits_while_a_rerun_is_in_progress():
    policy = Policy(PolicyConfig())
    assert policy.decide(_flagged(40, False), now=0.0).action == "modify"
    d = policy.decide(_flagged(1500, True), now=2 * DAY)
    assert d.action == "modify" and d.rule == "flagged_elicitation" and "rerun_in_progress" in d.codes
    assert "re-run in progress" in d.explanation and d.shape == "summary"
    # The re-run ends (a new request): the block whose start was kept falls at once.
    d = policy.decide(_flagged(1501, False), now=2 * DAY + 1)
    assert d.action == "block" and d.rule == "flagged_persistent" and "rerun_in_progress" not in d.codes
    # A re-run does not hold back a block that is not the sustained flag's (a manual one).
    from distillguard.gateway.policy import ManualAction
    policy.manual["harness"] = ManualAction("block", "operator")
    assert policy.decide(_flagged(1502, True), now=2 * DAY + 2).action == "block"
