"""Issue 14, round 2: the request read in its context, an exemption only when its instruction is
read, a program's harvest judged by what it collected, and labels are not generation. Fixtures
are written here (not lab output)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from distillguard.detect import text as tx
from distillguard.detect.baseline import load_default
from distillguard.detect.combine import family_p_values
from distillguard.detect.features import account_features
from distillguard.detect.scoring import (HARVEST_ALPHA, MATERIAL_ALPHA, MATERIAL_REQUESTS, fixed_instruction, generative,
                                         harvests, judge)
from distillguard.events.schema import prompt_view
from distillguard.gateway.online import read_request

from test_value_rule import FPR, bot_times, frame

TASKS = ("write a short story about a lighthouse keeper", "explain how vaccines train the immune system",
         "describe the causes of the first world war", "give advice to a nervous first-time speaker",
         "plan a week of vegetarian dinners", "argue for and against a four-day work week",
         "summarise the plot of hamlet for a child", "compose a wedding toast for a best friend")
ROLES = ("nurse", "pilot", "accountant", "novelist", "farmer", "student", "chef", "lawyer", "teacher", "miner")
TRAITS = ("anxious", "sarcastic", "gentle", "blunt", "cheerful", "pedantic")
CITIES = ("Lagos", "Osaka", "Berlin", "Lima", "Manila", "Oslo", "Cairo", "Quito")


@pytest.fixture(scope="module")
def baseline():
    return load_default()


def verdict(df, baseline):
    return judge(account_features(df), baseline, FPR)


def persona_harvester(n: int = 240, seed: int = 5, gap: float = 60.0):
    """A few tasks asked through many personas carried in the system message: every user turn
    repeats, but each request (persona + task) asks for a different answer."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(ROLES, TRAITS, CITIES))
    picks = rng.choice(len(combos), size=n, replace=False)
    systems = [f"You are a {t} {r} from {c}. Answer in your own voice." for r, t, c in (combos[i] for i in picks)]
    prompts = [TASKS[int(rng.integers(len(TASKS)))].capitalize() + "." for _ in range(n)]
    return frame(prompts, bot_times(n, rng, gap), rng.integers(500, 900, size=n).astype(float), system=systems)


def test_the_same_user_turn_under_another_system_prompt_is_a_new_request(baseline):
    df = persona_harvester()
    feats = account_features(df)
    assert feats["distinct_prompts"] == len(df)        # 240 requests, only 8 distinct user turns
    assert feats["resent_share"] == 0.0
    v = verdict(df, baseline)
    assert v.flagged, [r.detail for r in v.reasons[:3]]


def test_the_same_request_again_is_a_repeat(baseline):
    df = persona_harvester(n=60)
    twice = frame(list(df["prompt"]) * 2, bot_times(120, np.random.default_rng(1)),
                  np.full(120, 600.0), system=list(df["system"]) * 2, temperature=0.0)
    feats = account_features(twice)
    assert feats["distinct_prompts"] == 60 and feats["repeat_share"] == pytest.approx(0.5)


def test_an_agent_step_after_more_tool_rounds_is_a_new_request():
    base = frame(["Fix the failing test in utils.py."] * 6, bot_times(6, np.random.default_rng(2)),
                 np.full(6, 400.0), system="You are an autonomous agent.")
    base["n_messages"] = [2, 4, 6, 8, 2, 4]            # two trajectories, the same goal
    base["has_tools"] = True
    assert account_features(base)["distinct_prompts"] == 4
    assert tx.request_digest("a", "s", 2, True) != tx.request_digest("a", "s", 4, True)
    assert tx.request_digest("a", "s", 4, True) != tx.request_digest("a", None, 4, True)


def test_the_same_question_later_in_a_chat_is_a_re_ask():
    """Without tools, history is conversation, not material: a researcher asking the same probe
    in several chats re-asks it."""
    chat = frame(["What model are you?"] * 4, bot_times(4, np.random.default_rng(3)), np.full(4, 50.0))
    chat["n_messages"] = [1, 3, 5, 1]
    assert account_features(chat)["distinct_prompts"] == 1
    assert tx.request_digest("a", None, 1) == tx.request_digest("a", None, 5)


@pytest.mark.parametrize("blank", ["", " ", "\n", "\t "])
def test_a_blank_user_turn_leaves_the_prompt_in_the_system_message(blank):
    body = {"messages": [{"role": "system", "content": "Write a haiku about rain."},
                         {"role": "user", "content": blank}]}
    view = prompt_view(body)
    assert view.prompt_text == "Write a haiku about rain."
    other = dict(body, messages=[{"role": "system", "content": "Write a haiku about snow."},
                                 {"role": "user", "content": blank}])
    assert read_request(view, 4096).bloom_bits != read_request(prompt_view(other), 4096).bloom_bits


