"""Text features and per-prompt similarities between models' completions.

Embeddings are all-MiniLM-L6-v2 (``minilm``, about 60 texts/s on 2 cores) or the hashing trick
(``hashing``: bag of words, no model, instant). n-grams are word n-grams over
``detect.text.tokens`` (lowercased, numbers masked), hashed to 64-bit ints.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from distillguard.detect.text import hashed_embeddings, minilm_embeddings, tokens

EMBEDDERS = ("minilm", "hashing")


def embed(texts: list[str], embedder: str) -> np.ndarray:
    """L2-normalised vectors, one per text (an empty text gets the zero vector)."""
    if embedder == "minilm":
        vectors = np.zeros((len(texts), 384), dtype=np.float32)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        if idx:
            vectors[idx] = minilm_embeddings([texts[i] for i in idx])
        return vectors
    if embedder == "hashing":
        return hashed_embeddings(texts, dim=1024)
    raise ValueError(f"unknown embedder {embedder!r}")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = tokens(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of rows (rows are unit vectors or zero)."""
    if not len(a) or not len(b):
        return float("nan")
    return float((a @ b.T).mean())


def containment(reference: set, other: set) -> float:
    """Share of ``other``'s n-grams that also occur in ``reference`` (NaN when ``other`` has none)."""
    return len(other & reference) / len(other) if other else float("nan")


def exclusive_shared(protected: set, models: list[set], prompt_ngrams: set) -> list[set]:
    """For each model: the protected model's n-grams it shares and no other model does (and the
    prompt does not contain, which anyone could echo)."""
    out = []
    for i, mine in enumerate(models):
        others = set().union(*(m for j, m in enumerate(models) if j != i))
        out.append((protected & mine) - others - prompt_ngrams)
    return out


def phrase_counter(per_prompt: list[set]) -> Counter:
    """How many prompts each phrase was shared on."""
    counts: Counter = Counter()
    for phrases in per_prompt:
        counts.update(phrases)
    return counts
