"""From per-signal p-values to one calibrated decision per account, with its reasons.

The decision is about what an account's traffic is *worth as training data* and whether its
shape is *explained by a legitimate use*, not about one strategy's cues. An account is flagged
when

* it harvests: many new prompts answered per day **or** over its life (the harvest family,
  p <= ``HARVEST_ALPHA``; security probes are not counted as harvest), or it is a program that
  has collected a training set (``harvests``: content automation p <= ``HARVEST_ALPHA``, at least
  ``MATERIAL_REQUESTS`` distinct requests, harvest p <= ``MATERIAL_ALPHA``),
* what it harvests is valuable as training data, by any one of three routes (p <= ``FAMILY_ALPHA``):

  - **elicitation**: privileged content (reasoning traces, grades, identity, training data,
    one-shot agent runs, lifted follow-ups);
  - **value**: self-contained generative requests or answers long relative to prompts, from
    automated (not typed) prompts: a narrow coding harvester, a self-instruct loop, prompts
    carried in a system message;
  - **coverage**: broad capability areas, from automated prompts;

  value and coverage only with answers no shorter than prompts (``generative``: labels are not
  generation),

  with "automated" shown by the prompts themselves (single-turn, templated, impersonal, near-cap,
  logprobs), never by timing alone (many people behind one key are round the clock too),
* it is not explained by one fixed instruction over payloads the application brings (at least
  ``FIXED_INSTRUCTION_SHARE`` of distinct prompts giving the same instructions removes the value
  and coverage routes: a catalogue or labelling queue gets answers about its own data; it removes
  the elicitation route too when the payloads are material, fewer than ``SUPPLIED_MATERIAL_SHARE``
  of queries self-contained: grading or labelling a supplied item is not self-contained
  generation, while one fixed frame over topics the caller picks, "explain X step by step", is
  still a harvester unless its slots are bounded (below); the value and coverage exemption needs
  the instructions read, at least ``INSTRUCTION_READ_SHARE`` of prompts, and is not given to an
  agent harness, at least ``AGENT_SHARE`` of requests with tools; over topics the caller picks
  (self-contained requests), one fixed instruction explains the traffic only when its slots take
  a bounded set of words (``bounded_slots``: at most ``SLOT_NOVELTY`` of its later prompts bring
  a word no earlier prompt had: a syllabus's topics, a catalogue's attributes, not a web crawl's
  subjects), and when its numbers are bounded too it removes the elicitation route as well
  (exercise sets with worked solutions over a syllabus; the lab's ``syllabus_frame`` family is
  the harvester this lets through; a template over random numbers, "solve {a}x + {b} = {c} step
  by step", is not a menu),
* most of its queries are not exact repeats of earlier ones (re-asking harvests nothing), and
* Fisher's combination of the family p-values, calibrated on organic accounts by Brown's
  method, is at most the chosen false-positive rate.

Every flag needs the calibrated test, and every other condition only removes flags, so the
organic false-positive rate stays at or below ``fpr``; ``calibration`` in the scan output
reports the rate measured on the baseline.

Two legitimate uses get a status of their own instead of a flag:

* ``probing``: at least ``PROBE_SHARE`` of queries are security probes (jailbreak and role-play
  personas, prompt injection and instruction override, system-prompt and training-data leakage,
  encoding tricks, harmful-content refusal tests, malware and script/markup injection, glitch
  tokens, package hallucination), more than organic accounts send (p <=
  ``FAMILY_ALPHA``), and the rest of its traffic is not flagged on its own (probes never count
  as harvest, so extraction beside a scan is still flagged);
* ``evaluation``: at least ``EVAL_SHARE`` of queries are benchmark-formatted (options, an answer
  slot, answer-format demands, numeric answers, few-shot exemplars) and the run is repeatable: at
  least ``EVAL_TEMP0_SHARE`` at temperature 0 or at least ``EVAL_RESENT_SHARE`` of queries re-send
  an earlier prompt (re-runs, at any temperature), more than
  organic accounts send, with no request for training data or grades, and no more than
  ``EVAL_MAX_ITEMS`` distinct prompts (a benchmark is bounded; past that it is flagged as any
  other account would be). An account that would otherwise be flagged is an evaluation run in
  any format (free-form chain-of-thought items re-sampled at temperature > 0 too) when it makes
  whole passes over one bounded item set (``rerun``: re-sends, every item sent equally often
  or one pass behind, the set exhausted): what it transfers is its distinct items. A distiller
  re-sampling a fixed prompt set gets the same status (the lab's ``resample`` family measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from distillguard.detect.baseline import Baseline
from distillguard.detect.combine import bonferroni_min as _bonferroni_min, family_p_values, fisher_statistic
from distillguard.detect.features import BASE_FEATURES, SUBSTREAM_PREFIX
from distillguard.detect.signals import AUTOMATION, COVERAGE, ELICITATION, HARVEST, SIGNAL_BY_NAME, SIGNALS, VALUE

HARVEST_ALPHA = 1e-3
FAMILY_ALPHA = 0.05
TIMING_SIGNALS = frozenset({"regular_cadence", "round_the_clock"})
REPEAT_LIMIT = 0.5
REASON_ALPHA = 1e-2
FIXED_INSTRUCTION_SHARE = 0.5   # distinct prompts giving the same instructions: one fixed task
INSTRUCTION_READ_SHARE = 0.5    # ... judged only where at least this share of prompts is read (see fixed_instruction)
AGENT_SHARE = 0.5               # requests with tools defined: at least this share makes an agent harness (no exemption)
SUPPLIED_MATERIAL_SHARE = 0.5   # elicitation is exempt only when fewer queries than this are self-contained
PROBE_SHARE = 0.3               # queries that are security probes, for the probing status
EVAL_SHARE = 0.5                # queries formatted as benchmark items, for the evaluation status
EVAL_TEMP0_SHARE = 0.8          # ... and at temperature 0 (deterministic, comparable runs), or
EVAL_RESENT_SHARE = 1 / 3       # ... re-sent: queries repeating an earlier prompt (re-runs), any temperature
MATERIAL_REQUESTS = 100         # distinct requests from a program that make a training set ...
MATERIAL_ALPHA = 1e-2           # ... when its volume is also beyond organic accounts' at this level
ANSWER_RATIO_FLOOR = 0.0        # log2 answer/prompt tokens: answers shorter than prompts are labels, not generation
EVAL_MAX_ITEMS = 15_000         # distinct prompts a benchmark run may have (MMLU has ~14k items)
SLOT_NOVELTY = 0.1              # later prompts bringing a new word or number: at most this share is a bounded menu
EVAL_PASS_SHARE = 0.8           # distinct requests sent equally often or one pass behind, for a re-run in any format
EVAL_SPACE_SLACK = 1.05         # ... and the item set exhausted: estimated size within 5 % of what was sent
STATUSES = ("flagged", "clear", "insufficient_data", "repeated_runs", "authorised", "probing", "evaluation")


@dataclass(frozen=True)
class Reason:
    signal: str
    family: str
    value: float
    p_value: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "family": self.family, "value": _clean(self.value),
                "p_value": _clean(self.p_value), "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    """The decision for one account (or one cluster scored as one actor)."""

    p_value: float
    flagged: bool
    status: str                     # one of STATUSES
    family_p: dict[str, float]
    reasons: tuple[Reason, ...]

    @property
    def score(self) -> float:
        """Higher for more likely extraction: 1 - p, kept distinguishable near 1 by a log scale."""
        return float(min(1.0, max(0.0, -math.log10(max(self.p_value, 1e-300)) / 12.0)))


def _clean(x: float) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return float(f"{x:.6g}")


def _detail(signal_name: str, row: pd.Series | dict[str, Any], baseline: Baseline) -> tuple[float, str]:
    signal = next(s for s in SIGNALS if s.name == signal_name)
    n = float(row["queries"])
    raw = float(row.get(signal.feature, float("nan")))
    ref = baseline.describe(signal)
    if signal.kind == "rate":
        rate = raw / n if n else float("nan")
        return rate, f"{rate:.0%} of {int(n):,} prompts {signal.what}; organic mean {ref['organic_mean']:.1%}"
    return raw, (f"{_num(raw)} {signal.what}; organic median {_num(ref['organic_median'])}, "
                 f"99th percentile {_num(ref['organic_p99'])}")


def _num(x: float) -> str:
    """Numbers as a reader wants them: no decimals once they are large."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def content_automation_p(p: dict[str, float]) -> float:
    """Automation shown by the prompts themselves (Bonferroni minimum over the automation signals
    but timing). Round-the-clock hours and Poisson-like spacing are also what many people behind
    one key look like (a reseller, a team, an app's users), so timing alone never completes the
    "coverage and automation" route: broad topics plus round-the-clock hours is an aggregator."""
    return _bonferroni_min([p[s.name] for s in SIGNALS if s.family == AUTOMATION and s.name not in TIMING_SIGNALS])


