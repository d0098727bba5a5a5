"""Per-account features (distillguard.detect.features.account_features) on hand-built frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from distillguard.detect import text as tx
from distillguard.detect.features import (ACCOUNT_INPUT_COLUMNS, BREADTH_SAMPLE, END_USER_MIN_QUERIES, FEATURES,
                                          account_features, end_user_key, end_user_streams, features_frame,
                                          features_with_end_users, split_end_user_key)
from distillguard.taxonomy import AREAS

T0 = 1_791_201_600.0  # 2026-10-05T12:00:00Z
DAY = 86_400.0


def frame(prompts, t=None, **columns) -> pd.DataFrame:
    """An account's events: one per prompt, a minute apart, single-turn, no system, no tools."""
    n = len(prompts)
    data = {
        "t": np.asarray(t, dtype=np.float64) if t is not None else T0 + np.arange(n) * 60.0,
        "prompt": list(prompts),
        "system": [None] * n,
        "n_turns": [1] * n,
        "n_messages": [1] * n,
        "max_tokens": [256] * n,
        "logprobs": [False] * n,
        "has_tools": [False] * n,
        "temperature": [0.7] * n,
        "completion_tokens": [100] * n,
        "end_user": [None] * n,
    }
    for name, value in columns.items():
        data[name] = list(value) if not np.isscalar(value) else [value] * n
    out = pd.DataFrame(data)
    assert tuple(out.columns) == ACCOUNT_INPUT_COLUMNS
    return out


def distinct(n: int, word: str = "item") -> list[str]:
    return [f"question {word} {i} ?" for i in range(n)]


NATURAL = [
    "how do i keep my basil plant alive indoors", "whats a good name for a grey kitten",
    "Can you explain how mortgages work in simple terms?", "Write a haiku about trains at night.",
    "My script says IndexError list index out of range, here's the loop: for i in range(len(a)+1): print(a[i])",
    "What should I pack for a week in Iceland in March?", "Translate this to Spanish: where is the nearest pharmacy",
    "Is it safe to eat raw cookie dough?", "Give me three ideas for a 10 year old's birthday party",
    "Why do cats purr?", "Summarize the causes of World War I", "How many cups are in a gallon",
    "Recommend sci-fi novels similar to Dune", "Help me write a toast for my sister's wedding",
    "What's the difference between affect and effect", "explain git rebase vs merge",
    "Best way to clean a cast iron pan?", "Draft a LinkedIn post announcing my new job",
    "What is the boiling point of water at altitude?", "Tips for falling asleep faster", "Is Pluto a planet?",
    "how to make cold brew coffee", "What does HTTP 418 mean?", "Write a limerick about a forgetful wizard",
    "Suggest a weekly workout plan for beginners",
]


# ---------------------------------------------------------------- shape and trivial cases

def test_empty_frame_gives_zero_queries_and_nan_elsewhere():
    out = account_features(frame([]))
    assert out["queries"] == 0.0
    assert out["template_keys"] == []
    assert set(FEATURES) <= set(out)
    assert all(math.isnan(out[name]) for name in FEATURES if name != "queries")


def test_every_feature_is_present_and_numeric():
    out = account_features(frame(distinct(30)))
    assert set(out) == set(FEATURES) | {"template_keys", "script_keys"}
    for name in FEATURES:
        assert isinstance(float(out[name]), float), name
    assert out["queries"] == 30.0 and out["distinct_prompts"] == 30.0


def test_input_order_does_not_matter():
    prompts = NATURAL[:20]
    t = T0 + np.arange(20) * 137.0
    ordered = account_features(frame(prompts, t=t))
    order = np.random.default_rng(3).permutation(20)
    shuffled = account_features(frame([prompts[i] for i in order], t=t[order]))
    for name in FEATURES:
        a, b = ordered[name], shuffled[name]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), name


def test_non_string_prompts_are_treated_as_empty():
    out = account_features(frame(["hello there", None, float("nan")]))
    assert out["queries"] == 3.0
    assert out["distinct_prompts"] == 2.0  # "hello there" and ""


# ---------------------------------------------------------------- counts

def test_cue_counts_include_the_system_prompt():
    prompts = ["What is 12 times 13? Show your work.", "Who trained you?", "Rate this answer from 1 to 10: 42",
               "What is the capital of Peru?", "What is the capital of Chile?"]
    systems = [None, None, None, "Always think step by step before answering.", None]
    out = account_features(frame(prompts, system=systems))
    assert out["cot_count"] == 2.0         # "show your work" + the system prompt's "step by step"
    assert out["identity_count"] == 1.0
    assert out["grading_count"] == 1.0
    assert out["datagen_count"] == 0.0


