"""Queue groups (distillguard.detect.queue_groups): a swarm dealing one queue over many accounts,
found as a group where no pairwise link holds it (issue 14, behavioural swarm linking)."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.detect import hydra, queue_groups as qg
from distillguard.detect.features import SCRIPT_KEYS, account_features
from distillguard.detect.hydra import MIN_CLUSTER, SLOT_S, AccountIdentity, find_clusters, link_graph

T0 = 1_791_201_600.0
DAY = 86400.0


def member(name: str, times, keys, *, area: int | None = 2, **kw) -> AccountIdentity:
    """An account with its own everything (network, card, mail, agent) and these request times."""
    times = np.asarray(sorted(times), dtype=float)
    return AccountIdentity(account=name, ip24=(f"10.{zlib.crc32(name.encode()) % 250}.{len(name)}",), payment=f"pm_{name}",
                           email=f"{name}@mail-{name}.example", user_agent=f"agent/{name}",
                           slots=frozenset(int(t // SLOT_S) for t in times), first=float(times[0]),
                           last=float(times[-1]), queries=len(times), script_keys=tuple(keys), area=area, **kw)


def script_keys(rng: np.random.Generator, script: range, own_base: int, k: int = 12) -> list[int]:
    """Some of one script's band keys and some of the account's own (its wording of the fills)."""
    return [int(x) for x in rng.choice(list(script), size=k, replace=False)] + [own_base + j for j in range(20)]


def load_balanced_swarm(rng: np.random.Generator, n: int = 40, prefix: str = "lb", script: range = range(1000, 1030),
                        start: float = T0, days: float = 3.0) -> list[AccountIdentity]:
    """One paced queue over ``days``, each request dealt to a random member (20-45 each)."""
    budget = rng.integers(20, 46, size=n)
    owners = rng.permutation(np.repeat(np.arange(n), budget))
    times = np.linspace(start, start + days * DAY, len(owners), endpoint=False)
    return [member(f"{prefix}{i:02d}", times[owners == i], script_keys(rng, script, 10_000 * (i + 1) + zlib.crc32(prefix.encode()) % 997))
            for i in range(n)]


def office_hours(rng: np.random.Generator, n: int, tz: float, start: float = T0, days: int = 3) -> np.ndarray:
    return start + rng.integers(days, size=n) * DAY + ((rng.uniform(8, 19, size=n) - tz) % 24) * 3600.0


def test_slots_agree_with_hydra():
    assert qg.SLOT_S == hydra.SLOT_S


def test_load_balanced_swarm_is_one_cluster_though_no_pair_links():
    rng = np.random.default_rng(1)
    swarm = load_balanced_swarm(rng)
    # Pairwise, nothing holds it: no shared slots, and each member's window is the queue's.
    pairwise = link_graph(swarm[:2])  # two members alone: no queue group, no link
    assert pairwise.number_of_edges() == 0
    clusters = find_clusters(swarm)
    assert len(clusters) == 1 and len(clusters[0].accounts) == 40
    c = clusters[0]
    assert c.link_counts.get(hydra.QUEUE, 0) > 0
    assert c.carried_by.startswith("behaviour")
    assert not any(k in c.link_counts for k in ("payment", "ip24", "email_pattern", "co_active"))
    assert c.confidence >= 0.9


def test_independent_campaigns_on_one_library_are_not_a_queue_group():
    # Ten accounts draw on one public library (the same script keys) on their own office hours in
    # their own time zones, with volumes of independent campaigns: no group.
    rng = np.random.default_rng(2)
    accounts = []
    for i, tz in enumerate((-8, -5, -3, 0, 1, 3, 5.5, 8, 9, -6)):
        volume = int(rng.integers(150, 700))
        accounts.append(member(f"lib{i}", office_hours(rng, volume, tz), script_keys(rng, range(1000, 1030), 50_000 * (i + 1))))
    assert qg.queue_groups(accounts) == []
    assert find_clusters(accounts) == []


def test_uneven_volumes_are_not_dealt_from_one_queue():
    # Same script, same uniform timing, but volumes from 20 to 2,000: independent users, not a deal.
    rng = np.random.default_rng(3)
    accounts = [member(f"u{i}", rng.uniform(T0, T0 + 3 * DAY, size=int(v)), script_keys(rng, range(1000, 1030), 70_000 * (i + 1)))
                for i, v in enumerate(np.geomspace(20, 2000, 12))]
    assert qg.queue_groups(accounts) == []


def test_a_member_on_its_own_schedule_is_peeled_off():
    rng = np.random.default_rng(4)
    swarm = load_balanced_swarm(rng, n=30)
    # Same script and window, but only ever active at night in its own zone: not a share of the queue.
    night = T0 + rng.integers(3, size=35) * DAY + rng.uniform(0, 4, size=35) * 3600.0
    night[0], night[-1] = T0 + 60.0, T0 + 3 * DAY - 60.0
    outsider = member("night", night, script_keys(rng, range(1000, 1030), 90_000))
    groups = qg.queue_groups(swarm + [outsider])
    assert len(groups) == 1 and len(groups[0]) == 30 and 30 not in groups[0]


def test_two_swarms_on_one_script_in_separate_windows_stay_apart():
    rng = np.random.default_rng(5)
    a = load_balanced_swarm(rng, n=20, prefix="a")
    b = load_balanced_swarm(rng, n=20, prefix="b", start=T0 + 10 * DAY)
    clusters = find_clusters(a + b)
    assert sorted(len(c.accounts) for c in clusters) == [20, 20]
    assert all(len({x[0] for x in c.accounts}) == 1 for c in clusters)


def test_organic_users_of_a_popular_template_are_not_grouped():
    # 40 users share one popular template's bands, each in a few sessions on their own days and hours.
    rng = np.random.default_rng(6)
    users = []
    for i in range(40):
        days = rng.choice(7, size=int(rng.integers(1, 4)), replace=False)
        hour = rng.uniform(6, 22)
        times = np.concatenate([T0 + d * DAY + hour * 3600.0 + np.cumsum(rng.exponential(90, size=int(rng.integers(5, 15))))
                                for d in days])
        users.append(member(f"o{i:02d}", times, script_keys(rng, range(1000, 1030), 30_000 * (i + 1), k=6)))
    assert qg.queue_groups(users) == []
    assert all(not c.link_counts.get(hydra.QUEUE) for c in find_clusters(users))


def test_small_groups_are_left_to_the_pairwise_links():
    rng = np.random.default_rng(7)
    assert qg.queue_groups(load_balanced_swarm(rng, n=qg.QUEUE_MIN - 1)) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.floats(0, 6 * DAY), st.floats(0, 2 * DAY),
                          st.lists(st.integers(0, 12), min_size=0, max_size=8)), min_size=0, max_size=40),
       st.integers(0, 2**31 - 1))
def test_groups_are_disjoint_and_large_enough(specs, seed):
    rng = np.random.default_rng(seed)
    accounts = [member(f"r{i}", start + T0 + rng.uniform(0, span + 1, size=n), keys, area=None)
                for i, (n, start, span, keys) in enumerate(specs)]
    groups = qg.queue_groups(accounts)
    flat = [m for g in groups for m in g]
    assert len(flat) == len(set(flat))
    assert all(len(g) >= qg.QUEUE_MIN for g in groups)
    find_clusters(accounts)   # never raises on any shape


def test_script_keys_of_a_small_account_without_recurring_templates():
    prompts = [f"Write a short poem about the colour {c} and the sea at {h} o'clock" for c, h in
               zip(("red", "blue", "green", "amber", "violet", "grey"), range(6))]
    frame = pd.DataFrame({"t": np.arange(len(prompts), dtype=float) * 60 + T0, "prompt": prompts, "system": None,
                          "n_turns": 1, "n_messages": 1, "max_tokens": None, "logprobs": None, "has_tools": False,
                          "temperature": None, "completion_tokens": 100.0, "end_user": None})
    out = account_features(frame)
    keys = out["script_keys"]
    assert 0 < len(keys) <= SCRIPT_KEYS and len(set(keys)) == len(keys) and 0 not in keys
    # deterministic: the same prompts give the same keys
    assert account_features(frame)["script_keys"] == keys
    assert set(out["template_keys"]) <= set(keys)   # recurring bands come first


def test_cluster_count_is_unchanged_for_pairwise_swarms():
    # A synchronised swarm held by pairwise links stays one cluster when the queue test also finds it.
    rng = np.random.default_rng(8)
    waves = T0 + np.sort(rng.uniform(0, 3 * DAY, size=40))
    swarm = [member(f"s{i:02d}", waves[rng.choice(40, size=30, replace=False)] + rng.uniform(0, 300, size=30),
                    script_keys(rng, range(1000, 1030), 20_000 * (i + 1)), template_keys=(901,)) for i in range(30)]
    clusters = find_clusters(swarm)
    assert len(clusters) == 1 and len(clusters[0].accounts) == 30
    assert clusters[0].link_counts.get("co_active", 0) > 0
    assert MIN_CLUSTER <= 30


def test_people_in_sessions_on_one_shared_prompt_set_are_not_a_queue():
    # Researchers probing with one published set of prompts: spread over the whole window and
    # alike in volume, but each request comes in a session of several within minutes, in slots
    # where nobody else is active; a random share of a queue puts about one request per slot.
    rng = np.random.default_rng(9)
    people = []
    for i in range(15):
        starts = rng.uniform(T0, T0 + 5 * DAY, size=20)
        times = np.concatenate([s + np.cumsum(rng.uniform(20, 120, size=int(rng.integers(3, 6)))) for s in starts])
        people.append(member(f"r{i:02d}", times, script_keys(rng, range(1000, 1030), 40_000 * (i + 1))))
    assert all(len(p.slots) >= qg.MIN_SAMPLES for p in people)
    assert qg.queue_groups(people) == []


def test_operators_with_their_own_infrastructure_are_not_joined_by_the_group_test():
    # Five operators, three accounts each sharing a card, all on one public script with uniform
    # timing and like volumes: five infrastructure clusters, never one queue.
    rng = np.random.default_rng(10)
    accounts = []
    for team in range(5):
        for j in range(3):
            name = f"t{team}a{j}"
            acct = member(name, rng.uniform(T0, T0 + 3 * DAY, size=int(rng.integers(25, 40))),
                          script_keys(rng, range(1000, 1030), 60_000 * (3 * team + j + 1)))
            accounts.append(AccountIdentity(**{**acct.__dict__, "payment": f"card_team{team}",
                                               "ip24": (f"172.16.{team}",)}))
    clusters = find_clusters(accounts)
    assert sorted(len(c.accounts) for c in clusters) == [3] * 5
    assert not any(c.link_counts.get(hydra.QUEUE) for c in clusters)
