"""Open weights: does the suspect find the protected model's completions unusually likely?

A model trained on another model's outputs assigns those outputs high likelihood. But so does any
better language model, and model-written text is easier than human text for every model. So the
test is a difference of differences. For each of the protected model's completions ``x``::

    d(x) = loglik_S(x) - mean_R loglik_R(x)          (nats per byte; S suspect, R references)

and the same difference ``e(y)`` on *calibration* texts ``y`` that none of the models wrote
(human-written answers from the tail of the ShareGPT corpus, which the lab's models never trained
on, or the user's own file). A suspect that is merely a better or worse model than the references
shifts ``d`` and ``e`` alike; a distilled one raises ``d`` only. ``d`` is averaged per prompt (the
completions of one prompt are not independent), and the per-prompt means are compared with the
calibration values by a one-sided Mann–Whitney U test (``scipy.stats``). The effect size is the
common-language effect ``P(d > e)`` and the shift in nats per byte.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CALIBRATION_SKIP = 9000      # past the default model's, the distillation lab's and the rival's text


def calibration_pairs(n: int, max_chars: int = 300, skip: int = CALIBRATION_SKIP) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of real conversations, answers cut at a word boundary near ``max_chars``
    (completions and calibration texts should be of similar length: per-byte likelihood drifts
    with position)."""
    from distillguard.lab.corpus import load_corpus

    out: list[tuple[str, str]] = []
    for conv in load_corpus()[skip:]:
        human, answer = conv.turns[0]
        if not (10 <= len(human) <= 400) or len(answer) < 40:
            continue
        cut = answer[:max_chars]
        if len(answer) > max_chars and " " in cut:
            cut = cut[:cut.rindex(" ")]
        out.append((human, " " + cut.strip()))
        if len(out) >= n:
            break
    return out


@dataclass(frozen=True)
class LikelihoodTest:
    p_value: float
    statistic: float               # Mann–Whitney U
    shift: float                   # median d minus median e, nats per byte
    common_language: float         # P(d > e)
    protected_margin: np.ndarray   # per prompt: mean d
    calibration_margin: np.ndarray


def likelihood_test(suspect_on_protected: np.ndarray, references_on_protected: np.ndarray,
                    suspect_on_calibration: np.ndarray, references_on_calibration: np.ndarray,
                    prompt_index: np.ndarray) -> LikelihoodTest:
    """Arrays: the suspect's log-likelihood of each protected completion (n), the references' (k × n),
    and the same on calibration texts (c, k × c); ``prompt_index`` maps completions to prompts."""
    with warnings.catch_warnings():       # a completion no model could score (empty) is NaN and dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        d = suspect_on_protected - np.nanmean(references_on_protected, axis=0)
        e = suspect_on_calibration - np.nanmean(references_on_calibration, axis=0)
    keep = np.isfinite(d)
    prompts = np.unique(prompt_index[keep])
    per_prompt = np.array([d[keep & (prompt_index == p)].mean() for p in prompts])
    e = e[np.isfinite(e)]
    u, p_value = stats.mannwhitneyu(per_prompt, e, alternative="greater")
    return LikelihoodTest(float(p_value), float(u), float(np.median(per_prompt) - np.median(e)),
                          float(u / (per_prompt.size * e.size)), per_prompt, e)
