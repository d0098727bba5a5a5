"""The lab's evasive extraction families and hard legitimate families (issue 14, item 4)."""

from __future__ import annotations

import collections
import gzip
import itertools
import os
import subprocess
import sys

import orjson
import pytest
from distillguard.errors import UsageError
from distillguard.events.jsonl import iter_jsonl
from distillguard.events.schema import content_text, event_from_obj, prompt_view, response_text
from distillguard.lab.evasive import ATTACK_FAMILIES, public_library
from distillguard.lab.legit import LEGIT_FAMILIES
from distillguard.lab.traffic import TrafficConfig, build_context, generate
from distillguard.lab.wording import LANGUAGE_PARTS

STATUSES = {"clear", "flagged", "probing", "evaluation"}


def _config(seed: int = 7, **kw) -> TrafficConfig:
    base = dict(seed=seed, accounts=3, days=2, campaigns=(), batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                families=ATTACK_FAMILIES, family_instances=2, legit_families=tuple(LEGIT_FAMILIES), legit_accounts=1)
    return TrafficConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("families")
    summary = generate(_config(), out)
    events = list(iter_jsonl(summary.events_path))  # strict: every line must validate
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    by_account = {r["account"]: r for r in labels}
    per_family: dict[str, list] = collections.defaultdict(list)
    for ev in events:
        per_family[by_account[ev.account]["family"]].append(ev)
    return out, events, labels, by_account, per_family