def _value(row: Any, feature: str, default: float = float("nan")) -> float:
    """A feature as a float, ``default`` when absent, None or not finite."""
    value = row.get(feature)
    return float(value) if value is not None and np.isfinite(value) else default


def _share(row: Any, feature: str) -> float:
    n = float(row["queries"])
    return _value(row, feature, 0.0) / n if n else 0.0


def fixed_instruction(row: Any, *, read: bool = True) -> bool:
    """One fixed instruction over payloads the application brings (see ``FIXED_INSTRUCTION_SHARE``).

    With ``read``, only where the instructions are read: with most prompts in a language the
    instruction reading does not know (``INSTRUCTION_READ_SHARE``), one fixed instruction cannot
    be told from many, so the exemption from the value and coverage routes is not given."""
    fixed = _value(row, "fixed_instruction_share", 0.0) >= FIXED_INSTRUCTION_SHARE
    return fixed and (not read or _value(row, "instruction_read_share", 1.0) >= INSTRUCTION_READ_SHARE)


def supplied_material(row: Any) -> bool:
    """Do most queries bring material of their own (an answer to grade, an item to label) rather
    than ask a self-contained question? One fixed instruction over *topics* the caller picks is
    still a harvester (explain X step by step); over *items* the application supplies it is not."""
    return _share(row, "self_contained_count") < SUPPLIED_MATERIAL_SHARE


