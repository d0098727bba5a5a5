"""Hydra clustering (distillguard.detect.hydra): linking accounts by shared evidence."""

from __future__ import annotations

import pytest

from distillguard.detect.hydra import (MAX_GROUP, MIN_CLUSTER, SLOT_S, AccountIdentity, email_pattern, find_clusters,
                                       link_graph, timing_links)

T0 = 1_791_201_600.0


def ident(name, **kw) -> AccountIdentity:
    return AccountIdentity(account=name, **kw)


# ---------------------------------------------------------------- email_pattern

@pytest.mark.parametrize("email, expected", [
    ("dev48213@quickinbox.io", "dev#####@quickinbox.io"),
    ("DEV48213@QuickInbox.io", "dev#####@quickinbox.io"),
    ("abc123@corp.example", "abc###@corp.example"),
    ("a1b2c3@corp.example", "a#b#c#@corp.example"),
    ("john1234@gmail.com", "john####@gmail.com"),
    ("first.last@weird@host.io", None),            # no digits at all
    ("bot007x99@mailer.net", "bot###x##@mailer.net"),
])
def test_email_pattern_masks_numbered_series(email, expected):
    assert email_pattern(email) == expected


@pytest.mark.parametrize("email", [None, "", "no-at-sign", "john12@corp.example", "john123@gmail.com",
                                   "anna@outlook.com", "x99@proton.me"])
def test_email_pattern_none_unless_patterned(email):
    assert email_pattern(email) is None


def test_email_pattern_series_collide():
    assert email_pattern("agent00417@fastmail.com") == email_pattern("agent93881@fastmail.com")
    assert email_pattern("agent00417@fastmail.com") != email_pattern("agent00417@gmail.com")


# ---------------------------------------------------------------- link_graph

def test_payment_and_ip_prefix_link_two_accounts():
    ids = [ident("a", payment="card:1111", ip24=("10.0.1",)), ident("b", payment="card:1111", ip24=("10.0.1",)),
           ident("c", payment="card:2222", ip24=("10.9.9",))]
    graph = link_graph(ids)
    assert graph.has_edge("a", "b")
    assert "c" not in graph
    assert set(graph.edges["a", "b"]["kinds"]) == {"payment", "ip24"}
    assert graph.edges["a", "b"]["weight"] == pytest.approx(2.0)


def test_template_and_payment_link():
    ids = [ident("a", payment="pm_x", template_keys=(11, 12)), ident("b", payment="pm_x", template_keys=(12, 99))]
    graph = link_graph(ids)
    assert graph.has_edge("a", "b")
    assert set(graph.edges["a", "b"]["kinds"]) == {"payment", "template"}


def test_one_popular_user_agent_links_nothing():
    ids = [ident(f"u{i}", user_agent="OpenAI/Python 1.82.0") for i in range(20)]
    assert link_graph(ids).number_of_edges() == 0
    assert find_clusters(ids) == []


def test_same_webmail_pattern_alone_links_nothing():
    ids = [ident(f"u{i}", email=f"user{1000 + i}@gmail.com") for i in range(10)]
    assert email_pattern(ids[0].email) == email_pattern(ids[1].email)
    assert link_graph(ids).number_of_edges() == 0


def test_one_strong_kind_alone_links_nothing():
    for kw in ({"payment": "pm_shared"}, {"ip24": ("192.0.2",)}, {"template_keys": (5,)}):
        ids = [ident(f"u{i}", **kw) for i in range(4)]
        assert link_graph(ids).number_of_edges() == 0, kw


def test_weak_kinds_alone_link_nothing():
    ids = [ident(f"u{i}", user_agent="curl/8", org="ACME", created=T0 + i, active_hours=frozenset({1, 2, 3}))
           for i in range(5)]
    assert link_graph(ids).number_of_edges() == 0