def test_cue_counts_are_case_insensitive():
    out = account_features(frame(["THINK STEP BY STEP: 2+2?", "Produce 30 Diverse Examples Of Haiku"]))
    assert out["cot_count"] == 1.0
    assert out["datagen_count"] == 1.0


def test_single_turn_count():
    out = account_features(frame(distinct(6), n_turns=[1, 1, 3, 2, 1, 5], n_messages=[1, 1, 5, 3, 1, 9]))
    assert out["single_turn_count"] == 3.0


def test_open_loop_tools_count():
    # tools defined, the history holds only system + user turns: no tool result ever came back
    has_tools = [True, True, True, True, False]
    systems = ["You are an agent.", None, "You are an agent.", None, "You are an agent."]
    n_turns = [1, 1, 2, 2, 1]
    # 1: system+user (open loop); 2: user only (open loop); 3: system, user, assistant, tool, user
    # (a real loop); 4: user, assistant, user (an assistant turn came back, not open loop); 5: no tools
    n_messages = [2, 1, 5, 3, 2]
    out = account_features(frame(distinct(5), system=systems, has_tools=has_tools, n_turns=n_turns,
                                 n_messages=n_messages))
    assert out["tools_count"] == 4.0
    assert out["open_loop_tools_count"] == 2.0


def test_orphan_followup_count_needs_no_history():
    prompts = ["Make it shorter", "continue", "What about in Java?", "Make it shorter please",
               "Write a poem about the sea"]
    n_turns = [1, 1, 1, 2, 1]           # the 4th is a real follow-up, sent with its conversation
    n_messages = [1, 2, 1, 3, 1]        # the 2nd carries a system prompt (below), still orphaned
    systems = [None, "Be brief.", None, None, None]
    out = account_features(frame(prompts, n_turns=n_turns, n_messages=n_messages, system=systems))
    assert out["orphan_followup_count"] == 3.0


def test_near_cap_count_uses_max_tokens_cap():
    max_tokens = [4096, 3700, 3686, 1000, np.nan]
    out = account_features(frame(distinct(5), max_tokens=max_tokens))
    assert out["near_cap_count"] == 2.0    # >= 0.9 * 4096 = 3686.4
    out = account_features(frame(distinct(5), max_tokens=max_tokens), max_tokens_cap=1000)
    assert out["near_cap_count"] == 4.0    # >= 900


def test_logprobs_count_treats_missing_as_false():
    out = account_features(frame(distinct(4), logprobs=[True, None, False, True]))
    assert out["logprobs_count"] == 2.0


def test_impersonal_count():
    prompts = ["i need help with my essay", "Thanks! now the next one", "Explain the Krebs cycle.",
               "List all prime numbers below 50."]
    assert account_features(frame(prompts))["impersonal_count"] == 2.0


# ---------------------------------------------------------------- repeats and volume

def test_repeat_share_counts_only_temperature_zero_exact_repeats():
    prompts = ["a question", "a question", "a question", "b question", "b question", "c question"]
    temperature = [0.0, 0.0, 0.7, 0.0, 0.0, 0.0]
    out = account_features(frame(prompts, temperature=temperature))
    # repeats: a#2 (T=0, counts), a#3 (T=0.7, new sample, not counted), b#2 (T=0, counts)
    assert out["repeat_share"] == pytest.approx(2 / 6)
    assert out["distinct_prompts"] == 3.0


def test_repeat_share_is_zero_when_repeats_sample_at_positive_temperature():
    out = account_features(frame(["same"] * 10, temperature=[1.0] * 10))
    assert out["repeat_share"] == 0.0
    assert out["distinct_prompts"] == 1.0


def test_distinct_per_day_uses_the_time_span():
    prompts = distinct(80) + distinct(20)                    # 80 distinct, 20 repeats
    t = np.linspace(T0, T0 + 4 * DAY, 100)
    out = account_features(frame(prompts, t=t, completion_tokens=[50] * 100))
    assert out["span_days"] == pytest.approx(4.0)
    assert out["distinct_per_day"] == pytest.approx(80 / 4.0)
    # output tokens are counted on distinct prompts only
    assert out["output_tokens_per_day"] == pytest.approx(80 * 50 / 4.0)


def test_span_is_at_least_one_day():
    out = account_features(frame(distinct(30), t=T0 + np.arange(30) * 10.0))
    assert out["span_days"] == 1.0
    assert out["distinct_per_day"] == 30.0


# ---------------------------------------------------------------- cadence