def bounded_slots(row: Any, *, numbers: bool = True) -> bool:
    """Do the frame's slots take a bounded set of values (``SLOT_NOVELTY``: in the later half of
    its prompts, few bring a word or number outside the frame that no earlier prompt had)? Then
    one fixed instruction over topics the caller picks is a product's own menu (a syllabus's
    topics and levels), and what it transfers is bounded by that menu. Without ``numbers``, words
    only: a record's numbers (an SKU, a price) are new in every request of a catalogue. Unknown
    (not measured, e.g. live) is not bounded."""
    return _value(row, "slot_novelty" if numbers else "slot_word_novelty", 1.0) <= SLOT_NOVELTY


def explained_by_frame(row: Any) -> bool:
    """Is its traffic explained by one fixed instruction, for the value and coverage routes? Over
    material the application brings (a catalogue, a labelling queue), or, over topics it picks,
    only with bounded slot words: one fixed frame over open topics ("write a textbook chapter
    about {topic}" over a web crawl's subjects) is a synthetic-data generator, while product data
    given inline ("... for the Acme kettle SKU 10412: steel, red, 2,200 W") has bounded words and
    new numbers. Unknown slot novelty (live) keeps the older reading: one fixed instruction
    explains it."""
    fixed = fixed_instruction(row) and _share(row, "tools_count") < AGENT_SHARE
    if not fixed or supplied_material(row) or not np.isfinite(_value(row, "slot_word_novelty")):
        return fixed
    return bounded_slots(row, numbers=False)


def generative(row: Any) -> bool:
    """Do its answers give back more than its prompts bring (``ANSWER_RATIO_FLOOR``)? Labels,
    classifications and extractions return less text than they are given: little to train a
    generator on. Unknown (no answers logged) counts as generative."""
    return _value(row, "answer_ratio", ANSWER_RATIO_FLOOR) >= ANSWER_RATIO_FLOOR


def harvests(fam: dict[str, float], p: dict[str, float], row: Any) -> bool:
    """Has it collected a training set? Far more new answers than organic accounts collect (per
    day or over its life, p <= ``HARVEST_ALPHA``), or, for a program (content automation p <=
    ``HARVEST_ALPHA``), at least ``MATERIAL_REQUESTS`` distinct requests and more than organic
    accounts collect (p <= ``MATERIAL_ALPHA``): organic *people* at their extreme are the wrong
    yardstick for a script's volume, and a few hundred answers already train. (A volume the
    baseline calls normal, e.g. after an analyst's false positive is fed back, never counts.)"""
    if fam[HARVEST] <= HARVEST_ALPHA:
        return True
    return (fam[HARVEST] <= MATERIAL_ALPHA and content_automation_p(p) <= HARVEST_ALPHA
            and _value(row, "distinct_prompts", 0.0) >= MATERIAL_REQUESTS)


