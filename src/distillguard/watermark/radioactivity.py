"""Radioactivity: was a suspect model trained on our watermarked outputs? (Sander et al., 2024)

A model fine-tuned on KGW-watermarked text learns to prefer, after a context token, the tokens
that were green for it. Both modes collect (context token, suspect's token) pairs, score them
against every cohort key (and control keys), and run an exact binomial test:

* **open weights** (reading mode): feed texts (ideally our own watermarked outputs, whose
  contexts the suspect saw in training) through the suspect and take its greedy next-token
  prediction at every position; the pair is (actual token at t, predicted token at t + 1).
* **black box**: prompt the suspect through an OpenAI-compatible endpoint and score the tokens of
  its answers, tokenised with our tokenizer.

Pairs are de-duplicated (a pair is scored once however often it occurs). A prediction that
repeats a pair already in the context being read (reading mode), or a pair present in the prompts
(black box), is excluded: it may be a copy of our watermarked input rather than something the
suspect learned. Attribution tests every cohort key; p-values are
Bonferroni-corrected for the number of cohorts. Control keys (never used for generation) must
give uniform p-values; the result reports them so a reader can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import KGWDetector, Score, score_counts


@dataclass
class RadioactivityResult:
    mode: str
    pairs: int                                   # distinct pairs scored
    cohorts: list[dict[str, Any]]                # per cohort: z, p, corrected p; best first
    controls: list[float] = field(default_factory=list)   # control keys' p-values

    @property
    def best(self) -> dict[str, Any]:
        return self.cohorts[0]

    def to_dict(self) -> dict[str, Any]:
        controls = np.asarray(self.controls)
        return {"mode": self.mode, "pairs_scored": self.pairs, "cohorts": self.cohorts,
                "verdict": ("radioactive" if self.best["p_value_corrected"] < 1e-3 else "no evidence"),
                "controls": {"keys": len(self.controls), "p_values": [float(f"{p:.4g}") for p in self.controls],
                             "share_below_0.01": float((controls < 0.01).mean()) if controls.size else None}}


def _score_pairs(codes: np.ndarray, keys: KeySet, vocab_size: int, controls: int, mode: str) -> RadioactivityResult:
    cohort_keys = [keys.cohort_key(c) for c in range(keys.cohorts)]
    control_keys = keys.control_keys(controls)
    detector = KGWDetector(cohort_keys + control_keys, vocab_size, keys.greenlist_ratio)
    scores: list[Score] = [score_counts(detector.green_count(codes, k), codes.size, keys.greenlist_ratio)
                           for k in range(len(cohort_keys) + len(control_keys))]
    cohorts = [{"cohort": c, **scores[c].to_dict(), "p_value_corrected": min(1.0, scores[c].p_value * keys.cohorts)}
               for c in range(keys.cohorts)]
    cohorts.sort(key=lambda r: r["p_value"])
    return RadioactivityResult(mode=mode, pairs=int(codes.size), cohorts=cohorts,
                               controls=[s.p_value for s in scores[keys.cohorts:]])


def _pair_codes(ids: np.ndarray, nxt: np.ndarray, vocab: int) -> np.ndarray:
    return ids.astype(np.int64) * vocab + nxt.astype(np.int64)


def reading_mode(model: Any, tokenizer: Any, texts: Iterable[str], keys: KeySet, *, controls: int = 20,
                 block: int | None = None) -> RadioactivityResult:
    """Open-weights test: the suspect's greedy predictions on ``texts`` (our watermarked outputs)."""
    import torch

    vocab = int(model.config.vocab_size)
    block = block or int(getattr(model.config, "n_positions", None)
                         or getattr(model.config, "max_position_embeddings", 1024))
    predicted = []
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            if ids.size < 2:
                continue
            if ids.max() >= vocab:
                raise BadInputError("the texts' tokens fall outside the suspect's vocabulary (tokenizer mismatch?)")
            for start in range(0, ids.size - 1, block):
                chunk = ids[start:start + block]
                guess = model(input_ids=torch.from_numpy(chunk)[None]).logits[0].argmax(-1).numpy()
                codes = _pair_codes(chunk, guess, vocab)
                predicted.append(codes[~_seen_in_context(chunk, codes, vocab)])
    if not predicted:
        raise BadInputError("no text long enough to score (need at least 2 tokens)")
    return _score_pairs(np.unique(np.concatenate(predicted)), keys, vocab, controls, "open-weights")


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