def test_one_strong_kind_plus_enough_weak_ones_links():
    # email pattern (1.0) + user agent (0.5) + created in the same 6 h (0.5) + same active hours (0.5) = 2.5
    common = dict(user_agent="aiohttp/3.11.2", created=T0 + 60, active_hours=frozenset(range(400, 420)))
    ids = [ident("a", email="seed1001@mailbox.org", **common), ident("b", email="seed2002@mailbox.org", **common)]
    graph = link_graph(ids)
    assert graph.has_edge("a", "b")
    assert set(graph.edges["a", "b"]["kinds"]) == {"email_pattern", "user_agent", "created_burst", "sync"}
    # without synchronised activity the same pair falls short
    apart = [ident("a", email="seed1001@mailbox.org", user_agent="aiohttp/3.11.2", created=T0,
                   active_hours=frozenset(range(0, 20))),
             ident("b", email="seed2002@mailbox.org", user_agent="aiohttp/3.11.2", created=T0,
                   active_hours=frozenset(range(100, 120)))]
    assert link_graph(apart).number_of_edges() == 0


def test_attribute_shared_by_too_many_accounts_links_nothing():
    ids = [ident(f"u{i:03d}", payment="pm_everyone", ip24=("10.0.0",)) for i in range(MAX_GROUP + 1)]
    assert link_graph(ids).number_of_edges() == 0


# ---------------------------------------------------------------- find_clusters

def test_cluster_needs_at_least_three_accounts():
    pair = [ident("a", payment="pm", ip24=("10.0.1",)), ident("b", payment="pm", ip24=("10.0.1",))]
    assert link_graph(pair).number_of_edges() == 1
    assert find_clusters(pair) == []
    trio = pair + [ident("c", payment="pm", ip24=("10.0.1",))]
    clusters = find_clusters(trio)
    assert len(clusters) == 1
    c = clusters[0]
    assert c.cluster == "c1" and c.accounts == ("a", "b", "c")
    assert c.link_counts == {"payment": 3, "ip24": 3}
    assert c.density == 1.0
    assert 0.9 <= c.confidence <= 0.99
    assert MIN_CLUSTER == 3


def test_chain_of_links_forms_one_cluster_and_unrelated_accounts_stay_out():
    ids = [
        ident("h1", payment="pm_1", ip24=("10.1.1",)),                          # h1-h2: payment + ip24
        ident("h2", payment="pm_1", ip24=("10.1.1", "10.3.3"), template_keys=(77,)),  # h2-h3: template + ip24
        ident("h3", payment="pm_2", ip24=("10.3.3",), template_keys=(77, 78)),      # h3-h4: payment + template
        ident("h4", payment="pm_2", template_keys=(78,), ip24=("10.2.2",)),         # h4-h5: ip24 + template
        ident("h5", ip24=("10.2.2",), template_keys=(78,)),
        # organic accounts sharing one popular attribute each with the campaign
        ident("o1", user_agent="python-requests/2.32.3", email="olga1980@gmail.com"),
        ident("o2", ip24=("10.1.1",)),          # same office /24 as h1, nothing else
        ident("o3", payment="pm_solo"),
    ]
    clusters = find_clusters(ids)
    assert len(clusters) == 1
    assert clusters[0].accounts == ("h1", "h2", "h3", "h4", "h5")
    assert clusters[0].density < 1.0
    assert clusters[0].confidence < 0.99


def test_clusters_are_ordered_largest_first_and_numbered():
    small = [ident(f"s{i}", payment="pm_s", ip24=("10.0.9",)) for i in range(3)]
    large = [ident(f"l{i}", payment="pm_l", ip24=("10.0.8",)) for i in range(5)]
    clusters = find_clusters(small + large)
    assert [c.cluster for c in clusters] == ["c1", "c2"]
    assert [len(c.accounts) for c in clusters] == [5, 3]
    assert clusters[0].accounts[0] == "l0"


def test_no_identities_no_clusters():
    assert find_clusters([]) == []
    assert link_graph([]).number_of_nodes() == 0


# ---------------------------------------------------------------- behavioural links (issue 14)

