"""From per-signal p-values to one calibrated decision per account, with its reasons.

Extraction means pulling a lot of *new* output (harvest) that is either privileged
(elicitation: reasoning traces, grades, agent trajectories, training data) or broad and
automated (coverage together with automation). Busy legitimate traffic has some of these but
not that conjunction: a batch application harvests in one narrow task, a researcher elicits
at human volume, an evaluation re-runs a bounded set. So an account is flagged when

* its harvest family is significant (p <= ``HARVEST_ALPHA``),
* elicitation is significant, or coverage and automation both are (p <= ``FAMILY_ALPHA``;
  automation shown in the prompts themselves, not by timing alone: a reseller or any app with
  many users behind one key is broad and round the clock without extracting),
* most of its queries are not exact repeats of earlier ones (re-asking harvests nothing), and
* Fisher's combination of the four family p-values, calibrated on organic accounts by Brown's
  method, is at most the chosen false-positive rate.

The rule only removes flags from the calibrated test, so the organic false-positive rate stays
at or below ``fpr``; ``calibration`` in the scan output reports the rate measured on the baseline.
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
from distillguard.detect.signals import AUTOMATION, COVERAGE, ELICITATION, HARVEST, SIGNALS

HARVEST_ALPHA = 1e-3
FAMILY_ALPHA = 0.05
TIMING_SIGNALS = frozenset({"regular_cadence", "round_the_clock"})
REPEAT_LIMIT = 0.5
REASON_ALPHA = 1e-2


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
    status: str                     # flagged | clear | insufficient_data | repeated_runs | authorised
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
    evidence = fam[ELICITATION] <= FAMILY_ALPHA or (fam[COVERAGE] <= FAMILY_ALPHA and fam[AUTOMATION] <= FAMILY_ALPHA
                                                    and content_automation_p(p) <= FAMILY_ALPHA)
    suspicious = fam[HARVEST] <= HARVEST_ALPHA and evidence and combined <= fpr
    if queries < baseline.min_queries:
        status, flagged = "insufficient_data", False
    elif suspicious and repeat_share >= REPEAT_LIMIT:
        status, flagged = "repeated_runs", False
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
    verdict = Verdict(p_value=combined, flagged=flagged, status=status, family_p=fam, reasons=tuple(reasons))
    if status == "clear":
        verdict = _judge_substream(row, baseline, fpr, authorised, verdict)
    return verdict


def _judge_substream(row: Any, baseline: Baseline, fpr: float, authorised: bool, verdict: Verdict) -> Verdict:
    """Judge the account's largest templated sub-stream as an account of its own.

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