def test_every_family_emits_valid_ordered_events_with_labels(lab):
    out, events, labels, by_account, per_family = lab
    assert set(ATTACK_FAMILIES) | set(LEGIT_FAMILIES) <= set(per_family)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.id for e in events}) == len(events)
    for row in labels:
        assert {"account", "kind", "campaign", "strategy", "family", "expected_status"} <= set(row)
        assert row["expected_status"] in STATUSES
        expected = "flagged" if row["family"] in ATTACK_FAMILIES else None
        if expected:
            assert row["kind"] == "extraction" and row["expected_status"] == "flagged"
    statuses = {r["family"]: r["expected_status"] for r in labels if r["family"] in LEGIT_FAMILIES}
    assert statuses == {"vuln_scanner": "probing", "eval_harness": "evaluation", "catalogue": "clear",
                        "coding_assistant": "clear", "education": "clear", "labelling": "clear"}
    assert all(r["kind"] == "organic" for r in labels if r["family"] in LEGIT_FAMILIES)
    # Round trip through the one schema: what the lab writes is what ingest reads back.
    for ev in events[:: max(1, len(events) // 500)]:
        assert event_from_obj(orjson.loads(orjson.dumps(ev.to_dict()))).request == ev.request
    raw = gzip.decompress((out / "events.jsonl.gz").read_bytes())
    for word in (b'"family"', b'"expected_status"', b"proxy_mixed", b"vuln_scanner", b"slow_reasoning"):
        assert word not in raw  # ground truth never inside the events


def test_deterministic_under_seed(tmp_path):
    small = dict(families=("narrow_coding", "self_instruct", "swarm", "library"), family_instances=1,
                 legit_families=("vuln_scanner", "eval_harness"), days=1)
    a, b = generate(_config(**small), tmp_path / "a"), generate(_config(**small), tmp_path / "b")
    c = generate(_config(seed=8, **small), tmp_path / "c")
    read = lambda s: gzip.decompress(s.events_path.read_bytes())  # noqa: E731
    assert read(a) == read(b) and a.labels_path.read_bytes() == b.labels_path.read_bytes()
    assert read(a) != read(c)


def test_system_only_prompts_have_no_user_content(lab):
    events = lab[4]["system_only"]
    assert len(events) > 50
    for ev in events:
        view = prompt_view(ev.request)
        assert all(not content_text(m.get("content")).strip() for m in ev.request["messages"] if m["role"] == "user")
        assert ev.request["messages"][0]["role"] in ("system", "developer")
        assert len(view.system_prompt or "") > 20  # the whole prompt is in the system message
        assert view.n_turns <= 1 and not any(m.get("tool_calls") for m in ev.request["messages"])


def test_swarm_members_share_no_infrastructure(lab):
    _, _, labels, _, per_family = lab
    swarms = collections.defaultdict(set)
    for row in labels:
        if row["family"] == "swarm":
            swarms[row["campaign"]].add(row["account"])
    assert len(swarms) == 2  # two instances, labelled as two campaigns
    for members in swarms.values():
        assert 30 <= len(members) <= 60
        evs = [e for e in per_family["swarm"] if e.account in members]
        counts = collections.Counter(e.account for e in evs)
        assert set(counts) == members and min(counts.values()) >= 20 and max(counts.values()) <= 45
        first = {}
        for e in evs:
            first.setdefault(e.account, e)
        for field, get in (("/24", lambda e: e.ip.rsplit(".", 1)[0]), ("e-mail domain", lambda e: e.identity["email"].split("@")[1]),
                           ("payment", lambda e: e.identity["payment"]), ("user agent", lambda e: e.user_agent)):
            values = [get(e) for e in first.values()]
            assert len(set(values)) == len(values), field
        # ... while every member's account-level identifiers stay constant.
        assert all(e.ip == first[e.account].ip and e.user_agent == first[e.account].user_agent for e in evs)


def test_library_campaigns_share_only_the_public_library(lab):
    _, _, labels, by_account, per_family = lab
    ctx = build_context(_config())
    library = {m["content"] for p in public_library(ctx) for m in p.messages if m["role"] == "user"}
    campaigns = collections.defaultdict(list)
    for ev in per_family["library"]:
        campaigns[by_account[ev.account]["campaign"]].append(ev)
    groups = collections.defaultdict(set)
    for name in campaigns:
        groups[name.rsplit("/", 1)[0]].add(name)
    assert all(len(g) >= 2 for g in groups.values())  # several distinct campaigns per library group
    prefixes = {name: {e.ip.rsplit(".", 1)[0] for e in evs} for name, evs in campaigns.items()}
    cards = {name: {e.identity["payment"] for e in evs} for name, evs in campaigns.items()}
    for x, y in itertools.combinations(campaigns, 2):
        assert not prefixes[x] & prefixes[y] and not cards[x] & cards[y]
    for evs in campaigns.values():
        user = [e.request["messages"][-1]["content"] for e in evs]
        assert sum(any(u.startswith(p) for p in library) for u in user[:40]) == len(user[:40])


def test_narrow_families_stay_in_their_area(lab):
    per_family = lab[4]
    for ev in per_family["narrow_agentic"]:
        msgs = ev.request["messages"]
        assert ev.request.get("tools")
        calls = {c["id"] for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls") or []}
        assert {m["tool_call_id"] for m in msgs if m["role"] == "tool"} == calls
    assert sum(any(m["role"] == "tool" for m in e.request["messages"]) for e in per_family["narrow_agentic"]) > 0
    langs = collections.defaultdict(set)
    for ev in per_family["narrow_language"]:
        text = prompt_view(ev.request).prompt_text
        langs[ev.account] |= {code for code, parts in LANGUAGE_PARTS.items() if any(t in text for t in parts["topics"])}
    assert langs and all(len(v) == 1 for v in langs.values())
    assert all(any(w in prompt_view(e.request).prompt_text.lower() for w in ("solve", "find", "compute", "prove",
                                                                           "probab", "how many", "what is", "differentiate",
                                                                           "sequence", "loan", "trains", "triangle"))
               for e in per_family["narrow_math"])


def test_self_instruct_feeds_on_its_own_answers(lab):
    per_family = lab[4]
    for family in ("self_instruct", "evol_instruct"):
        by_account = collections.defaultdict(list)
        for ev in per_family[family]:
            by_account[ev.account].append(ev)
        for evs in by_account.values():
            seen: set[str] = set()
            reused = 0
            for ev in evs:
                prompt = prompt_view(ev.request).prompt_text
                if any(line in prompt for line in seen):
                    reused += 1
                seen |= {ln.strip(" -*0123456789.)\t") for ln in response_text(ev.response).splitlines()
                         if 30 < len(ln.strip(" -*0123456789.)\t")) < 400}
            assert reused > len(evs) * 0.2, family


def test_wording_differs_between_accounts_of_one_family(lab):
    per_family = lab[4]
    for family in ("narrow_coding", "judge_pipeline", "persona", "slow_reasoning"):
        heads = collections.defaultdict(set)
        for ev in per_family[family]:
            text = " ".join(m["content"] or "" for m in ev.request["messages"] if m["role"] in ("system", "user"))
            heads[ev.account] |= {" ".join(text.split()[:4])}
        a, b = list(heads.values())[:2]
        assert len(a & b) < 0.5 * min(len(a), len(b)), family


def test_legit_family_shapes(lab):
    per_family = lab[4]
    scans = per_family["vuln_scanner"]
    with_n = [e for e in scans if e.request.get("n")]
    for ev in with_n:
        assert len(ev.response["choices"]) == ev.request["n"] > 1
    if not with_n:  # repeated requests instead of n: each prompt sent several times
        assert max(collections.Counter(prompt_view(e.request).prompt_text for e in scans).values()) > 1
    harness = per_family["eval_harness"]
    prompts = collections.Counter(prompt_view(e.request).prompt_text for e in harness)
    assert len(harness) >= 100
    assert set(prompts.values()) == {len(harness) // len(prompts)}  # every item once per run
    assert all(e.request.get("user") for e in per_family["coding_assistant"])
    for family in ("catalogue", "labelling"):
        instructions = {e.request["messages"][0]["content"].split("\n\n")[0] for e in per_family[family]}
        payloads = {e.request["messages"][-1]["content"] for e in per_family[family]}
        assert len(instructions) == 1 and len(payloads) > 0.5 * len(per_family[family])


def _cli(*args):
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "distillguard", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_selects_families_and_rejects_unknown(tmp_path):
    res = _cli("lab", "traffic", "--out", tmp_path / "t", "--accounts", "2", "--days", "1",
               "--campaigns", "narrow_coding,system_only,sweep", "--hard-negatives", "2",
               "--legit-families", "catalogue,labelling")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [orjson.loads(x) for x in (tmp_path / "t" / "labels.jsonl").read_bytes().splitlines()]
    fams = collections.Counter(r["family"] for r in rows)
    assert fams["narrow_coding"] == fams["system_only"] == fams["sweep"] == 1
    assert fams["catalogue"] == fams["labelling"] == 2 and "cot" not in fams
    for extra in (["--campaigns", "nope"], ["--hard-negatives", "1", "--legit-families", "nope"]):
        bad = _cli("lab", "traffic", "--out", tmp_path / "u", *extra)
        assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError):
        TrafficConfig(families=("bogus",)).check()


@pytest.mark.parametrize("inner", ["evol_instruct", "narrow_agentic"])
def test_proxy_mixed_runs_its_inner_family_as_that_family_runs_alone(inner):
    """The extraction hidden in a proxy is the inner family's own traffic: a loop feeds on its answers
    and agentic requests keep their tools (the proxy only adds its system prompt)."""
    import dataclasses

    from distillguard.lab.evasive import ProxyMixed
    from distillguard.lab.evasive_prompts import BUILDERS

    ctx = build_context(_config(seed=11, days=3))
    proxy = ProxyMixed(ctx, 0)
    proxy.spec = dataclasses.replace(proxy.spec, extraction_share=1.0, per_day=150)  # the extraction alone
    proxy.prompts = BUILDERS[inner](ctx, proxy.rng)
    events = list(proxy.events())
    assert len(events) > 200
    prompts = [e["request"]["messages"][-1]["content"] for e in events]
    assert all(e["request"]["messages"][0]["content"] == proxy.system for e in events)
    if inner == "narrow_agentic":
        assert sum(1 for e in events if e["request"].get("tools")) > len(events) * 0.5
    else:
        replies = [e["response"]["choices"][0]["message"]["content"] for e in events]
        seen: set[str] = set()
        reused = 0
        for text, reply in zip(prompts, replies):
            reused += any(line in text for line in seen)
            seen |= {ln.strip(" -*0123456789.)\t") for ln in reply.splitlines()
                     if 30 < len(ln.strip(" -*0123456789.)\t")) < 400}
        assert reused > len(events) * 0.2
        assert len(set(prompts)) > len(events) * 0.5