def _routes(fam: dict[str, float], p: dict[str, float], row: Any, baseline: Baseline | None = None) -> list[str]:
    """The routes by which the harvest is valuable as training data (see the module docstring)."""
    automated = content_automation_p(p) <= FAMILY_ALPHA
    # An agent's requests carry its own trajectory (tool calls and their results), not data the
    # application brings: one fixed instruction explains a catalogue, not an agent harness.
    fixed = explained_by_frame(row)
    routes = []
    # Privileged content asked for over supplied items (grading what the application brings), or
    # by one read, fixed frame whose slots are bounded (a syllabus's exercise sets with worked
    # solutions) is explained by it; over open topics it is a harvest.
    menu = fixed and not supplied_material(row) and bounded_slots(row)
    if fam[ELICITATION] <= FAMILY_ALPHA and not (fixed_instruction(row, read=False) and supplied_material(row)) \
            and not menu:
        routes.append("elicitation")
    # Value: answers worth more than organic ones, or, from a program, answers at least as long
    # relative to their prompts as organic users get (a script sending organic-like requests at
    # volume collects organic-grade training data; see ``typical_value``).
    if automated and not fixed and generative(row) and (fam[VALUE] <= FAMILY_ALPHA or typical_value(row, baseline)):
        routes.append("value")
    if (fam[COVERAGE] <= FAMILY_ALPHA and fam[AUTOMATION] <= FAMILY_ALPHA and automated and not fixed
            and generative(row)):
        routes.append("coverage")
    return routes


def typical_value(row: Any, baseline: Baseline | None) -> bool:
    """Are its answers at least as long relative to its prompts as the median organic account's?"""
    if baseline is None:
        return False
    median = baseline.describe(SIGNAL_BY_NAME["answer_length_ratio"])["organic_median"]
    return _value(row, "answer_ratio") >= median


def probing(row: Any, p: dict[str, float]) -> bool:
    return _share(row, "probe_count") >= PROBE_SHARE and p.get("security_probes", 1.0) <= FAMILY_ALPHA


def evaluation(row: Any, p: dict[str, float], *, suspicious: bool = False) -> bool:
    """A benchmark run: benchmark-formatted and repeatable, or (for an account that would
    otherwise be flagged) whole passes over one bounded item set in any format (``rerun``); with
    no request for training data or grades, and a bounded item set (``EVAL_MAX_ITEMS``)."""
    distinct = _value(row, "distinct_prompts")
    bounded = (np.isfinite(distinct) and distinct <= EVAL_MAX_ITEMS
               and p.get("training_data_requests", 1.0) > FAMILY_ALPHA and p.get("grading_prompts", 1.0) > FAMILY_ALPHA)
    repeatable = _share(row, "temp0_count") >= EVAL_TEMP0_SHARE or _value(row, "resent_share", 0.0) >= EVAL_RESENT_SHARE
    formatted = (_share(row, "benchmark_count") >= EVAL_SHARE and repeatable
                 and p.get("benchmark_format", 1.0) <= FAMILY_ALPHA)
    return bounded and (formatted or (suspicious and rerun(row)))


def rerun(row: Any) -> bool:
    """Whole passes over one bounded item set, at any temperature and in any format (free-form
    chain-of-thought items too): at least ``EVAL_RESENT_SHARE`` of queries re-send an earlier
    request, at least ``EVAL_PASS_SHARE`` of distinct requests were sent c or c + 1 times, c >= 2
    (a benchmark run r times sends every item r times; a third or later pass in progress has sent
    them r - 1 or r times: ``features.pass_share``), and the set is exhausted (its
    estimated size, ``prompt_space``, within ``EVAL_SPACE_SLACK`` of what was sent). What a re-run
    transfers is its distinct items (at most ``EVAL_MAX_ITEMS``), each sampled once per pass; a
    harvester needs new requests, and one that re-samples a fixed set at temperature to collect
    several traces per item is reported so too (held to the rule's rate and watermarked, never
    blocked; README, *Statuses other than flagged*)."""
    distinct, space = _value(row, "distinct_prompts"), _value(row, "prompt_space")
    return (_value(row, "resent_share", 0.0) >= EVAL_RESENT_SHARE and _value(row, "pass_share", 0.0) >= EVAL_PASS_SHARE
            and np.isfinite(space) and distinct > 0 and space <= EVAL_SPACE_SLACK * distinct)