def swarm(prefix: str, n: int, template: int, start: float, *, waves: int = 30, area: int = 2,
          period: float = 3600.0) -> list[AccountIdentity]:
    """Accounts with nothing in common but their prompt skeleton and a controller's waves: each has
    its own network, payment, e-mail and agent; all fire in the same ten-minute slots."""
    slots = frozenset(int((start + w * period) // SLOT_S) for w in range(waves))
    return [ident(f"{prefix}{i:02d}", ip24=(f"10.{i}.{ord(prefix[0])}",), payment=f"pm_{prefix}{i}",
                  email=f"{prefix}.person{i}@mail{i}.example", user_agent=f"agent/{prefix}{i}",
                  template_keys=(template,), slots=slots, first=start + i, last=start + (waves - 1) * period + i,
                  area=area)
          for i in range(n)]


def test_swarm_without_shared_infrastructure_is_one_cluster_carried_by_behaviour():
    members = swarm("s", 30, template=901, start=T0)
    clusters = find_clusters(members)
    assert len(clusters) == 1 and len(clusters[0].accounts) == 30
    c = clusters[0]
    assert "behaviour" in c.carried_by and c.carried_by != "infrastructure and behaviour"
    assert c.link_counts["template"] > 0 and c.link_counts["co_active"] > 0 and c.link_counts["target"] > 0
    assert not any(k in c.link_counts for k in ("payment", "ip24", "email_pattern"))
    assert c.confidence >= 0.9


def test_campaigns_sharing_only_a_public_library_stay_apart():
    # Three campaigns draw their prompts from one public library (same template skeleton), each
    # with its own controller running at its own times: three clusters, not one.
    library = 555
    campaigns = (swarm("a", 12, library, T0) + swarm("b", 12, library, T0 + 9 * 86400.0 + 1234)
                 + swarm("c", 12, library, T0 + 20 * 86400.0 + 777))
    clusters = find_clusters(campaigns)
    assert len(clusters) == 3
    assert sorted({a[0] for a in c.accounts} == {c.accounts[0][0]} for c in clusters) == [True] * 3


def test_shared_content_alone_links_nothing():
    # Same skeleton, unrelated times (organic users of one prompt library).
    ids = [ident(f"u{i}", template_keys=(42,), slots=frozenset({1000 + 50 * i, 1001 + 50 * i}),
                 first=T0 + 86400.0 * i, last=T0 + 86400.0 * i + 4000, area=3) for i in range(6)]
    assert link_graph(ids).number_of_edges() == 0


def test_busy_accounts_are_not_linked_by_co_activity():
    # Two queue workers busy in every slot of the working day share slots with anything: no link.
    day = frozenset(range(int(T0 // SLOT_S), int(T0 // SLOT_S) + 48))
    a = ident("w1", template_keys=(7,), slots=day, first=T0, last=T0 + 47 * SLOT_S)
    b = ident("w2", template_keys=(7,), slots=day, first=T0 + 7200.0, last=T0 + 47 * SLOT_S + 9000.0)
    assert timing_links(a, b) == []
    assert link_graph([a, b]).number_of_edges() == 0


def test_rotated_accounts_link_by_hand_off():
    # One account takes over within minutes of the previous one's last request (rotation).
    chain = [ident(f"r{i}", template_keys=(31,), first=T0 + i * 86400.0 + 300.0 * (i > 0),
                   last=T0 + (i + 1) * 86400.0 - 60.0, slots=frozenset()) for i in range(4)]
    clusters = find_clusters(chain)
    assert len(clusters) == 1 and clusters[0].link_counts.get("handoff") == 3


def test_a_window_that_is_the_whole_log_is_no_timing_link():
    """Two long-running services active from the log's first request to its last share the log's
    window, not one controller's: the same skeleton then links nothing. The same accounts
    starting and stopping together inside the log are linked."""
    day = 86_400.0
    a = ident("svc-a", first=T0, last=T0 + 5 * day, template_keys=(7,))
    b = ident("svc-b", first=T0 + 60, last=T0 + 5 * day - 60, template_keys=(7,))
    assert timing_links(a, b) == ["same_window"]
    assert timing_links(a, b, (T0, T0 + 5 * day)) == []
    assert link_graph([a, b]).number_of_edges() == 0
    inner_a = ident("bot-a", first=T0 + day, last=T0 + 2 * day, template_keys=(7,))
    inner_b = ident("bot-b", first=T0 + day + 60, last=T0 + 2 * day - 60, template_keys=(7,))
    assert timing_links(inner_a, inner_b, (T0, T0 + 5 * day)) == ["same_window"]
    assert link_graph([a, inner_a, inner_b]).has_edge("bot-a", "bot-b")