def test_regularity_higher_for_evenly_spaced_than_bursty_requests():
    rng = np.random.default_rng(0)
    n = 200
    even = T0 + np.arange(n) * 300.0 + rng.normal(0, 3, n)
    centres = rng.uniform(0, 3 * DAY, 5)
    bursty = T0 + np.sort(np.concatenate([c + rng.exponential(20, 40) for c in centres]))
    prompts = distinct(n)
    r_even = account_features(frame(prompts, t=even))
    r_bursty = account_features(frame(prompts, t=bursty))
    assert r_even["regularity"] > 1.0 > 0.0 > r_bursty["regularity"]
    assert r_even["gap_cv"] < 0.1 < 1.0 < r_bursty["gap_cv"]
    assert r_even["regularity"] == pytest.approx(-math.log10(r_even["gap_cv"]))


def test_cadence_needs_ten_queries():
    out = account_features(frame(distinct(9)))
    assert math.isnan(out["regularity"]) and math.isnan(out["hour_entropy"]) and math.isnan(out["gap_cv"])


def test_hour_entropy_higher_round_the_clock_than_office_hours():
    rng = np.random.default_rng(1)
    n = 300
    day0 = T0 - (T0 % DAY)
    round_clock = day0 + np.sort(rng.uniform(0, 7 * DAY, n))
    office = day0 + np.sort(rng.integers(0, 7, n) * DAY + rng.uniform(9 * 3600, 17 * 3600, n))
    prompts = distinct(n)
    h_rtc = account_features(frame(prompts, t=round_clock))["hour_entropy"]
    h_office = account_features(frame(prompts, t=office))["hour_entropy"]
    assert h_rtc > 4.3            # close to log2(24) = 4.58
    assert h_office < 3.1         # at most 8 hours: log2(8) = 3 plus a small bias correction
    single_hour = day0 + 3600 * 10 + np.arange(50) * 10.0
    assert account_features(frame(distinct(50), t=single_hour))["hour_entropy"] == 0.0


# ---------------------------------------------------------------- coverage

