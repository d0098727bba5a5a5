"""The traffic lab: real corpus parsing, determinism, labels kept apart, strategies as specified."""

from __future__ import annotations

import collections
import gzip
import json

import orjson
import pytest

from distillguard.errors import UsageError
from distillguard.events.jsonl import iter_jsonl
from distillguard.lab.campaigns import CampaignSpec, default_campaigns
from distillguard.lab.corpus import iter_raw_items, load_corpus, parse_sharegpt
from distillguard.lab.traffic import TrafficConfig, generate, split_corpus


def test_parse_sharegpt_handles_truncation_and_joins_chunks():
    text = json.dumps([
        {"id": "abc_0", "conversations": [{"from": "human", "value": "first question about python code"},
                                          {"from": "gpt", "value": "first answer"}]},
        {"id": "zzz", "conversations": [{"from": "human", "value": "lonely"}]},
        {"id": "abc_1", "conversations": [{"from": "human", "value": "follow-up"},
                                          {"from": "gpt", "value": "second answer"}]},
        {"id": "cut", "conversations": [{"from": "human", "value": "never finished"}]},
    ], indent=1)
    truncated = text[: text.rindex("never finished") + 5]  # cut inside the last item, like the package's file
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated)
    assert [item["id"] for item in iter_raw_items(truncated)] == ["abc_0", "zzz", "abc_1"]
    convs = {c.id: c for c in parse_sharegpt(truncated)}
    assert set(convs) == {"abc", "zzz"}
    assert convs["abc"].turns == (("first question about python code", "first answer"), ("follow-up", "second answer"))
    assert convs["abc"].area == "coding"
    assert convs["zzz"].turns == (("lonely", ""),)


def test_real_corpus_size_matches_the_package():
    convs = load_corpus()
    human_turns = sum(len(c.turns) for c in convs)
    # ~17,600 chunks join into ~9,400 conversations holding ~61,000 human turns.
    assert 9000 < len(convs) < 10000
    assert 58_000 < human_turns < 64_000
    organic, public = split_corpus(convs)
    assert not {c.id for c in organic} & {c.id for c in public}
    assert 0.2 < len(public) / len(convs) < 0.4


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    config = TrafficConfig(seed=3, accounts=25, days=2, batch_per_day=200)
    summary = generate(config, out)
    events = [ev for ev in iter_jsonl(summary.events_path)]
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    return out, summary, events, labels


def test_events_are_valid_time_ordered_and_unique(small_lab):
    _, summary, events, _ = small_lab
    assert len(events) == summary.events > 1000
    ts = [e.ts for e in events]
    assert ts == sorted(ts)
    assert len({e.id for e in events}) == len(events)
    assert all(e.usage and e.usage["completion_tokens"] > 0 for e in events)


def test_labels_never_inside_events(small_lab):
    out, _, events, labels = small_lab
    raw = gzip.decompress((out / "events.jsonl.gz").read_bytes())
    for word in (b'"strategy"', b'"campaign"', b'"kind"', b"low_and_slow", b"power_user", b"batch_app"):
        assert word not in raw
    assert all(not e.extra for e in events)  # only record fields, nothing that could carry a label
    assert {e.account for e in events} <= {row["account"] for row in labels}
    kinds = collections.Counter(row["strategy"] for row in labels)
    for strategy in ("organic", "power_user", "batch_app", "eval_run", "researcher", "sweep", "cot", "rubric",
                     "agentic", "replay", "low_and_slow", "hydra", "mixed"):
        assert kinds[strategy] >= 1, strategy


def test_deterministic_under_seed(tmp_path):
    config = TrafficConfig(seed=11, accounts=5, days=1, batch_per_day=50,
                           campaigns=(CampaignSpec("cot", per_day=100), CampaignSpec("hydra", accounts=5, per_day=50)))
    a = generate(config, tmp_path / "a")
    b = generate(config, tmp_path / "b")
    c = generate(TrafficConfig(**{**config.__dict__, "seed": 12}), tmp_path / "c")
    read = lambda s: gzip.decompress(s.events_path.read_bytes())  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)
    assert a.labels_path.read_bytes() == b.labels_path.read_bytes()


def test_organic_conversations_replay_real_turns_in_order(small_lab):
    _, _, events, labels = small_lab
    corpus_turns = {h for c in load_corpus() for h, _ in c.turns}
    organic = {r["account"] for r in labels if r["strategy"] in ("organic", "power_user")}
    multi = [e for e in events if e.account in organic and len(e.request["messages"]) >= 3]
    assert multi, "organic users should hold multi-turn conversations"
    for ev in multi[:50]:
        users = [m["content"] for m in ev.request["messages"] if m["role"] == "user"]
        assert users[-1] in corpus_turns  # the newest turn is a real human turn
        roles = [m["role"] for m in ev.request["messages"] if m["role"] != "system"]
        assert roles[-1] == "user" and roles[-2] == "assistant"  # history precedes the new turn


def test_hydra_shape(small_lab):
    _, _, events, labels = small_lab
    hydra = {r["account"] for r in labels if r["strategy"] == "hydra"}
    per_account = collections.Counter(e.account for e in events if e.account in hydra)
    assert max(per_account.values()) <= 45
    payments = {e.identity["payment"] for e in events if e.account in hydra}
    prefixes = {e.ip.rsplit(".", 1)[0] for e in events if e.account in hydra}
    assert len(payments) <= 4 and len(prefixes) <= 3  # shared infrastructure
    assert all(sum(m["role"] == "user" for m in e.request["messages"]) == 1 for e in events if e.account in hydra)


def test_mixed_reseller_share(tmp_path):
    config = TrafficConfig(seed=5, accounts=0, days=3, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(CampaignSpec("mixed", per_day=300, extraction_share=0.1, content="cot"),))
    summary = generate(config, tmp_path)
    events = list(iter_jsonl(summary.events_path))
    suffix_words = ("step by step", "chain of thought", "reasoning", "intermediate step", "one step at a time")
    cot = sum(1 for e in events if any(w in e.request["messages"][-1]["content"].lower() for w in suffix_words))
    share = cot / len(events)
    assert 0.05 < share < 0.2
    assert all(e.request["messages"][0]["role"] == "system" for e in events)  # one reseller pipeline


def test_low_and_slow_is_paced(tmp_path):
    config = TrafficConfig(seed=5, accounts=0, days=2, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(CampaignSpec("low_and_slow", per_day=200),))
    events = list(iter_jsonl(generate(config, tmp_path).events_path))
    gaps = [b.ts - a.ts for a, b in zip(events, events[1:])]
    interval = 86400 / 200
    assert 300 < len(events) < 500
    assert min(gaps) > 0.5 * interval and max(gaps) < 1.5 * interval


def test_bad_lab_options():
    with pytest.raises(UsageError):
        CampaignSpec("nonsense").resolved(0)
    with pytest.raises(UsageError):
        CampaignSpec("mixed", extraction_share=0).resolved(0)
    with pytest.raises(UsageError):
        TrafficConfig(start="2026-13-45").check()
    names = [s.resolved(i).name for i, s in enumerate(default_campaigns())]
    assert len(set(names)) == len(names)
