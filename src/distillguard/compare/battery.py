"""The test battery: ask every model the probes, then test whether the suspect mirrors the
protected model more than independent reference models do.

Tests (see docs/compare.md for what each one means):

* ``equality``: MMD two-sample test, protected vs suspect (reported; not part of the verdict,
  since any model that is not the protected model itself should fail it given enough samples);
* ``relative_mmd``, ``embedding``, ``ngram``, ``phrases``: per-prompt closeness to the protected
  model, suspect vs references, role-permutation tests (need at least one reference);
* ``likelihood``: open weights, the suspect's likelihood of the protected model's completions
  against the references', calibrated on independent text;
* ``identity``: the suspect names the protected model (needs its names);
* ``radioactivity``: the suspect learned our KGW watermark (needs the key file).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from distillguard.compare import features as F
from distillguard.compare.models import Model, same_tokenizer
from distillguard.compare.probes import Probe
from distillguard.compare.result import CompareResult, TestResult, decide
from distillguard.compare.stats import min_role_p, mmd_equality_test, rbf_bandwidth, role_permutation_test
from distillguard.errors import BadInputError

ROLE_TESTS = ("relative_mmd", "embedding", "ngram", "phrases")


@dataclass(frozen=True)
class CompareSettings:
    samples: int = 5                 # completions per prompt and model
    max_tokens: int = 64
    temperature: float = 1.0
    embedder: str = "minilm"         # or "hashing"
    permutations: int = 10_000
    alpha: float = 0.01
    seed: int = 0
    ngram: int = 3                   # n-gram overlap
    phrase_ngram: int = 4            # shared idiosyncratic phrases
    names: tuple[str, ...] = ()      # the protected model's names, for identity leakage
    calibration: int = 40            # calibration texts of the likelihood test

    def check(self) -> None:
        if self.samples < 2:
            raise BadInputError("at least 2 samples per prompt are needed: the MMD test compares a model's "
                                "completions with each other", field="samples")
        if self.temperature <= 0:
            raise BadInputError("temperature must be above 0: a greedy model gives one answer per prompt, no "
                                "distribution to compare", field="temperature")
        if self.embedder not in F.EMBEDDERS:
            raise BadInputError(f"unknown embedder {self.embedder!r} (minilm or hashing)", field="embedder")
        if not 0 < self.alpha < 1:
            raise BadInputError("alpha must lie strictly between 0 and 1", field="alpha")
        if self.max_tokens < 4:
            raise BadInputError("max_tokens must be at least 4", field="max_tokens")
        if self.calibration < 10:
            raise BadInputError("at least 10 calibration texts are needed", field="calibration")


def check_power(probes: int, references: int, tests: int, settings: CompareSettings) -> None:
    """Refuse a design whose smallest attainable p-value cannot reach alpha after Holm."""
    floor = 1.0 / (settings.permutations + 1)
    if floor * tests > settings.alpha:
        raise BadInputError(f"too few permutations ({settings.permutations}) for alpha {settings.alpha:g} over "
                            f"{tests} tests: at least {math.ceil(tests / settings.alpha)} needed", field="permutations")
    if references and min_role_p(probes, references) * tests > settings.alpha:
        needed = math.ceil(math.log(tests / settings.alpha) / math.log(references + 1))
        raise BadInputError(f"too few probes ({probes}) for a valid test at alpha {settings.alpha:g} with "
                            f"{references} reference(s) and {tests} tests: at least {needed} needed", field="probes")


def run_compare(protected: Model, suspect: Model, references: list[Model], probes: list[Probe],
                settings: CompareSettings, *, keys: Any = None, tokenizer_dir: str | None = None,
                calibration: list[tuple[str, str]] | None = None,
                progress: Callable[[str], None] | None = None) -> CompareResult:
    say = progress or (lambda message: None)
    settings.check()
    planned = (len(ROLE_TESTS) if references else 0) + int(_likelihood_possible(suspect, references)) \
        + int(bool(settings.names) and bool(references)) + int(keys is not None)
    if planned == 0:
        raise BadInputError("nothing to decide on: give at least one --reference (independent model), or --keys "
                            "(our watermark), or the protected model's --name with a reference")
    check_power(len(probes), len(references), planned, settings)
    models = [protected, suspect, *references]
    prompts = [p.prompt for p in probes]
    completions: list[list[list[str]]] = []
    for i, model in enumerate(models):
        say(f"sampling {model.label}: {len(prompts)} probes × {settings.samples}")
        completions.append(model.sample(prompts, settings.samples, max_tokens=settings.max_tokens,
                                        temperature=settings.temperature, seed=settings.seed + 1000 * i))
    rng = np.random.default_rng(settings.seed)
    say(f"embedding {len(models) * len(prompts) * settings.samples:,} completions ({settings.embedder})")
    flat = [t for per_model in completions for per_prompt in per_model for t in per_prompt]
    vectors = F.embed(flat, settings.embedder)
    n, P = settings.samples, len(prompts)
    feats = [[vectors[(i * P + p) * n:(i * P + p + 1) * n] for p in range(P)] for i in range(len(models))]
    bandwidth = rbf_bandwidth(vectors, rng)

    tests = [_equality(feats, bandwidth, models, settings, rng)]
    margins: np.ndarray | None = None
    phrases: list[dict[str, Any]] = []
    if references:
        say("similarity tests")
        role, margins, phrases = _role_tests(feats, completions, probes, bandwidth, settings, rng)
        tests += role
    else:
        tests += [TestResult(name, title, question, skipped="needs at least one --reference")
                  for name, title, question in _ROLE_TITLES]
    say("likelihood test")
    tests.append(_likelihood(protected, suspect, references, completions, prompts, settings, calibration))
    tests.append(_identity(models, completions, settings))
    if keys is not None:
        say("radioactivity test")
        tests.append(_radioactivity(protected, suspect, completions, prompts, keys, tokenizer_dir))
    tests, verdict = decide(tests, settings.alpha)
    return CompareResult(
        models=[{"role": role, "label": m.label, "location": m.location, "name": m.name,
                 "open_weights": m.open_weights} for role, m in zip(_roles(len(references)), models)],
        probes={"count": P, "suites": sorted({p.suite for p in probes})},
        settings={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        tests=tests, verdict=verdict, examples=_examples(probes, completions, feats, margins),
        shared_phrases=phrases, queries={m.label: P * n for m in models},
        per_probe=[{"probe": pr.id, "suite": pr.suite, "embedding_margin": None if margins is None else float(margins[i])}
                   for i, pr in enumerate(probes)])


def _roles(references: int) -> list[str]:
    return ["protected", "suspect", *(["reference"] * references)]


_ROLE_TITLES = (
    ("relative_mmd", "Closer in distribution (relative MMD)",
     "Is the suspect's completion distribution closer to the protected model's than the references' are?"),
    ("embedding", "Semantic similarity (embedding cosine)",
     "Do the suspect's completions mean what the protected model's mean, more than the references' do?"),
    ("ngram", "Wording overlap (word n-grams)",
     "Does the suspect reuse the protected model's wording more than the references do?"),
    ("phrases", "Shared idiosyncratic phrases",
     "Does the suspect share phrases with the protected model that no other model uses on that probe?"),
)


def _equality(feats, bandwidth, models, settings, rng) -> TestResult:
    permutations = min(settings.permutations, 2000)
    main = mmd_equality_test(feats[0], feats[1], bandwidth, permutations=permutations, rng=rng)
    refs = [mmd_equality_test(feats[0], feats[j], bandwidth, permutations=permutations, rng=rng)
            for j in range(2, len(models))]
    return TestResult(
        "equality", "Same distribution as the protected model (MMD, Gao et al. 2024)",
        "Could the suspect's completions come from the protected model itself? (A small p-value says no; "
        "every distinct model should get one given enough samples, so this test is not part of the verdict.)",
        statistic=main.statistic, statistic_name="sum over probes of MMD²", p_value=main.p_value,
        effect_size=float(main.per_prompt_mmd2.mean()), effect_name="mean MMD² per probe", in_verdict=False,
        detail={"bandwidth": bandwidth, "permutations": permutations,
                "probes_different_at_0.05": float((main.per_prompt_p < 0.05).mean()),
                "references": [{"label": models[j].label, "p_value": r.p_value,
                                "mean_mmd2": float(r.per_prompt_mmd2.mean())} for j, r in zip(range(2, len(models)), refs)]})


def _role_tests(feats, completions, probes, bandwidth, settings, rng):
    """Per probe, each candidate's (suspect's or a reference's) closeness to the protected model
    minus its mean closeness to the other candidates: a model that resembles every model (generic
    wording, common phrases) gains nothing; only closeness to the protected model in particular
    counts. The measure is symmetric in the candidates, so their roles can be permuted."""
    from distillguard.compare.stats import mmd2_unbiased, rbf_gram

    P, M = len(probes), len(completions) - 1            # M candidates: the suspect, then the references
    closeness = {name: np.zeros((P, M)) for name, _, _ in _ROLE_TITLES}
    shared_per_prompt: list[set] = []
    for p in range(P):
        grams = [set().union(*(F.word_ngrams(t, settings.ngram) for t in completions[i][p]))
                 for i in range(M + 1)]
        phrase_sets = [set().union(*(F.word_ngrams(t, settings.phrase_ngram) for t in completions[i][p]))
                       for i in range(M + 1)]
        exclusive = F.exclusive_shared(phrase_sets[0], phrase_sets[1:],
                                       F.word_ngrams(probes[p].prompt, settings.phrase_ngram))
        shared_per_prompt.append(exclusive[0])
        x = [feats[i][p] for i in range(M + 1)]
        grams_k = [rbf_gram(a, a, bandwidth) for a in x]
        mmd = np.zeros((M + 1, M + 1))
        cos = np.zeros((M + 1, M + 1))
        contain = np.zeros((M + 1, M + 1))
        for i in range(M + 1):
            for j in range(i + 1, M + 1):
                mmd[i, j] = mmd[j, i] = -mmd2_unbiased(grams_k[i], grams_k[j], rbf_gram(x[i], x[j], bandwidth))
                cos[i, j] = cos[j, i] = F.mean_cosine(x[i], x[j])
                contain[i, j] = F.containment(grams[j], grams[i])     # share of i's n-grams in j's
                contain[j, i] = F.containment(grams[i], grams[j])
        for name, matrix in (("relative_mmd", mmd), ("embedding", cos), ("ngram", contain)):
            closeness[name][p] = _beyond_peers(matrix)
        closeness["phrases"][p] = [len(e) for e in exclusive]
    tests = []
    for name, title, question in _ROLE_TITLES:
        values = closeness[name]
        r = role_permutation_test(values, permutations=settings.permutations, rng=rng)
        finite = values[np.isfinite(values).all(1)]
        spread = _reference_spread(finite)
        tests.append(TestResult(
            name, title, question, statistic=r.statistic,
            statistic_name=_STATISTIC_NAMES[name], p_value=r.p_value, effect_size=r.effect_size,
            effect_name="Cohen's d_z of the per-probe margin",
            stands_out=stands_out(r.statistic, spread),
            detail={"suspect_mean": float(finite[:, 0].mean()) if len(finite) else None,
                    "references_mean": float(finite[:, 1:].mean()) if len(finite) else None,
                    "references_in_the_suspect_role": spread,
                    "probes_used": r.prompts, "share_of_probes_suspect_closest": r.share_above_all,
                    "permutations": r.permutations}))
    counts = F.phrase_counter(shared_per_prompt)
    phrases = [{"phrase": " ".join(k), "probes": v} for k, v in counts.most_common(15)]
    return tests, closeness["embedding"][:, 0] - closeness["embedding"][:, 1:].mean(1), phrases


def _beyond_peers(matrix: np.ndarray) -> np.ndarray:
    """Row/column 0 is the protected model; ``matrix[i, j]`` is how close model i is to model j.
    Each candidate's closeness to the protected model minus its mean closeness to the other
    candidates."""
    to_protected = matrix[1:, 0]
    peers = matrix[1:, 1:].copy()
    np.fill_diagonal(peers, np.nan)
    with np.errstate(all="ignore"):
        return to_protected - np.nanmean(peers, axis=1)


STANDS_OUT_Z = 3.0


def stands_out(statistic: float, spread: list[float] | None) -> bool | None:
    """Is the suspect's statistic beyond the references' own (each reference put in the suspect's
    role) by ``STANDS_OUT_Z`` of their standard deviations, or above all of them when they agree
    exactly? A screen, not a test: with a few references their spread is itself uncertain. None
    with fewer than two references."""
    if spread is None:
        return None
    values = np.asarray(spread)
    sd = float(values.std(ddof=1))
    if sd <= 1e-12:
        return bool(statistic > values.max() + 1e-12)
    return bool((statistic - values.mean()) / sd >= STANDS_OUT_Z)


def _reference_spread(values: np.ndarray) -> list[float] | None:
    """Each reference put in the suspect's role against the other references (the suspect left
    out): how far independent models stand out by this measure. None with fewer than two."""
    k = values.shape[1] - 1
    if k < 2 or not len(values):
        return None
    refs = values[:, 1:]
    return [float((refs[:, j] - np.delete(refs, j, axis=1).mean(1)).mean()) for j in range(k)]


_STATISTIC_NAMES = {
    "relative_mmd": "mean over probes of (references' MMD² − suspect's MMD²) to the protected model",
    "embedding": "mean over probes of (suspect's − references' mean cosine to the protected model)",
    "ngram": "mean over probes of (suspect's − references' share of n-grams found in the protected model's)",
    "phrases": "mean over probes of (suspect's − references' count of exclusively shared phrases)",
}


def _likelihood_possible(suspect: Model, references: list[Model]) -> bool:
    return suspect.open_weights and any(r.open_weights for r in references)


def _likelihood(protected, suspect, references, completions, prompts, settings, calibration) -> TestResult:
    from distillguard.compare.likelihood import calibration_pairs, likelihood_test

    title = "Likelihood of the protected model's completions (open weights)"
    question = ("Does the suspect find the protected model's completions more likely than the references do, "
                "beyond how it compares with them on independent text?")
    local_refs = [r for r in references if r.open_weights]
    if not suspect.open_weights:
        return TestResult("likelihood", title, question, skipped="the suspect is an endpoint (needs open weights)")
    if not local_refs:
        return TestResult("likelihood", title, question, skipped="needs at least one local (open-weights) reference")
    texts = [t for per_prompt in completions[0] for t in per_prompt]
    index = np.repeat(np.arange(len(prompts)), settings.samples)
    flat_prompts = [prompts[i] for i in index]
    calib = calibration or calibration_pairs(settings.calibration)
    c_prompts, c_texts = [c[0] for c in calib], [c[1] for c in calib]
    scores = {}
    for model in [suspect, *local_refs]:
        model.check_round_trip(texts + c_texts)
        scores[model.label] = (model.log_likelihood(flat_prompts, texts), model.log_likelihood(c_prompts, c_texts))
    s, refs = scores[suspect.label], [scores[r.label] for r in local_refs]
    r = likelihood_test(s[0], np.stack([x[0] for x in refs]), s[1], np.stack([x[1] for x in refs]), index)
    spread = None
    if len(refs) >= 2:          # each reference in the suspect's role against the others
        spread = [likelihood_test(refs[j][0], np.stack([x[0] for i, x in enumerate(refs) if i != j]), refs[j][1],
                                  np.stack([x[1] for i, x in enumerate(refs) if i != j]), index).shift
                  for j in range(len(refs))]
    return TestResult(
        "likelihood", title, question, statistic=r.statistic, statistic_name="Mann–Whitney U (per-probe margins vs "
        "calibration margins)", p_value=r.p_value, effect_size=r.common_language,
        effect_name="P(margin on a protected completion > margin on a calibration text)",
        stands_out=stands_out(r.shift, spread),
        detail={"shift_nats_per_byte": r.shift, "references_in_the_suspect_role": spread, "suspect_nats_per_byte_protected": float(np.nanmean(s[0])),
                "references_nats_per_byte_protected": float(np.nanmean([np.nanmean(x[0]) for x in refs])),
                "suspect_nats_per_byte_calibration": float(np.nanmean(s[1])),
                "references_nats_per_byte_calibration": float(np.nanmean([np.nanmean(x[1]) for x in refs])),
                "completions": int(np.isfinite(s[0]).sum()), "calibration_texts": len(c_texts),
                "references_used": [m.label for m in local_refs]})


def _identity(models, completions, settings) -> TestResult:
    from scipy import stats

    title = "Identity leakage"
    question = "Does the suspect call itself by the protected model's name more often than the references do?"
    if not settings.names:
        return TestResult("identity", title, question, skipped="no --name given for the protected model")
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in settings.names) + r")\b", re.IGNORECASE)
    counts = [(sum(bool(pattern.search(t)) for per in completions[i] for t in per),
               sum(len(per) for per in completions[i])) for i in range(len(models))]
    detail = {"names": list(settings.names), "mentions": {m.label: {"answers": c[1], "naming": c[0]}
                                                          for m, c in zip(models, counts)}}
    if len(models) < 3:
        return TestResult("identity", title, question, skipped="needs at least one --reference (the base rate)",
                          detail=detail)
    s_hit, s_all = counts[1]
    r_hit, r_all = sum(c[0] for c in counts[2:]), sum(c[1] for c in counts[2:])
    table = [[s_hit, s_all - s_hit], [r_hit, r_all - r_hit]]
    _, p = stats.fisher_exact(table, alternative="greater")
    return TestResult("identity", title, question, statistic=s_hit / s_all, statistic_name="share of the suspect's "
                      "answers naming the protected model", p_value=float(p), effect_size=s_hit / s_all - r_hit / r_all,
                      effect_name="difference in naming rate (suspect − references)", detail=detail)


def _radioactivity(protected, suspect, completions, prompts, keys, tokenizer_dir) -> TestResult:
    from distillguard.watermark.radioactivity import black_box, reading_mode

    title = "Watermark radioactivity (Sander et al. 2024)"
    question = "Did the suspect learn the KGW watermark our model puts on the answers it serves?"
    if protected.open_weights:
        tokenizer, reference = protected.tokenizer, protected.model
    elif tokenizer_dir is not None:
        from distillguard.serve.hf import load_model

        tokenizer, reference = load_model(tokenizer_dir)
    else:
        raise BadInputError("--keys with an endpoint as the protected model needs --tokenizer (our model's "
                            "directory): the watermark is defined on its token ids", field="tokenizer")
    keys = keys.with_scheme("kgw")
    if suspect.open_weights and same_tokenizer(suspect.tokenizer, tokenizer):
        texts = [t for per in completions[0] for t in per]
        r = reading_mode(suspect.model, tokenizer, texts, keys, reference=reference)
        how = "open weights (reading mode on the protected model's completions, its own predictions subtracted)"
    else:
        answers = [t for per in completions[1] for t in per]
        r = black_box(answers, prompts, tokenizer, int(reference.config.vocab_size), keys)
        how = ("black box (the suspect's answers scored with our tokenizer)" + (
            "; its tokenizer differs from ours, so its weights cannot be read" if suspect.open_weights else ""))
    data = r.to_dict()
    best = r.best
    return TestResult("radioactivity", title, question, statistic=best["z"], statistic_name="z of the best cohort key",
                      p_value=best["p_value_corrected"], effect_size=best["z"],
                      effect_name="z-score of the best cohort key",
                      detail={"mode": how, "cohort": best["cohort"], "pairs_scored": data["pairs_scored"],
                              "method": data["method"], "controls": data["controls"]})


def _examples(probes, completions, feats, margins, top: int = 5) -> list[dict[str, Any]]:
    """The probes where the suspect agrees with the protected model most unusually."""
    P = len(probes)
    if margins is None:
        margins = np.array([F.mean_cosine(feats[0][p], feats[1][p]) for p in range(P)])
    out = []
    for p in np.argsort(-np.nan_to_num(margins, nan=-np.inf))[:top]:
        sims = feats[1][p] @ feats[0][p].T                  # suspect samples × protected samples
        s_i, a_i = np.unravel_index(int(np.argmax(sims)), sims.shape)
        out.append({"probe": probes[p].id, "suite": probes[p].suite, "prompt": probes[p].prompt,
                    "margin": float(margins[p]), "cosine": float(sims[s_i, a_i]),
                    "protected": completions[0][p][a_i], "suspect": completions[1][p][s_i],
                    "reference": completions[2][p][0] if len(completions) > 2 else None})
    return out