def _status_reason(status: str, row: Any, p: dict[str, float], baseline: Baseline) -> Reason | None:
    n = int(float(row["queries"]))
    if status == "probing":
        share = _share(row, "probe_count")
        return Reason("probing", "info", share, p["security_probes"],
                      f"{share:.0%} of {n:,} queries are security probes (jailbreak, prompt injection, "
                      f"system-prompt leakage, refusal tests; organic mean "
                      f"{baseline.describe(SIGNAL_BY_NAME['security_probes'])['organic_mean']:.1%}), and the rest "
                      f"of its traffic is not flagged: reported as probing, not extraction")
    if status == "evaluation":
        share, cold = _share(row, "benchmark_count"), _share(row, "temp0_count")
        resent, passes = _value(row, "resent_share", 0.0), _value(row, "pass_share", 0.0)
        return Reason("evaluation", "info", share, p["benchmark_format"],
                      f"{share:.0%} of {n:,} queries are formatted as benchmark items, {cold:.0%} are at "
                      f"temperature 0 and {resent:.0%} re-send an earlier prompt ({passes:.0%} of distinct prompts "
                      f"sent equally often or one pass behind: whole passes), over "
                      f"{int(float(row['distinct_prompts'])):,} distinct prompts (at most {EVAL_MAX_ITEMS:,}), "
                      f"with no request for training data or grades: reported as an evaluation run, not extraction")
    return None


def judge(row: pd.Series | dict[str, Any], baseline: Baseline, fpr: float, *, authorised: bool = False,
          p: dict[str, float] | None = None) -> Verdict:
    """Score one account's features against the baseline (``p``: its p-values, if computed already)."""
    if p is None:
        p = baseline.p_values(row)
    fam = family_p_values(p)
    combined = baseline.combined_p(fisher_statistic(fam))
    reasons = []
    for signal in SIGNALS:
        if p[signal.name] <= REASON_ALPHA:
            value, detail = _detail(signal.name, row, baseline)
            reasons.append(Reason(signal.name, signal.family, value, p[signal.name], detail))
    reasons.sort(key=lambda r: r.p_value)
    queries = float(row["queries"])
    repeat_share = float(row.get("repeat_share", 0.0) or 0.0)
    routes = _routes(fam, p, row, baseline)
    suspicious = harvests(fam, p, row) and bool(routes) and combined <= fpr
    if queries < baseline.min_queries:
        status, flagged = "insufficient_data", False
    elif suspicious and repeat_share >= REPEAT_LIMIT:
        status, flagged = "repeated_runs", False
    elif not suspicious and probing(row, p):
        status, flagged = "probing", False
    elif evaluation(row, p, suspicious=suspicious):
        status, flagged = "evaluation", False
    elif suspicious and authorised:
        status, flagged = "authorised", False
    elif suspicious:
        status, flagged = "flagged", True
    else:
        status, flagged = "clear", False
    if status == "repeated_runs":
        reasons.insert(0, Reason("repeated_runs", "info", repeat_share, 1.0,
                                 f"{repeat_share:.0%} of queries repeat an earlier prompt exactly "
                                 f"(benchmark-like re-runs harvest nothing new); not flagged"))
    elif status in ("probing", "evaluation"):
        reasons.insert(0, _status_reason(status, row, p, baseline))
    elif status in ("flagged", "authorised"):
        reasons.insert(0, _rule_reason(routes, fam, row, p))
    verdict = Verdict(p_value=combined, flagged=flagged, status=status, family_p=fam, reasons=tuple(reasons))
    if status == "clear":
        verdict = _judge_substream(row, baseline, fpr, authorised, verdict)
    return verdict


_ROUTE_WORDS = {"elicitation": "it asks for privileged content",
                "value": "its requests are self-contained and generative or its answers long relative to its "
                         "prompts (at least as long as organic users get), sent by automation",
                "coverage": "it covers capability areas broadly, by automation, with answers longer than its "
                            "prompts"}


