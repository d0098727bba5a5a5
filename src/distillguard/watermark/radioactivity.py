"""Radioactivity: was a suspect model trained on our watermarked outputs? (Sander et al., 2024)

A model fine-tuned on KGW-watermarked text learns to prefer, after a context token, the tokens
that were green for it. Every test below scores the suspect against every cohort key (and control
keys, never used for generation, which must come out uniform) and Bonferroni-corrects the cohort
p-values for the number of cohorts.

* **open weights, ``distribution``** (the default): feed texts (ideally our own watermarked
  outputs, whose contexts the suspect saw in training) through the suspect and keep its whole
  next-token distribution (top ``topk`` tokens) at every position. The probability the suspect puts
  on each (context token, next token) pair is summed over the positions with that context, so each
  pair is scored once, with weight ``s``. The statistic is the green mass ``X = sum s * green``.
  Under the null (a suspect independent of the key) every green bit is a fair draw of the key, so
  ``P(X >= x) <= min_l exp(-l x) prod (1 - g + g e^(l s))`` (Chernoff; it holds for any number of
  pairs and is conservative for the fixed-size green lists KGW uses). That bound is the p-value
  reported. Probability on a token that already followed the same context earlier in the text
  being read is dropped: it may be copied from our watermarked input rather than learned.
* **open weights, ``greedy``**: Sander et al.'s reading mode: the suspect's greedy prediction at
  every position, (context, prediction) pairs de-duplicated, in-context copies excluded, exact
  binomial test. Weaker: a small suspect's greedy predictions repeat, so few pairs are left.
* **black box**: prompt the suspect through an OpenAI-compatible endpoint and score the tokens of
  its answers, tokenised with our tokenizer; pairs present in the prompts are excluded; exact
  binomial test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import GreenTable, KGWDetector, Score, score_counts


@dataclass
class RadioactivityResult:
    mode: str
    pairs: int                                   # distinct pairs scored
    cohorts: list[dict[str, Any]]                # per cohort: z, p, corrected p; best first
    controls: list[float] = field(default_factory=list)   # control keys' p-values
    method: str = "binomial"                     # distribution (open weights) or binomial (greedy, black box)
    mass: float | None = None                    # distribution: the probability mass scored

    @property
    def best(self) -> dict[str, Any]:
        return self.cohorts[0]

    def to_dict(self) -> dict[str, Any]:
        controls = np.asarray(self.controls)
        return {"mode": self.mode, "method": self.method, "pairs_scored": self.pairs,
                **({"mass_scored": self.mass} if self.mass is not None else {}), "cohorts": self.cohorts,
                "verdict": ("radioactive" if self.best["p_value_corrected"] < 1e-3 else "no evidence"),
                "controls": {"keys": len(self.controls), "p_values": [float(f"{p:.4g}") for p in self.controls],
                             "share_below_0.01": float((controls < 0.01).mean()) if controls.size else None}}


def _score_pairs(codes: np.ndarray, keys: KeySet, vocab_size: int, controls: int, mode: str,
                 method: str = "binomial") -> RadioactivityResult:
    cohort_keys = [keys.cohort_key(c) for c in range(keys.total)]
    control_keys = keys.control_keys(controls)
    detector = KGWDetector(cohort_keys + control_keys, vocab_size, keys.greenlist_ratio)
    scores: list[Score] = [score_counts(detector.green_count(codes, k), codes.size, keys.greenlist_ratio)
                           for k in range(len(cohort_keys) + len(control_keys))]
    cohorts = [{"cohort": c, "label": keys.label(c), **scores[c].to_dict(),
                "p_value_corrected": min(1.0, scores[c].p_value * keys.total)} for c in range(keys.total)]
    cohorts.sort(key=lambda r: r["p_value"])
    return RadioactivityResult(mode=mode, pairs=int(codes.size), cohorts=cohorts,
                               controls=[s.p_value for s in scores[keys.total:]], method=method)


def _pair_codes(ids: np.ndarray, nxt: np.ndarray, vocab: int) -> np.ndarray:
    return ids.astype(np.int64) * vocab + nxt.astype(np.int64)


def reading_mode(model: Any, tokenizer: Any, texts: Iterable[str], keys: KeySet, *, controls: int = 20,
                 block: int | None = None, method: str = "distribution", topk: int = 256, reference: Any = None,
                 progress: Callable[[int], None] | None = None) -> RadioactivityResult:
    """Open-weights test on ``texts`` (our watermarked outputs); ``method`` is ``distribution``
    (the suspect's next-token probabilities, Chernoff-bounded p-value) or ``greedy`` (its greedy
    predictions, exact binomial test). ``reference`` (distribution only) is a model whose
    next-token probabilities are subtracted from the suspect's: our own model without the
    watermark is the natural one (see the module notes)."""
    import torch

    if method not in ("distribution", "greedy"):
        raise BadInputError(f"unknown reading method {method!r} (distribution or greedy)", field="method")
    if reference is not None and method != "distribution":
        raise BadInputError("a reference model is used by the distribution method only", field="reference")
    vocab = int(model.config.vocab_size)
    if reference is not None and int(reference.config.vocab_size) < vocab:
        raise BadInputError(f"the reference model's vocabulary ({reference.config.vocab_size}) is smaller than the "
                            f"suspect's ({vocab}): they do not share a tokenizer", field="reference")
    block = block or int(getattr(model.config, "n_positions", None)
                         or getattr(model.config, "max_position_embeddings", 1024))
    if reference is not None:
        ref_block = int(getattr(reference.config, "n_positions", None)
                        or getattr(reference.config, "max_position_embeddings", 1024))
        block = min(block, ref_block)
        reference.eval()
    mass = _PairMass(vocab)
    predicted = []
    model.eval()
    done = 0
    with torch.no_grad():
        for text in texts:
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            done += 1
            if progress is not None:
                progress(done)
            if ids.size < 2:
                continue
            if ids.max() >= vocab:
                raise BadInputError("the texts' tokens fall outside the suspect's vocabulary (tokenizer mismatch?)")
            for start in range(0, ids.size - 1, block):
                chunk = ids[start:start + block]
                logits = model(input_ids=torch.from_numpy(chunk)[None]).logits[0, :, :vocab]
                if method == "greedy":
                    codes = _pair_codes(chunk, logits.argmax(-1).numpy(), vocab)
                    predicted.append(codes[~_seen_in_context(chunk, codes, vocab)])
                else:
                    probs, top = torch.softmax(logits.float(), -1).topk(min(topk, vocab), dim=-1)
                    if reference is not None:
                        ref_logits = reference(input_ids=torch.from_numpy(chunk)[None]).logits[0, :, :vocab]
                        probs = probs - torch.softmax(ref_logits.float(), -1).gather(-1, top)
                    mass.add(chunk, top.numpy(), probs.numpy())
    if method == "greedy":
        if not predicted:
            raise BadInputError("no text long enough to score (need at least 2 tokens)")
        return _score_pairs(np.unique(np.concatenate(predicted)), keys, vocab, controls, "open-weights", "greedy")
    if mass.empty:
        raise BadInputError("no text long enough to score (need at least 2 tokens)")
    return _score_mass(*mass.result(), keys, vocab, controls, reference=reference is not None)


class _PairMass:
    """Sums the suspect's probability on each (context token, next token) pair over all positions,
    leaving out pairs that occurred earlier in the chunk being read. Bounded memory: compacted
    (one entry per distinct pair) whenever the buffer grows past ``limit`` entries."""

    def __init__(self, vocab: int, limit: int = 4_000_000) -> None:
        self.vocab, self.limit = vocab, limit
        self.codes: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.pending = 0
        self.empty = True

    def add(self, chunk: np.ndarray, top: np.ndarray, probs: np.ndarray) -> None:
        v = self.vocab
        t_len = chunk.size
        codes = chunk[:, None] * v + top                                   # (T, k) candidate pairs
        # A pair (x_s, x_{s+1}) is in context for predictions at t > s.
        actual = chunk[:-1] * v + chunk[1:]
        first = {}
        for s_pos, code in enumerate(actual.tolist()):
            first.setdefault(code, s_pos)
        if first:
            keys_ = np.fromiter(first.keys(), dtype=np.int64, count=len(first))
            pos = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            order = np.argsort(keys_)
            keys_, pos = keys_[order], pos[order]
            idx = np.clip(np.searchsorted(keys_, codes), 0, keys_.size - 1)
            hit = (keys_[idx] == codes) & (pos[idx] < np.arange(t_len)[:, None])
            probs = np.where(hit, 0.0, probs)
        self.codes.append(codes.ravel())
        self.weights.append(probs.ravel().astype(np.float64))
        self.pending += codes.size
        self.empty = False
        if self.pending > self.limit:
            self._compact()

    def _compact(self) -> None:
        codes, inverse = np.unique(np.concatenate(self.codes), return_inverse=True)
        weights = np.bincount(inverse, weights=np.concatenate(self.weights))
        self.codes, self.weights, self.pending = [codes], [weights], codes.size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._compact()
        keep = self.weights[0] != 0
        return self.codes[0][keep], self.weights[0][keep]


def chernoff_p(green_mass: float, weights: np.ndarray, ratio: float, grid: np.ndarray) -> float:
    """Upper bound on P(sum w_i B_i >= green_mass), B_i independent Bernoulli(ratio): the minimum
    over ``grid`` (values of lambda >= 0) of exp(-lambda * x) * E exp(lambda * X)."""
    log_mgf = _log_mgf(weights, ratio, grid)
    return float(min(1.0, np.exp(np.min(log_mgf - grid * green_mass))))


def _log_mgf(weights: np.ndarray, ratio: float, grid: np.ndarray) -> np.ndarray:
    return np.array([np.log1p(ratio * np.expm1(lam * weights)).sum() for lam in grid])


def _score_mass(codes: np.ndarray, weights: np.ndarray, keys: KeySet, vocab: int, controls: int,
                reference: bool = False) -> RadioactivityResult:
    ratio = keys.greenlist_ratio
    # KGW's green lists have a fixed size, so the bits of one context are not quite independent:
    # with weights of mixed sign (a reference subtracted) that can raise the variance by up to
    # V / (V - 1). Deviations are shrunk by that factor before the bound (0.01 % for 4,096 tokens).
    shrink = float(np.sqrt((vocab - 1) / vocab)) if reference else 1.0
    cohort_keys = [keys.cohort_key(c) for c in range(keys.total)]
    all_keys = cohort_keys + keys.control_keys(controls)
    contexts, tokens = np.divmod(codes, vocab)
    total = float(weights.sum())
    sd = float(np.sqrt(ratio * (1 - ratio) * np.square(weights).sum()))
    # Lambda grid: around the normal optimum lambda = z / sd, up to where a bound of 1e-300 is reached.
    grid = np.concatenate([[0.0], np.geomspace(1e-3 / max(sd, 1e-12), 60.0 / max(sd, 1e-12), 160)])
    log_mgf = _log_mgf(weights, ratio, grid)
    scores = []
    for key in all_keys:
        green = GreenTable(key, vocab, ratio).green(contexts, tokens)
        x = ratio * total + shrink * (float(weights[green].sum()) - ratio * total)
        z = (x - ratio * total) / sd if sd > 0 else 0.0
        p = float(min(1.0, np.exp(np.min(log_mgf - grid * x))))
        scores.append({"green_mass": round(x, 3), "z": round(z, 4), "p_value": p})
    cohorts = [{"cohort": c, "label": keys.label(c), "scored": int(codes.size), **scores[c],
                "p_value_corrected": min(1.0, scores[c]["p_value"] * keys.total)} for c in range(keys.total)]
    cohorts.sort(key=lambda r: (r["p_value"], -r["z"]))
    return RadioactivityResult(mode="open-weights", pairs=int(codes.size), cohorts=cohorts,
                               controls=[s["p_value"] for s in scores[keys.total:]],
                               method="distribution minus reference" if reference else "distribution",
                               mass=round(float(np.abs(weights).sum()), 3))


def _seen_in_context(chunk: np.ndarray, predicted: np.ndarray, vocab: int) -> np.ndarray:
    """For each position t: is the predicted pair (x_t, guess) already in x_0..x_t? Such a
    prediction can be a copy of the watermarked text being read, not something learned."""
    actual = _pair_codes(chunk[:-1], chunk[1:], vocab)
    seen: set[int] = set()
    out = np.zeros(predicted.size, dtype=bool)
    for t in range(predicted.size):
        if t > 0:
            seen.add(int(actual[t - 1]))
        out[t] = int(predicted[t]) in seen
    return out


def black_box(answers: list[str], prompts: list[str], tokenizer: Any, vocab_size: int, keys: KeySet, *,
              controls: int = 20) -> RadioactivityResult:
    """Black-box test: the suspect's answers to ``prompts``, tokenised with our tokenizer."""
    codes, present = [], []
    for text in answers:
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if ids.size >= 2:
            codes.append(_pair_codes(ids[:-1], ids[1:], vocab_size))
    for text in prompts:
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if ids.size >= 2:
            present.append(_pair_codes(ids[:-1], ids[1:], vocab_size))
    if not codes:
        raise BadInputError("the suspect's answers are empty: nothing to score")
    merged = np.unique(np.concatenate(codes))
    if present:
        merged = merged[~np.isin(merged, np.unique(np.concatenate(present)))]
    return _score_pairs(merged, keys, vocab_size, controls, "black-box")


async def query_suspect(url: str, prompts: list[str], *, model: str = "suspect", api_key: str | None = None,
                        max_tokens: int = 128, concurrency: int = 4, timeout: float = 120.0) -> list[str]:
    """The suspect's answers to ``prompts`` over an OpenAI-compatible chat endpoint."""
    import asyncio

    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    semaphore = asyncio.Semaphore(concurrency)

    async def ask(client: httpx.AsyncClient, prompt: str) -> str:
        async with semaphore:
            r = await client.post("/v1/chat/completions", headers=headers, json={
                "model": model, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]})
        if r.status_code != 200:
            raise BadInputError(f"the suspect endpoint answered HTTP {r.status_code}: {r.text[:200]}", source=url)
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise BadInputError("the suspect endpoint's answer is not an OpenAI chat completion", source=url) from None

    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout) as client:
            return list(await asyncio.gather(*(ask(client, p) for p in prompts)))
    except httpx.HTTPError as exc:
        raise BadInputError(f"cannot reach the suspect endpoint ({type(exc).__name__}: {exc})", source=url) from None