def test_an_unread_instruction_is_no_exemption(baseline):
    """One frame in a language whose instructions we cannot read is not taken for one fixed
    instruction over payloads: a harvester writing in French is judged on what it collects."""
    rng = np.random.default_rng(7)
    subjects = [f"{a} {b}" for a, b in itertools.product(
        ("la théorie", "l'histoire", "la chimie", "la géologie", "l'économie", "la musique", "la poésie"),
        ("des jeux", "des nombres", "du climat", "des villes", "des langues", "de l'art", "du sommeil",
         "des océans", "des marchés", "des étoiles"))]
    verbs = ("Écris un guide complet sur", "Rédige un essai détaillé sur", "Présente en profondeur")
    prompts = [f"{verbs[i % 3]} {subjects[i % len(subjects)]}. Utilise un langage simple." for i in range(210)]
    df = frame(prompts, bot_times(210, rng), rng.integers(700, 1300, size=210).astype(float))
    feats = account_features(df)
    assert not fixed_instruction(feats)           # unread: no exemption (NaN), not "one instruction"
    assert verdict(df, baseline).flagged
    english = frame([f"Write a complete guide to topic {i % 70}. Use simple language." for i in range(210)],
                    bot_times(210, rng), np.full(210, 900.0))
    assert np.isfinite(account_features(english)["fixed_instruction_share"])


def test_a_program_that_collected_a_training_set_harvests(baseline):
    """A script whose volume is unusual (p <= MATERIAL_ALPHA) but not extreme for organic people
    (p > HARVEST_ALPHA) has still collected a training set at MATERIAL_REQUESTS distinct requests;
    the same script with fewer requests, or at a volume organic accounts reach, has not."""
    def judged(n, gap):
        feats = account_features(persona_harvester(n=n, gap=gap))
        p = baseline.p_values(feats)
        return family_p_values(p), p, feats

    fam, p, feats = judged(120, 3000.0)              # 120 requests over four days
    assert HARVEST_ALPHA < fam["harvest"] <= MATERIAL_ALPHA and feats["distinct_prompts"] >= MATERIAL_REQUESTS
    assert harvests(fam, p, feats)
    fam, p, feats = judged(MATERIAL_REQUESTS - 20, 3000.0 * 120 / (MATERIAL_REQUESTS - 20))
    assert fam["harvest"] > HARVEST_ALPHA and not harvests(fam, p, feats)
    fam, p, feats = judged(120, 10_000.0)            # the same 120 over two weeks: organic volume
    assert fam["harvest"] > MATERIAL_ALPHA and not harvests(fam, p, feats)


def test_labels_are_not_generation(baseline):
    """A labelling queue (long items in, one word out) is not a generative harvest, however
    broad its items; the same account with long answers would be."""
    rng = np.random.default_rng(9)
    n = 400
    items = [" ".join(rng.choice(list(TASKS), size=3)) + f" (ticket {i})" for i in range(n)]
    labels = ("billing", "bug", "feature", "other")
    prompts = [f"Label the item with one of {', '.join(labels)}. Item: {it}" for it in items]
    short = frame(prompts, bot_times(n, rng), np.full(n, 2.0), temperature=0.0)
    feats = account_features(short)
    assert not generative(feats)
    assert not verdict(short, baseline).flagged


def test_an_agent_harness_gets_no_fixed_instruction_exemption(baseline):
    """Templated agent goals over file names read as one fixed instruction, but the requests carry
    the agent's own trajectory (tools, tool results), not data the application brings: a scripted
    agent harvest is judged on its value; the same fixed frame without tools is exempt."""
    rng = np.random.default_rng(11)
    files = [f"src/module_{i}.py" for i in range(60)]
    goals = ("Fix the failing test in {f}", "Add logging to {f}", "Refactor {f} for readability")
    n = 300
    prompts = [goals[i % 3].format(f=files[int(rng.integers(60))]) + "." for i in range(n)]
    df = frame(prompts, bot_times(n, rng), rng.integers(600, 1200, size=n).astype(float),
               system="You are an autonomous agent. Use tools to complete the task.")
    df["n_messages"] = rng.integers(4, 12, size=n)          # tool rounds came back: no open loop
    feats = account_features(df)
    assert fixed_instruction(feats)                   # reads as one fixed instruction ...
    df["has_tools"] = True
    v = verdict(df, baseline)
    assert v.flagged, [r.detail for r in v.reasons[:3]]   # ... but an agent harness is not exempt
    assert v.reasons[0].signal == "extraction_rule" and "sent by automation" in v.reasons[0].detail