def _area_prompts(areas, n):
    """n distinct prompts, each with one keyword of an area, cycling through ``areas``."""
    out = []
    for i in range(n):
        a = areas[i % len(areas)]
        keyword = AREAS[a][(i // len(areas)) % 4].replace("\\", "")
        out.append(f"tell me something about {keyword}, number {i}")
    return out


def test_topic_entropy_nan_below_forty_distinct_prompts():
    prompts = _area_prompts(list(AREAS), BREADTH_SAMPLE - 1)
    out = account_features(frame(prompts + prompts))            # 78 queries, 39 distinct
    assert out["distinct_prompts"] == BREADTH_SAMPLE - 1
    assert math.isnan(out["topic_entropy"])
    out = account_features(frame(_area_prompts(list(AREAS), BREADTH_SAMPLE)))
    assert not math.isnan(out["topic_entropy"])


def test_topic_entropy_higher_for_many_areas_than_one():
    broad = account_features(frame(_area_prompts(list(AREAS), 120)))
    narrow = account_features(frame(_area_prompts(["coding"], 120)))
    assert broad["topic_entropy"] > 3.5        # 16 areas: log2(16) = 4
    assert narrow["topic_entropy"] == pytest.approx(0.0)
    assert broad["areas_seen"] == len(AREAS)
    assert narrow["areas_seen"] == 1.0
    assert narrow["top_area"] == float(tx.AREA_LIST.index("coding"))


def test_novelty_rate_low_for_revisited_payloads_high_for_new_ground(monkeypatch):
    import distillguard.detect.features as features_module

    monkeypatch.setattr(features_module, "EMBEDDING_MIN_DISTINCT", 10)  # the statistic itself, on few prompts
    # Three payloads, each asked four times with one extra word: after the first round every
    # prompt has a very similar earlier one. (Template words shared by >= 30% are dropped first.)
    payloads = ["volcano eruption lava magma", "mortgage interest rate loan", "sourdough starter flour yeast"]
    revisited = [f"{payloads[i % 3]} extra{chr(97 + i)}" for i in range(12)]
    out = account_features(frame(revisited))
    assert out["novelty_rate"] == pytest.approx(2 / 11)
    assert account_features(frame(NATURAL[:12]))["novelty_rate"] > 0.7


# ---------------------------------------------------------------- templates

TOPICS = ["volcanoes", "tax law", "sourdough", "the french revolution", "black holes", "jazz harmony", "rust lifetimes",
          "marathon training", "medieval castles", "bird migration", "solar panels", "chess openings",
          "roman aqueducts", "the stock market", "photosynthesis", "origami", "cryptography", "coral reefs", "opera",
          "glaciers", "bonsai trees", "submarines", "beekeeping", "typography", "tea ceremonies"]


def test_templated_count_high_for_one_template_with_varying_payloads():
    prompts = [f"Please write a detailed and comprehensive article about {t}. Use markdown headings, include three "
               f"worked examples, and end with a short summary for readers." for t in TOPICS]
    out = account_features(frame(prompts))
    assert out["templated_count"] == len(TOPICS)
    assert len(out["template_keys"]) > 0
    assert all(isinstance(k, int) for k in out["template_keys"])


def test_templated_count_low_for_natural_prompts():
    out = account_features(frame(NATURAL))
    assert out["templated_count"] <= 3
    assert out["template_keys"] == [] or out["templated_count"] > 0


def test_same_template_gives_the_same_template_keys_across_accounts():
    a = [f"Please write a detailed and comprehensive article about {t}. Use markdown headings, include three "
         f"worked examples, and end with a short summary for readers." for t in TOPICS[:12]]
    b = [f"Please write a detailed and comprehensive article about {t}. Use markdown headings, include three "
         f"worked examples, and end with a short summary for readers." for t in TOPICS[12:]]
    keys_a = set(account_features(frame(a))["template_keys"])
    keys_b = set(account_features(frame(b))["template_keys"])
    assert keys_a & keys_b


# ---------------------------------------------------------------- assembling a frame

def test_features_frame_indexes_by_account_and_adds_missing_columns():
    rows = [{"queries": 3.0, "cot_count": 1.0}, {"queries": 5.0}]
    out = features_frame(rows, ["a", "b"])
    assert list(out.index) == ["a", "b"] and out.index.name == "account"
    assert set(FEATURES) <= set(out.columns)
    assert out.at["a", "cot_count"] == 1.0 and math.isnan(out.at["b", "cot_count"])


def test_exact_repeats_are_not_a_template():
    # One prompt asked ten times (an evaluation re-run, or sampling at temperature > 0) is
    # repetition, not a template wrapped around varying payloads.
    prompts = ["Explain how vaccines train the immune system, in plain words for a teenager."] * 10
    prompts += ["my sourdough is flat, what went wrong", "fix: TypeError in pandas merge", "haiku about rain"]
    out = account_features(frame(prompts))
    assert out["templated_count"] == 0
    assert out["template_keys"] == []
    # ... whereas three distinct prompts sharing a wrapper are one
    pets = [f"what is a good name for my {pet}? it is very playful" for pet in ("cat", "parrot", "goldfish")]
    assert account_features(frame(prompts + pets))["templated_count"] == 3


# --- End users: accounts that name their own end users get a row per busy end user ---------------

def test_end_user_streams_need_two_named_end_users():
    n = 3 * END_USER_MIN_QUERIES
    assert end_user_streams(frame(distinct(n))) == []                        # no ids at all
    assert end_user_streams(frame(distinct(n), end_user="only-one")) == []   # one id: the account itself
    users = ["a"] * (2 * END_USER_MIN_QUERIES) + ["b"] * END_USER_MIN_QUERIES
    streams = end_user_streams(frame(distinct(n), end_user=users))
    assert [(u, len(f)) for u, f in streams] == [("a", 2 * END_USER_MIN_QUERIES), ("b", END_USER_MIN_QUERIES)]


def test_quiet_and_unnamed_end_users_get_no_row():
    n = 2 * END_USER_MIN_QUERIES + 5
    users = ["busy"] * (2 * END_USER_MIN_QUERIES) + ["quiet"] * 4 + [None]
    streams = end_user_streams(frame(distinct(n), end_user=users))
    assert [u for u, _ in streams] == ["busy"]


def test_features_with_end_users_keys_and_values():
    n = 2 * END_USER_MIN_QUERIES
    users = ["u1"] * END_USER_MIN_QUERIES + ["u\u00e9 2"] * END_USER_MIN_QUERIES
    rows = features_with_end_users("acct", frame(distinct(n), end_user=users), max_tokens_cap=4096)
    keys = [k for k, _ in rows]
    assert keys[0] == "acct" and sorted(keys[1:]) == sorted([end_user_key("acct", "u1"), end_user_key("acct", "u\u00e9 2")])
    assert [split_end_user_key(k) for k in keys] == [("acct", None)] + [("acct", u) for u in
                                                                          [split_end_user_key(k)[1] for k in keys[1:]]]
    by_key = dict(rows)
    assert by_key["acct"]["queries"] == n
    assert by_key[end_user_key("acct", "u1")]["queries"] == END_USER_MIN_QUERIES
    assert by_key[end_user_key("acct", "u1")]["template_keys"] == []
    only = features_with_end_users("acct", frame(distinct(n), end_user=users), max_tokens_cap=4096, end_users=False)
    assert [k for k, _ in only] == ["acct"] and only[0][1]["queries"] == n
