"""What ``compare`` returns: one result per test, a verdict over them, examples and caveats.

The verdict's p-value is the smallest Holm–Bonferroni-adjusted p-value of the tests that make it
up: the chance, were the suspect independent of the protected model, that any of these tests
would come out at least this extreme. Confidence is one minus it. Holm holds whatever the
dependence between the tests (they read the same completions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from distillguard.compare.stats import holm

CAVEATS = (
    "Shared training data: models trained on the same public text (or on the same other model's "
    "outputs, e.g. ChatGPT conversations) resemble each other without one copying the other. The references "
    "should be independent models of the same kind and vintage as the suspect.",
    "Same base model: two fine-tunes of one base model share its habits; a suspect built on the same "
    "open base as the protected model will look closer to it than references built on other bases.",
    "Exchangeability: the similarity tests assume that, were the suspect independent, it would be one more model "
    "like the references. A suspect much stronger or weaker than every reference breaks that assumption; "
    "the likelihood test corrects for overall strength, the others do not.",
    "Sampling: completions are sampled at the stated temperature; endpoints that change between queries "
    "(versions, system prompts, caching) add noise. A non-significant result is absence of evidence at "
    "this number of queries, not evidence of independence.",
    "Identity answers: many models trained on public chat logs name other companies' assistants; a name "
    "counts only as evidence against the references' base rate.",
)


@dataclass(frozen=True)
class TestResult:
    name: str
    title: str
    question: str
    statistic: float | None = None
    statistic_name: str = ""
    p_value: float | None = None
    effect_size: float | None = None
    effect_name: str = ""
    in_verdict: bool = True
    skipped: str | None = None
    stands_out: bool | None = None         # beyond every reference put in the suspect's role (None: < 2 references)
    detail: dict[str, Any] = field(default_factory=dict)
    p_value_holm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Verdict:
    finding: str
    distilled: bool
    p_value: float | None
    confidence: float | None
    alpha: float
    method: str
    deciding_test: str | None

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def decide(tests: list[TestResult], alpha: float) -> tuple[list[TestResult], Verdict]:
    """Holm-adjust the verdict's tests and state the finding. A test supports the finding when its
    adjusted p-value is at most ``alpha`` and, where it can be checked (two or more references),
    the suspect also stands out beyond the references' own spread (``battery.stands_out``): a probe-level test alone
    cannot tell a copy from a model that merely differs from these particular references."""
    counted = [t for t in tests if t.in_verdict and t.skipped is None and t.p_value is not None]
    adjusted = holm([t.p_value for t in counted]) if counted else []
    by_name = {t.name: a for t, a in zip(counted, adjusted)}
    tests = [TestResult(**{**asdict(t), "p_value_holm": by_name.get(t.name)}) for t in tests]
    method = (f"Holm–Bonferroni over {len(counted)} test(s) ({', '.join(t.name for t in counted)}), valid under "
              "any dependence between them; a test counts only if the suspect also stands out (3 SD) beyond the "
              "references' own spread, each put in its role (checked with two or more references)")
    if not counted:
        return tests, Verdict("no test could be run", False, None, None, alpha, method, None)
    supporting = [t for t in counted if t.stands_out is not False]
    best = min(supporting or counted, key=lambda t: by_name[t.name])
    p = by_name[best.name]
    if supporting and p <= alpha:
        return tests, Verdict(f"the suspect mirrors the protected model more than independent models do "
                              f"(p = {p:.2g} after Holm, led by {best.title[0].lower() + best.title[1:]})",
                              True, p, 1.0 - p, alpha, method, best.name)
    low = [t for t in counted if by_name[t.name] <= alpha]
    if low:
        finding = (f"no finding: {', '.join(t.name for t in low)} significant against the probes (p = "
                   f"{min(by_name[t.name] for t in low):.2g}) but the suspect does not stand out beyond the "
                   "references' own spread; add independent references")
    elif p <= 0.05:
        finding = f"weak evidence only (p = {p:.2g} after Holm, above alpha = {alpha:g})"
    else:
        finding = f"no evidence that the suspect mirrors the protected model (p = {p:.2g} after Holm)"
    return tests, Verdict(finding, False, p, 1.0 - p, alpha, method, best.name)


@dataclass(frozen=True)
class CompareResult:
    models: list[dict[str, Any]]
    probes: dict[str, Any]
    settings: dict[str, Any]
    tests: list[TestResult]
    verdict: Verdict
    examples: list[dict[str, Any]]
    shared_phrases: list[dict[str, Any]]
    queries: dict[str, int]
    per_probe: list[dict[str, Any]] = field(default_factory=list)
    caveats: tuple[str, ...] = CAVEATS

    def test(self, name: str) -> TestResult:
        return next(t for t in self.tests if t.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "tests": [t.to_dict() for t in self.tests],
                "models": self.models, "probes": self.probes, "queries": self.queries, "settings": self.settings,
                "examples": self.examples, "shared_phrases": self.shared_phrases,
                "per_probe": _clean(self.per_probe), "caveats": list(self.caveats)}


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, floats rounded to 6 significant digits."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, np.integer):
        return int(value)
    return value
