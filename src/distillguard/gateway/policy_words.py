"""The policy's explanations in words: which reasons a person reads first, and what a limiting
rule does and when it turns into a block (:mod:`distillguard.gateway.policy`)."""

from __future__ import annotations

from typing import Any

from distillguard.detect.scoring import Verdict
from distillguard.detect.signals import ELICITATION

FAMILY_ORDER = {"substream": 0, "rule": 0.5, ELICITATION: 1, "harvest": 2, "value": 2.5, "coverage": 3,
                "automation": 4}


def intel_reasons(intel: Any, k: int = 2) -> str:
    """The strongest matches of peers' indicators (the scan's wording: peer, indicator, confidence, TLP)."""
    return "; ".join(m.detail() for m in sorted(intel.matches, key=lambda m: -m.weight)[:k])


def top_reasons(verdict: Verdict, k: int = 3) -> str:
    """The reasons a person should read first: what was asked for (privileged content), then how
    much, then how broadly and how mechanically; by p-value within each."""
    ranked = sorted((r for r in verdict.reasons if r.family != "info"),
                    key=lambda r: (FAMILY_ORDER.get(r.family, 9), r.p_value))
    return "; ".join(r.detail for r in ranked[:k])


def persists(rule: Any, whose: str = "") -> str:
    """(``rule``: a policy Rule) 'past a day and 1,000 more queries' for a sustained rule
    (``whose``: ' of the cluster's' reads '1,000 more of the cluster's queries')."""
    parts = ([duration(rule.sustained_s)] if rule.sustained_s > 0 else []) + (
        [f"{rule.sustained_queries:,} more{whose} queries"] if rule.sustained_queries > 0 else [])
    return "past " + " and ".join(parts)


def duration(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 86_400 == 0:
        days = int(seconds // 86_400)
        return "a day" if days == 1 else f"{days} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


def limited(rule: Any, rules: tuple[Any, ...]) -> str:
    """What a non-blocking flag rule does, in words, and when the flag blocks (the first sustained
    blocking rule on flags)."""
    parts = []
    if "strip_reasoning" in rule.actions:
        parts.append("reasoning stripped")
    if "shape" in rule.actions and rule.shape:
        parts.append(f"answers shaped ({rule.shape})")
    if "cap_max_tokens" in rule.actions and rule.max_tokens:
        parts.append(f"capped at {rule.max_tokens} tokens")
    if "throttle" in rule.actions:
        parts.append("rate limited")
    if "cohort" in rule.actions and rule.cohort:
        parts.append(f"watermarked (cohort {rule.cohort!r})")
    text = ", ".join(parts) or "limited"
    cluster = rule.when == "cluster_flagged"
    if cluster and "throttle" in rule.actions:
        text = text.replace("rate limited", "rate limited as one cluster")
    block = next((r for r in rules if r.when == rule.when and "block" in r.actions and r.sustained
                  and r.evidence in ("any", rule.evidence) and r.links in ("any", rule.links)), None)
    if block is not None:
        whose = " of the cluster's" if cluster else ""
        text += f" rather than blocked; blocked if the flag persists {persists(block, whose)}"
    return text
