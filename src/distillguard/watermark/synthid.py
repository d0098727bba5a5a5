"""SynthID-Text detection with exact p-values, on ``transformers``' own g-value function.

Generation uses ``transformers``' ``SynthIDTextWatermarkLogitsProcessor`` (tournament sampling over
``depth`` layers, each layer keyed by one of the cohort's keys). For a token after a context of
``ngram_len - 1`` tokens, each layer's g-value is a bit read from a fixed public table at a
position given by a keyed hash of the n-gram; watermarked text prefers tokens whose g-values are 1.

We score with the library's ``compute_ngram_keys`` (the same hash generation used) and test the
share of ones with an exact binomial test:

* positions whose context already occurred earlier in the text are left out (the generator does
  not watermark a repeated context; the library's detector masks them the same way);
* every table position is counted once (two n-grams that hash to the same position read the same
  bit, so they are not independent evidence); then, under the null, the bits read are a random
  sample of the table and the null rate is the table's share of ones.

The library's Bayesian detector must be trained per model; this test needs no training and gives
a p-value a reader can check.
"""

from __future__ import annotations

import numpy as np
import torch

from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import Score, score_counts


class SynthIDDetector:
    """Scores token sequences against every cohort's SynthID keys."""

    def __init__(self, keys: KeySet, vocab_size: int) -> None:
        from transformers import SynthIDTextWatermarkingConfig

        self.keys = keys
        self.vocab_size = vocab_size
        self.ngram_len = keys.ngram_len
        self.processors = [SynthIDTextWatermarkingConfig(**keys.synthid_config(c)).construct_processor(
            vocab_size, torch.device("cpu")) for c in range(keys.total)]
        table = self.processors[0].sampling_table.numpy().astype(bool)
        self.table = table
        self.ratio = float(table.mean())             # the null rate of a g-value

    def _positions(self, ids: np.ndarray, cohort: int) -> np.ndarray:
        """Distinct table positions read by the scored n-grams of one sequence (all layers)."""
        n = self.ngram_len
        if ids.size < n:
            return np.zeros(0, dtype=np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(ids, n)           # (T - n + 1, n)
        _, first = np.unique(windows[:, :-1], axis=0, return_index=True)     # first occurrence of each context
        keep = np.sort(first)
        ngrams = torch.from_numpy(np.ascontiguousarray(windows[keep]))[None]
        hashed = self.processors[cohort].compute_ngram_keys(ngrams)[0].numpy()   # (kept, depth)
        return np.unique(hashed % self.table.size)

    def _check(self, ids: np.ndarray, i: int) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise BadInputError(f"text {i}: token id outside the vocabulary of {self.vocab_size} (tokenizer "
                                "mismatch?)", field="token_ids")
        return ids

    def score_many(self, sequences: list[np.ndarray], cohort: int = 0) -> list[Score]:
        out = []
        for i, seq in enumerate(sequences):
            pos = self._positions(self._check(seq, i), cohort)
            out.append(score_counts(int(self.table[pos].sum()), int(pos.size), self.ratio))
        return out

    def score_pooled(self, sequences: list[np.ndarray], cohort: int = 0) -> Score:
        parts = [self._positions(self._check(seq, i), cohort) for i, seq in enumerate(sequences)]
        pos = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return score_counts(int(self.table[pos].sum()), int(pos.size), self.ratio)
