"""The statistics of ``compare``: kernel two-sample tests, role-permutation tests, multiple testing.

* **MMD equality test** (Model Equality Testing, Gao et al. 2024): per prompt, the unbiased MMD²
  between two models' completions (RBF kernel on text features); the statistic is the sum over
  prompts, i.e. MMD with the kernel ``k((p, x), (p', x')) = 1[p = p'] k(x, x')`` on
  (prompt, completion) pairs. Permutations shuffle the model labels within each prompt.
* **Role-permutation test** (is the suspect closer to the protected model than the references
  are?): one number per prompt and model (a similarity, or minus a distance); the statistic is
  the sum over prompts of the suspect's value minus the references' mean. Under the null the
  suspect is one more independent model, exchangeable with the references, so each prompt's
  roles are shuffled independently. P-values are Monte Carlo, ``(1 + #{T_b >= T}) / (1 + B)``,
  exact in level whatever the number of prompts.
* **Holm–Bonferroni** over the tests that make up the verdict: valid under any dependence between
  them (they read the same completions, so Fisher's or Stouffer's independence would not hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rbf_bandwidth(features: np.ndarray, rng: np.random.Generator, sample: int = 1000) -> float:
    """Median pairwise distance (the usual heuristic), from a sample of rows."""
    rows = features[rng.choice(len(features), size=min(sample, len(features)), replace=False)]
    sq = np.square(rows).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * rows @ rows.T, 0.0)
    positive = d2[np.triu_indices(len(rows), 1)]
    positive = positive[positive > 1e-12]
    return float(np.sqrt(np.median(positive))) if positive.size else 1.0


def rbf_gram(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    sq = np.square(x).sum(1)[:, None] + np.square(y).sum(1)[None, :] - 2 * x @ y.T
    return np.exp(-np.maximum(sq, 0.0) / (2 * bandwidth ** 2))


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    n, m = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def _mmd2_by_labels(gram: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of ``labels`` (B × N booleans: True = first sample)."""
    k0 = gram - np.diag(np.diag(gram))
    a = labels.astype(np.float64)
    b = 1.0 - a
    n, m = a.sum(1), b.sum(1)
    ak, bk = a @ k0, b @ k0
    return ((ak * a).sum(1) / (n * (n - 1)) + (bk * b).sum(1) / (m * (m - 1)) - 2 * (ak * b).sum(1) / (n * m))


@dataclass(frozen=True)
class EqualityTest:
    statistic: float               # sum over prompts of MMD²
    p_value: float
    per_prompt_mmd2: np.ndarray
    per_prompt_p: np.ndarray
    permutations: int


def mmd_equality_test(x: list[np.ndarray], y: list[np.ndarray], bandwidth: float, *, permutations: int,
                      rng: np.random.Generator) -> EqualityTest:
    """Do two models draw their completions from one distribution? ``x[p]``, ``y[p]``: the
    feature rows of each model's completions to prompt ``p`` (at least 2 each)."""
    observed = np.zeros(len(x))
    null = np.zeros((permutations, len(x)))
    for p, (xp, yp) in enumerate(zip(x, y)):
        pooled = np.concatenate([xp, yp])
        gram = rbf_gram(pooled, pooled, bandwidth)
        labels = np.zeros(len(pooled), dtype=bool)
        labels[:len(xp)] = True
        observed[p] = _mmd2_by_labels(gram, labels[None])[0]
        shuffled = np.argsort(rng.random((permutations, len(pooled))), axis=1) < len(xp)
        null[:, p] = _mmd2_by_labels(gram, shuffled)
    total = observed.sum()
    p_value = (1 + np.count_nonzero(null.sum(1) >= total - 1e-12)) / (1 + permutations)
    per_prompt_p = (1 + (null >= observed[None, :] - 1e-12).sum(0)) / (1 + permutations)
    return EqualityTest(float(total), float(p_value), observed, per_prompt_p, permutations)


@dataclass(frozen=True)
class RoleTest:
    statistic: float               # mean over prompts of (suspect - mean of references)
    p_value: float
    per_prompt: np.ndarray         # the suspect's margin over the references' mean, per prompt
    effect_size: float             # Cohen's d_z of the per-prompt margins
    share_above_all: float         # share of prompts where the suspect beats every reference
    prompts: int
    permutations: int


def role_permutation_test(values: np.ndarray, *, permutations: int, rng: np.random.Generator) -> RoleTest:
    """``values``: prompts × models, column 0 the suspect, the others independent references;
    larger means closer to the protected model. One-sided: is the suspect closer?"""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values).all(1)]
    prompts, models = values.shape
    if models < 2:
        raise ValueError("a role-permutation test needs at least one reference")
    k = models - 1
    rowsum = values.sum(1)
    margin = values[:, 0] - (rowsum - values[:, 0]) / k
    observed = float(margin.mean()) if prompts else 0.0
    roles = rng.integers(0, models, size=(permutations, prompts))
    picked = values[np.arange(prompts)[None, :], roles]                # B × P: the value in the suspect's role
    null = ((1 + 1 / k) * picked - rowsum[None, :] / k).mean(1) if prompts else np.zeros(permutations)
    p_value = (1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + permutations)
    sd = float(margin.std(ddof=1)) if prompts > 1 else 0.0
    above_all = float((values[:, :1] > values[:, 1:]).all(1).mean()) if prompts else 0.0
    return RoleTest(observed, float(p_value), margin, observed / sd if sd > 0 else 0.0, above_all, prompts,
                    permutations)


def min_role_p(prompts: int, references: int) -> float:
    """The smallest p-value a role-permutation test over ``prompts`` can give, exactly."""
    return float((references + 1.0) ** -prompts)


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error, any dependence)."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()
