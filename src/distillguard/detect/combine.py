"""Combining per-signal p-values: a Bonferroni minimum within each family, Fisher's statistic
across families. Shared by the baseline (which fits the statistic's null) and scoring (which
judges with it), so neither imports the other."""

from __future__ import annotations

import math

from distillguard.detect.signals import FAMILIES, SIGNALS


def family_p_values(p: dict[str, float]) -> dict[str, float]:
    """Bonferroni-adjusted minimum p-value within each family."""
    return {family: bonferroni_min([p[s.name] for s in SIGNALS if s.family == family]) for family in FAMILIES}


def bonferroni_min(ps: list[float]) -> float:
    return min(1.0, min(ps) * len(ps)) if ps else 1.0


def fisher_statistic(family_p: dict[str, float]) -> float:
    return float(-2.0 * sum(math.log(max(family_p[f], 1e-300)) for f in FAMILIES))