def _rule_reason(routes: list[str], fam: dict[str, float], row: Any, p: dict[str, float]) -> Reason:
    """The rule in words: harvest, the routes that made it valuable, and what did not explain it."""
    share = row.get("fixed_instruction_share", float("nan"))
    fixed = (f"; not one fixed instruction ({share:.0%} of distinct prompts give its most common instructions)"
             if share is not None and np.isfinite(share) else "")
    if fixed_instruction(row) and not supplied_material(row) and not bounded_slots(row, numbers=False) \
            and np.isfinite(_value(row, "slot_word_novelty")):
        fixed = (f"; one fixed instruction over open topics ({_value(row, 'slot_word_novelty'):.0%} of its later "
                 f"prompts bring a word no earlier prompt had): a generator, not a menu of the application's own")
    if fam[HARVEST] <= HARVEST_ALPHA:
        harvest = f"harvests new answers beyond organic accounts (harvest p = {fam[HARVEST]:.1e})"
    else:
        harvest = (f"a program has collected {int(float(row['distinct_prompts'])):,} distinct answers (at least "
                   f"{MATERIAL_REQUESTS} make a training set; harvest p = {fam[HARVEST]:.1e})")
    words = [_ROUTE_WORDS[r] for r in routes]
    if "elicitation" in routes:
        asked = [_PRIVILEGED[s.name] for s in SIGNALS if s.family == ELICITATION and p.get(s.name, 1.0) <= FAMILY_ALPHA]
        if asked:
            words[routes.index("elicitation")] += f" ({', '.join(asked)})"
    return Reason("extraction_rule", "rule", float(len(routes)), fam[HARVEST],
                  f"{harvest} and the harvest is valuable as training data: {'; '.join(words)}{fixed}")


# What each elicitation signal asks for, in the rule's words.
_PRIVILEGED = {"cot_elicitation": "reasoning traces", "grading_prompts": "grades", "identity_probing": "identity",
               "training_data_requests": "training data", "open_loop_tool_use": "one-shot agent runs",
               "orphan_followups": "follow-ups lifted from other conversations"}


def _judge_substream(row: Any, baseline: Baseline, fpr: float, authorised: bool, verdict: Verdict) -> Verdict:
    """Judge the account's templated sub-stream (every query in a template group) as an account of its own.

    Two tests per account now, so each runs at half the false-positive budget.
    """
    sub_queries = row.get(SUBSTREAM_PREFIX + "queries", float("nan"))
    if sub_queries is None or not np.isfinite(sub_queries):
        return verdict
    sub_row = {name: row.get(SUBSTREAM_PREFIX + name, float("nan")) for name in BASE_FEATURES}
    sub = judge(sub_row, baseline, fpr / 2.0, authorised=authorised)
    if sub.status not in ("flagged", "authorised"):
        return verdict
    share = float(row.get("substream_share", float("nan")))
    lead = Reason("templated_substream", "substream", share, min(1.0, 2.0 * sub.p_value),
                  f"a templated sub-stream of {int(sub_queries):,} queries ({share:.0%} of this account's traffic) "
                  f"is flagged on its own:")
    return Verdict(p_value=min(1.0, 2.0 * sub.p_value), flagged=sub.flagged, status=sub.status,
                   family_p=sub.family_p, reasons=(lead,) + sub.reasons)


def end_user_verdict(end_user: str, queries: int, account_queries: int, k: int, verdict: Verdict, *,
                     more: int = 0) -> Verdict:
    """An account's verdict through one of its ``k`` busy end users (each judged at fpr / k): the
    end user's verdict, its p-value Bonferroni-adjusted by ``k``, led by which end user it is and
    what share of the account's traffic it sent (``more``: other end users flagged too). The scan
    and the gateway both word it so."""
    share = queries / max(1, account_queries)
    p_value = min(1.0, verdict.p_value * k)
    standing = "flagged" if verdict.flagged or verdict.status == "authorised" else "elevated"
    others = f" ({more} more end users flagged too)" if more else ""
    lead = Reason("end_user_substream", "substream", share, p_value,
                  f"end user '{end_user}' (one of {k} busy end users) sent {queries:,} of this account's "
                  f"{account_queries:,} queries ({share:.0%}) and is {standing} on its own{others}:")
    return Verdict(p_value=p_value, flagged=verdict.flagged, status=verdict.status, family_p=verdict.family_p,
                   reasons=(lead,) + verdict.reasons)


def judge_frame(features: pd.DataFrame, baseline: Baseline, fpr: float,
                allowlist: Iterable[str] = ()) -> dict[str, Verdict]:
    allowed = set(allowlist)
    p_frame = baseline.p_value_frame(features)
    rows = features.to_dict("index")
    return {account: judge(rows[account], baseline, fpr, authorised=account in allowed, p=p)
            for account, p in zip(p_frame.index, p_frame.to_dict("records"))}
