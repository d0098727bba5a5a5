"""Scoring (distillguard.detect.scoring.judge) on synthetic feature rows, against a baseline
fitted on synthetic organic rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillguard.detect.baseline import Baseline
from distillguard.detect.scoring import (FAMILY_ALPHA, HARVEST_ALPHA, REASON_ALPHA, REPEAT_LIMIT, Verdict,
                                         content_automation_p, family_p_values, fisher_statistic, judge, judge_frame)
from distillguard.detect.signals import AUTOMATION, COVERAGE, ELICITATION, FAMILIES, HARVEST, SIGNAL_BY_NAME, SIGNALS
from test_baseline import organic_frame

FPR = 0.001


@pytest.fixture(scope="module")
def organic():
    return organic_frame(400, seed=0)


@pytest.fixture(scope="module")
def baseline(organic):
    return Baseline(source="synthetic organic").fit(organic)


@pytest.fixture(scope="module")
def typical(organic):
    """An organic-looking account: the organic medians, 60 queries, no elicitation at all."""
    row = organic.median().to_dict()
    row.update(queries=60.0, distinct_prompts=60.0, cot_count=0.0, grading_count=0.0, identity_count=0.0,
               datagen_count=0.0, orphan_followup_count=0.0, near_cap_count=0.0, logprobs_count=0.0,
               open_loop_tools_count=0.0, tools_count=0.0, single_turn_count=24.0, templated_count=6.0,
               impersonal_count=30.0, repeat_share=0.0)
    return row


def busy(typical, **overrides):
    """A busy automated account: 5,000 single-turn templated prompts a week, bot cadence, round the clock,
    narrow topics and no elicitation (a batch application) unless overridden."""
    q = 5000.0
    row = dict(typical)
    row.update(queries=q, distinct_prompts=q, span_days=7.0, distinct_per_day=q / 7, output_tokens_per_day=q / 7 * 900,
               single_turn_count=q, impersonal_count=0.95 * q, templated_count=0.9 * q, near_cap_count=q,
               gap_cv=0.01, regularity=2.0, hour_entropy=4.5, topic_entropy=0.2, repeat_share=0.0)
    row.update(overrides)
    return row


# ---------------------------------------------------------------- helpers

def test_family_p_values_are_bonferroni_minimum():
    p = {s.name: 1.0 for s in SIGNALS}
    p["cot_elicitation"] = 1e-4
    p["grading_prompts"] = 0.5
    fam = family_p_values(p)
    n_elicitation = sum(1 for s in SIGNALS if s.family == ELICITATION)
    assert fam[ELICITATION] == pytest.approx(1e-4 * n_elicitation)
    assert fam[HARVEST] == fam[COVERAGE] == fam[AUTOMATION] == 1.0
    assert set(fam) == set(FAMILIES)
    p["new_prompts_per_day"] = 0.9
    assert family_p_values(p)[HARVEST] == 1.0     # capped at 1


def test_fisher_statistic():
    assert fisher_statistic({f: 1.0 for f in FAMILIES}) == 0.0
    fam = {f: 0.1 for f in FAMILIES}
    assert fisher_statistic(fam) == pytest.approx(-2 * len(FAMILIES) * math.log(0.1))
    fam[HARVEST] = 0.0                            # clipped, never infinite
    assert math.isfinite(fisher_statistic(fam))


def test_verdict_score_grows_as_p_shrinks():
    def v(p):
        return Verdict(p_value=p, flagged=False, status="clear", family_p={}, reasons=())
    assert v(1.0).score == 0.0
    assert v(1e-6).score == pytest.approx(0.5)
    assert v(1e-12).score == 1.0 and v(0.0).score == 1.0
    assert v(0.5).score < v(1e-3).score < v(1e-9).score


# ---------------------------------------------------------------- judge

def test_organic_like_row_is_clear(baseline, typical):
    v = judge(typical, baseline, FPR)
    assert v.status == "clear" and not v.flagged
    assert v.p_value > 0.1
    assert v.reasons == ()
    assert 0.0 <= v.score < 0.2


def test_organic_accounts_are_not_flagged(baseline):
    fresh = organic_frame(300, seed=7)
    verdicts = judge_frame(fresh, baseline, FPR)
    assert set(verdicts) == set(fresh.index)
    assert sum(v.flagged for v in verdicts.values()) == 0


def test_harvest_plus_elicitation_is_flagged_with_sorted_readable_reasons(baseline, typical):
    row = busy(typical, cot_count=4900.0, topic_entropy=3.5)
    v = judge(row, baseline, FPR)
    assert v.flagged and v.status == "flagged"
    assert v.p_value < 1e-10 and v.score > 0.8
    assert v.family_p[HARVEST] <= HARVEST_ALPHA and v.family_p[ELICITATION] <= FAMILY_ALPHA
    names = [r.signal for r in v.reasons]
    assert "cot_elicitation" in names and "output_tokens_per_day" in names and "new_prompts_per_day" in names
    # The rule in words leads (issue 14); the signals follow, strongest first.
    assert v.reasons[0].signal == "extraction_rule" and "privileged content" in v.reasons[0].detail
    ps = [r.p_value for r in v.reasons[1:]]
    assert ps == sorted(ps)
    assert all(r.p_value <= REASON_ALPHA for r in v.reasons[1:])
    cot = next(r for r in v.reasons if r.signal == "cot_elicitation")
    assert cot.family == ELICITATION
    assert cot.value == pytest.approx(0.98)
    assert cot.detail.startswith("98% of 5,000 prompts ask for step-by-step reasoning traces")
    assert "organic mean" in cot.detail
    tokens = next(r for r in v.reasons if r.signal == "output_tokens_per_day")
    assert tokens.value == pytest.approx(5000 / 7 * 900)
    assert "output tokens per day" in tokens.detail and "99th percentile" in tokens.detail
    d = cot.to_dict()
    assert d["signal"] == "cot_elicitation" and d["value"] == pytest.approx(0.98) and d["detail"] == cot.detail


def test_each_elicitation_signal_alone_is_enough_evidence(baseline, typical):
    for feature in ("grading_count", "identity_count", "datagen_count", "open_loop_tools_count",
                    "orphan_followup_count"):
        row = busy(typical, **{feature: 3000.0})
        v = judge(row, baseline, FPR)
        assert v.flagged, (feature, v.family_p)


def test_batch_app_harvest_and_automation_without_coverage_or_elicitation_is_not_flagged(baseline, typical):
    row = busy(typical)
    v = judge(row, baseline, FPR)
    assert v.family_p[HARVEST] <= HARVEST_ALPHA          # harvests a lot ...
    assert v.family_p[AUTOMATION] <= FAMILY_ALPHA        # ... as a bot ...
    assert v.p_value <= FPR                              # ... the combined test alone would flag it
    assert not v.flagged and v.status == "clear"         # but no coverage and no elicitation
    assert {"single_turn", "templated_prompts", "regular_cadence"} <= {r.signal for r in v.reasons}


def test_coverage_plus_automation_with_harvest_is_flagged(baseline, typical):
    v = judge(busy(typical, topic_entropy=3.5), baseline, FPR)
    assert v.family_p[ELICITATION] > FAMILY_ALPHA
    assert v.flagged


def test_aggregator_broad_and_round_the_clock_but_conversational_is_not_flagged(baseline, typical):
    """Many people behind one key (a reseller, a team): busy, broad and round the clock, yet their
    prompts are human conversations. Timing alone does not complete the coverage route."""
    q = 5000.0
    row = busy(typical, topic_entropy=3.5, single_turn_count=0.4 * q, impersonal_count=0.5 * q,
               templated_count=0.05 * q, near_cap_count=0.0, gap_cv=1.0, regularity=0.0, hour_entropy=4.58)
    p = baseline.p_values(row)
    assert p["round_the_clock"] <= 1e-3                  # automation by timing only ...
    v = judge(row, baseline, FPR)
    assert v.family_p[HARVEST] <= HARVEST_ALPHA and v.family_p[COVERAGE] <= FAMILY_ALPHA
    assert v.family_p[AUTOMATION] <= FAMILY_ALPHA
    assert content_automation_p(p) > FAMILY_ALPHA        # ... nothing in the prompts themselves
    assert not v.flagged and v.status == "clear"
    # The same traffic made single-turn (prompts fired one by one) is flagged.
    v = judge(dict(row, single_turn_count=q), baseline, FPR)
    assert v.flagged and "single_turn" in {r.signal for r in v.reasons}


def test_elicitation_at_human_volume_is_not_flagged(baseline, typical):
    # a researcher: every prompt probes reasoning, but 60 prompts over a week harvest nothing
    row = dict(typical, cot_count=55.0, identity_count=20.0)
    v = judge(row, baseline, FPR)
    assert v.family_p[ELICITATION] <= FAMILY_ALPHA
    assert v.family_p[HARVEST] > HARVEST_ALPHA
    assert not v.flagged and v.status == "clear"
    assert "cot_elicitation" in {r.signal for r in v.reasons}


def test_authorised_account_is_not_flagged(baseline, typical):
    row = busy(typical, cot_count=4900.0)
    v = judge(row, baseline, FPR, authorised=True)
    assert v.status == "authorised" and v.flagged is False
    assert v.reasons == judge(row, baseline, FPR).reasons   # the evidence is still reported


def test_authorised_flag_does_not_change_a_clear_account(baseline, typical):
    assert judge(typical, baseline, FPR, authorised=True).status == "clear"


def test_fewer_than_min_queries_is_insufficient_data(baseline, typical):
    row = busy(typical, cot_count=baseline.min_queries - 1.0, queries=baseline.min_queries - 1.0,
               single_turn_count=baseline.min_queries - 1.0, templated_count=0.0, impersonal_count=0.0,
               near_cap_count=0.0)
    v = judge(row, baseline, FPR)
    assert v.status == "insufficient_data" and not v.flagged
    at_min = judge(dict(typical, queries=float(baseline.min_queries)), baseline, FPR)
    assert at_min.status == "clear"


def test_mostly_temperature_zero_repeats_is_repeated_runs(baseline, typical):
    row = busy(typical, cot_count=4900.0, repeat_share=0.8)
    v = judge(row, baseline, FPR)
    assert v.status == "repeated_runs" and not v.flagged
    first = v.reasons[0]
    assert first.signal == "repeated_runs" and first.value == pytest.approx(0.8)
    assert "80%" in first.detail and "not flagged" in first.detail
    below = judge(busy(typical, cot_count=4900.0, repeat_share=REPEAT_LIMIT - 0.01), baseline, FPR)
    assert below.flagged


def test_fpr_threshold_controls_the_decision(baseline, typical):
    row = busy(typical, cot_count=4900.0, topic_entropy=3.5)
    v = judge(row, baseline, FPR)
    assert judge(row, baseline, v.p_value * 2).flagged
    assert not judge(row, baseline, v.p_value / 2).flagged


def test_judge_accepts_series_and_dicts_alike(baseline, typical):
    import pandas as pd

    row = busy(typical, cot_count=4900.0)
    a, b = judge(row, baseline, FPR), judge(pd.Series(row), baseline, FPR)
    assert a.p_value == b.p_value and a.status == b.status and a.reasons == b.reasons


def test_judge_frame_uses_allowlist(baseline, typical):
    import pandas as pd

    frame = pd.DataFrame([busy(typical, cot_count=4900.0), busy(typical, cot_count=4900.0), typical],
                         index=pd.Index(["x1", "x2", "org"], name="account"))
    verdicts = judge_frame(frame, baseline, FPR, allowlist=["x2"])
    assert verdicts["x1"].status == "flagged"
    assert verdicts["x2"].status == "authorised"
    assert verdicts["org"].status == "clear"


def test_reason_values_with_nan_serialise_as_none(baseline, typical):
    from distillguard.detect.scoring import Reason

    r = Reason("topic_breadth", COVERAGE, float("nan"), 0.001, "x")
    assert r.to_dict()["value"] is None
    assert Reason("s", "f", 0.123456789, 1e-20, "d").to_dict()["value"] == 0.123457


def test_signal_table_is_consistent():
    assert set(SIGNAL_BY_NAME) == {s.name for s in SIGNALS}
    assert all(s.kind in ("rate", "value") for s in SIGNALS)
    assert {s.family for s in SIGNALS} <= set(FAMILIES) | {"info"}
    assert np.all([s.min_queries >= 1 for s in SIGNALS])
