"""Fast KGW watermark detection: no model, vectorised numpy, exact p-values.

Generation uses ``transformers``' ``WatermarkLogitsProcessor`` (lefthash, context width 1): after
token ``prev`` the green list is the first ``int(vocab * ratio)`` entries of
``torch.randperm(vocab)`` drawn from a generator seeded with ``hashing_key * prev``. This module
computes that green list once per (key, context token) with the same torch generator, keeps it as a
row of a boolean table, and scores whole corpora with array lookups:

* (context, token) pairs are de-duplicated (each scored once), as ``transformers``'
  ``WatermarkDetector(ignore_repeated_ngrams=True)`` does;
* z-score as in ``transformers``, and the exact one-sided binomial p-value.

``tests/test_watermark.py`` checks the counts and z-scores equal ``transformers.WatermarkDetector``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from distillguard.errors import BadInputError


class GreenTable:
    """Green lists of one hashing key over one vocabulary, computed on demand and cached.

    Rows are bit-packed (vocab / 8 bytes per context token: 4 KB for a 32k vocabulary) in a
    table that grows by doubling, so a lookup is one gather and one shift.
    """

    def __init__(self, hashing_key: int, vocab_size: int, greenlist_ratio: float) -> None:
        if vocab_size < 2:
            raise BadInputError(f"vocabulary of {vocab_size} tokens is too small", field="vocab_size")
        self.key = int(hashing_key)
        self.vocab_size = int(vocab_size)
        self.green_size = int(vocab_size * greenlist_ratio)
        self.row_of = np.full(vocab_size, -1, dtype=np.int64)     # context token -> row in the table
        self.bits = np.zeros((0, (vocab_size + 7) // 8), dtype=np.uint8)
        self.rows = 0
        self._generator = torch.Generator()

    def ensure(self, contexts: np.ndarray) -> None:
        """Compute the green lists of the context tokens not seen yet."""
        missing = contexts[self.row_of[contexts] < 0]
        if missing.size == 0:
            return
        missing = np.unique(missing)
        need = self.rows + missing.size
        if need > self.bits.shape[0]:
            grown = np.zeros((max(need, 2 * self.bits.shape[0], 64), self.bits.shape[1]), dtype=np.uint8)
            grown[: self.rows] = self.bits[: self.rows]
            self.bits = grown
        row = np.zeros(self.vocab_size, dtype=bool)
        gen = self._generator
        for i, prev in enumerate(missing.tolist()):
            gen.manual_seed((self.key * prev) % (2**64 - 1))
            perm = torch.randperm(self.vocab_size, generator=gen)
            row[:] = False
            row[perm[: self.green_size].numpy()] = True
            self.bits[self.rows + i] = np.packbits(row)
        self.row_of[missing] = np.arange(self.rows, need)
        self.rows = need

    def green(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        self.ensure(contexts)
        packed = self.bits[self.row_of[contexts], tokens >> 3]
        return ((packed >> (7 - (tokens & 7)).astype(np.uint8)) & 1).astype(bool)


@dataclass(frozen=True)
class Score:
    scored: int           # distinct (context, token) pairs scored
    green: int
    z: float
    p_value: float        # exact binomial upper tail

    def to_dict(self) -> dict[str, float | int]:
        return {"scored": self.scored, "green": self.green, "z": round(self.z, 4), "p_value": self.p_value}


def score_counts(green: int, scored: int, ratio: float) -> Score:
    if scored == 0:
        return Score(0, 0, 0.0, 1.0)
    z = (green - ratio * scored) / np.sqrt(scored * ratio * (1 - ratio))
    p = float(stats.binom.sf(green - 1, scored, ratio))
    return Score(scored, int(green), float(z), p)


def unique_pairs(token_ids: np.ndarray, vocab_size: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Distinct (context, token) pairs of a token sequence as ``context * vocab + token`` codes,
    minus ``exclude`` (codes to leave out, e.g. pairs present in a prompt)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise BadInputError("expected one sequence of token ids", field="token_ids")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise BadInputError(f"token id outside the vocabulary of {vocab_size} (tokenizer mismatch?)",
                            field="token_ids")
    codes = np.unique(ids[:-1] * vocab_size + ids[1:]) if ids.size >= 2 else np.zeros(0, dtype=np.int64)
    if exclude is not None and exclude.size:
        codes = codes[~np.isin(codes, exclude, assume_unique=False)]
    return codes


class KGWDetector:
    """Scores token sequences against one or many hashing keys (one per cohort)."""

    def __init__(self, keys: list[int], vocab_size: int, greenlist_ratio: float = 0.25) -> None:
        self.ratio = greenlist_ratio
        self.vocab_size = vocab_size
        self.tables = [GreenTable(k, vocab_size, greenlist_ratio) for k in keys]

    def green_count(self, codes: np.ndarray, key_index: int) -> int:
        contexts, tokens = np.divmod(codes, self.vocab_size)
        return int(self.tables[key_index].green(contexts, tokens).sum())

    def score(self, token_ids: np.ndarray, key_index: int = 0, exclude: np.ndarray | None = None) -> Score:
        codes = unique_pairs(token_ids, self.vocab_size, exclude)
        return score_counts(self.green_count(codes, key_index), codes.size, self.ratio)

    def score_many(self, sequences: list[np.ndarray], key_index: int = 0) -> list[Score]:
        """Score many texts at once (one de-duplication, one lookup, vectorised p-values)."""
        v = self.vocab_size
        parts = []
        for i, seq in enumerate(sequences):
            ids = np.asarray(seq, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= v):
                raise BadInputError(f"text {i}: token id outside the vocabulary of {v} (tokenizer mismatch?)",
                                    field="token_ids")
            if ids.size >= 2:
                parts.append(i * v * v + ids[:-1] * v + ids[1:])
        if not parts:
            return [score_counts(0, 0, self.ratio) for _ in sequences]
        codes = np.unique(np.concatenate(parts))
        text, pair = np.divmod(codes, v * v)
        contexts, tokens = np.divmod(pair, v)
        green = self.tables[key_index].green(contexts, tokens)
        n = np.bincount(text, minlength=len(sequences))
        g = np.bincount(text, weights=green, minlength=len(sequences)).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(n > 0, (g - self.ratio * n) / np.sqrt(n * self.ratio * (1 - self.ratio)), 0.0)
        p = np.where(n > 0, stats.binom.sf(g - 1, np.maximum(n, 1), self.ratio), 1.0)
        return [Score(int(n[i]), int(g[i]), float(z[i]), float(p[i])) for i in range(len(sequences))]

    def score_pooled(self, sequences: list[np.ndarray], key_index: int = 0) -> Score:
        """One score for a whole corpus: every distinct (context, token) pair counted once over
        all texts (repeats across texts are not independent evidence either)."""
        v = self.vocab_size
        parts = [np.asarray(q, dtype=np.int64) for q in sequences]
        codes = [q[:-1] * v + q[1:] for q in parts if q.size >= 2]
        if not codes:
            return score_counts(0, 0, self.ratio)
        merged = np.unique(np.concatenate(codes))
        return score_counts(self.green_count(merged, key_index), merged.size, self.ratio)

    def score_all(self, token_ids: np.ndarray, exclude: np.ndarray | None = None) -> list[Score]:
        """One score per key, on the same de-duplicated pairs."""
        codes = unique_pairs(token_ids, self.vocab_size, exclude)
        return [score_counts(self.green_count(codes, k), codes.size, self.ratio) for k in range(len(self.tables))]
