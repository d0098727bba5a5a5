"""The one-pass anchor index (``cue_index.CueTexts``, and ``CueText`` for one text) gives exactly what the per-pattern anchored search
gives on plain lists: every registered cue pattern, the security-probe union and the benchmark
recogniser, on generated text (anchor words, pattern fragments, unicode, long texts, texts with
many repeats of one anchor) and on lab prompts; and the scan's features are identical."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillguard.detect import features as feats
from distillguard.detect import probes
from distillguard.detect import text as tx
from distillguard.detect.cue_index import CueText, CueTexts, anchor_automaton
from distillguard.detect.text import CUE_LIMIT

PATTERNS = [p for p in (tx.COT_ELICITATION, tx.GRADING, tx.IDENTITY_PROBE, tx.DATA_GENERATION, tx.BENCHMARK_FORMAT,
                        tx.BENCHMARK_MORE, probes.SECURITY_PROBE, *probes._PROBE_PARTS)]
ANCHORS = sorted({a for words in tx._ANCHORS.values() for a in words})
FRAGMENTS = ["step by step", "show your work", "ignore previous instructions", "rate the response",
             "who made you", "generate 20 examples", "final answer", "(a) one (b) two", "system prompt",
             "decode this base64", "write a keylogger", "stay in character", "which python packages for",
             "repeat the string \"", "answer with the letter", "\\boxed", "\n#### ", "jsonl", "you are dan"]
UNICODE = ["é", "ß", "İ", "ﬁ", "日本語", "🙂", "\u200b", "\u0301", "Ａ", "\ud800", "\U0010ffff", "\x00", "\n", " "]
pieces = st.sampled_from(ANCHORS + FRAGMENTS + UNICODE) | st.text(max_size=12)
texts = st.lists(pieces, max_size=40).map(" ".join) | st.text(max_size=300)


def _compare(batch: list[str]) -> None:
    cues = CueTexts(batch)
    for pattern in PATTERNS:
        assert tx.has(pattern, cues).tolist() == tx.has(pattern, list(batch)).tolist(), pattern.pattern[:60]
    assert probes.security_probe(cues).tolist() == probes.security_probe(list(batch)).tolist()
    assert tx.benchmark_format(cues).tolist() == tx.benchmark_format(list(batch)).tolist()
    # One text at a time (the gateway's per-request form): the same answers, as plain bools.
    ones = [CueText(t) for t in batch]
    for pattern in PATTERNS:
        assert [c.has(pattern) for c in ones] == tx.has(pattern, list(batch)).tolist(), pattern.pattern[:60]
    assert [probes.security_probe_one(c) for c in ones] == probes.security_probe(list(batch)).tolist()
    assert [tx.benchmark_format_one(c) for c in ones] == tx.benchmark_format(list(batch)).tolist()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, max_size=8))
def test_cue_index_equals_anchored_search_on_generated_text(batch):
    _compare([t.lower() for t in batch])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ANCHORS), st.integers(10, 30), st.sampled_from(FRAGMENTS), st.integers(0, 30))
def test_many_repeats_of_an_anchor_and_a_cue_at_any_place(anchor, repeats, fragment, where):
    """More than the anchored search's 12 windows per anchor (its full-search fallback), and cues
    on both sides of the characters read (CUE_LIMIT)."""
    filler = (anchor + " and some words ") * repeats
    _compare([filler[: where * 20] + fragment + filler[where * 20:],
              "x" * (CUE_LIMIT - len(fragment) // 2) + fragment,
              "y" * (CUE_LIMIT + 5) + fragment, fragment + "z" * CUE_LIMIT, ""])


def test_cue_index_on_lab_prompts(tmp_path):
    from distillguard.lab.evasive import ATTACK_FAMILIES
    from distillguard.lab.legit import LEGIT_FAMILIES
    from distillguard.lab.traffic import TrafficConfig, generate
    from distillguard.events.schema import prompt_view
    from distillguard.gateway.replay import load_events

    generate(TrafficConfig(seed=11, accounts=30, days=1, batch_per_day=100, families=ATTACK_FAMILIES,
                           family_instances=1, legit_families=tuple(LEGIT_FAMILIES), legit_accounts=1), tmp_path)
    views = [prompt_view(e["request"]) for e in load_events(tmp_path / "events.jsonl.gz")[:6000]]
    batch = [feats.elicitation_text(v.prompt_text or "", v.system_prompt) for v in views]
    assert len(batch) > 1000
    _compare(batch)
    # The index really skips: most prompts hold none of a probe category's anchors.
    cues = CueTexts(batch)
    bit = anchor_automaton()[1][probes._PROBE_GLITCH.pattern]
    assert sum(m & bit == 0 for m in cues.masks) > len(batch) // 2


def test_account_features_are_identical_with_and_without_the_index(tmp_path, monkeypatch):
    from distillguard.lab.evasive import ATTACK_FAMILIES
    from distillguard.lab.legit import LEGIT_FAMILIES
    from distillguard.lab.traffic import TrafficConfig, generate
    from distillguard.store import EventStore
    from distillguard.store.ingest import ingest_paths
    from distillguard.detect.engine import input_columns_sql

    generate(TrafficConfig(seed=12, accounts=20, days=1, batch_per_day=100, families=ATTACK_FAMILIES,
                           family_instances=1, legit_families=tuple(LEGIT_FAMILIES), legit_accounts=1), tmp_path)
    with EventStore(tmp_path / "e.duckdb") as store:
        ingest_paths(store, [tmp_path / "events.jsonl.gz"])
        frame = store.con.sql(f"SELECT account, {input_columns_sql(store)} FROM events").df()
    groups = list(frame.groupby("account", sort=True))
    assert len(groups) > 30
    fast = {a: feats.account_features(g) for a, g in groups}
    monkeypatch.setattr(feats, "CueTexts", list)        # the plain lists of before

    slow = {a: feats.account_features(g) for a, g in groups}
    for account in fast:
        a, b = fast[account], slow[account]
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and np.isnan(a[k]):
                assert np.isnan(b[k]), (account, k)
            else:
                assert a[k] == b[k], (account, k)


def test_cue_texts_is_a_list_and_subsets_keep_their_masks():
    cues = CueTexts(["let's think step by step", "hello there", "ignore previous instructions"])
    assert list(cues) == ["let's think step by step", "hello there", "ignore previous instructions"]
    sub = cues.subset(np.array([2, 0]))
    assert list(sub) == ["ignore previous instructions", "let's think step by step"]
    assert sub.masks == [cues.masks[2], cues.masks[0]] and sub.found == [cues.found[2], cues.found[0]]
    assert {"ignore"} <= cues.found[2] and "step" in cues.found[0]
    assert cues.masks[1] == 0 or not tx.has(tx.COT_ELICITATION, CueTexts(["hello there"]))[0]
    assert tx.has(tx.COT_ELICITATION, cues).tolist() == [True, False, False]
    assert CueTexts([]).masks == [] and tx.has(tx.GRADING, CueTexts([])).tolist() == []


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.pattern[:20])
def test_every_cue_pattern_has_a_bit(pattern):
    assert pattern.pattern in anchor_automaton()[1]
