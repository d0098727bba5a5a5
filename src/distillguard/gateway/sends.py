"""Live send counts: how often an account sent each request, for the whole-pass re-run criterion.

The batch scan reads an evaluation re-run from the send count of every distinct request
(``detect.features.prompt_space``, ``pass_share``; ``scoring.rerun``). The live state keeps a
Bloom filter of requests, which says whether a request was seen, not how often. An account that
never re-sends has nothing to count, so :class:`SendCounts` is allocated lazily, on the account's
first re-send (ordinary accounts keep their few kilobytes), and keyed by the request digest the
Bloom filter already carries (:func:`request_key`: the 52 bits of ``request_digest`` in
``RequestFacts.bloom_bits``; no new fact, so every replica folding the same facts counts the same).

Before the first re-send every request was new (a Bloom filter has no false negatives), so the
``pre`` requests sent until then were each sent once; their digests are not known, only a frozen
copy of the filter. A later request absent from the table is *claimed* as one of them (count 2)
when the frozen filter holds it, else it is *fresh* (count 1). A fresh request the frozen filter
falsely holds (probability ``p0``, from its fill) is miscounted as a re-send, which would favour
the exemption; the reading therefore assumes the most such errors the fresh requests make
plausible (mean + 3 sd; at least the claims beyond ``pre``) and counts them against it. Unknown
(the exemption is never given on it): a frozen filter too full (``p0 > MAX_FALSE_HIT``), a set past
``EVAL_MAX_ITEMS`` distinct requests, or a count past 65,535. Unknown is final; the table is freed.
"""

from __future__ import annotations

import math
import sys
from array import array

import numpy as np

from distillguard.detect.features import pass_share, prompt_space
from distillguard.detect.scoring import EVAL_MAX_ITEMS

MAX_FALSE_HIT = 0.1         # the frozen filter's false-hit rate past which counts are unknown (~1,700 requests)
_EMPTY = 0
_TOP = 1 << 63              # set on every stored key (0 marks an empty slot)
_MAX_COUNT = 65_535


def request_key(bloom_bits: tuple[int, ...], bloom_size: int) -> int:
    """The request's digest as its Bloom positions carry it (each position: ``log2(bloom_size)``
    bits of one 16-bit slice of ``request_digest``)."""
    shift = bloom_size.bit_length() - 1
    key = 0
    for i, b in enumerate(bloom_bits):
        key |= int(b) << (shift * i)
    return (key & (_TOP - 1)) | _TOP


class SendCounts:
    """Send counts per request since the account's first re-send (an open-addressing table of
    digests and 16-bit counts, 10 bytes a slot), with what is known of the requests before it."""

    __slots__ = ("keys", "counts", "size", "freq", "pre", "claimed", "fresh", "p0", "frozen")

    def __init__(self, bloom: bytearray, pre: int, hashes: int) -> None:
        self.frozen = bytes(bloom)
        fill = int.from_bytes(self.frozen, "little").bit_count() / (8 * len(self.frozen))
        self.p0 = fill ** hashes        # a new request's chance of a false hit in the frozen filter
        self.pre = pre                  # requests before the first re-send (each sent once, keys unknown)
        self.claimed = 0                # table entries taken for one of those (started at count 2)
        self.fresh = 0                  # table entries for requests the frozen filter did not hold
        self.keys = array("Q", bytes(8 * 64))
        self.counts = array("H", bytes(2 * 64))
        self.size = 0
        self.freq = array("q", bytes(8 * 4))   # freq[c]: table entries sent c times

    @property
    def usable(self) -> bool:
        return self.p0 <= MAX_FALSE_HIT

    def _in_frozen(self, bits: tuple[int, ...]) -> bool:
        frozen = self.frozen
        return all(frozen[b >> 3] & (1 << (b & 7)) for b in bits)

    def add(self, bits: tuple[int, ...], key: int) -> bool:
        """Count one send; False when the counts became unknown (the caller drops them)."""
        keys, mask = self.keys, len(self.keys) - 1
        i = key & mask
        while True:
            k = keys[i]
            if k == key:
                c = self.counts[i]
                if c >= _MAX_COUNT:
                    return False
                self._move(c, c + 1)
                self.counts[i] = c + 1
                return True
            if k == _EMPTY:
                break
            i = (i + 1) & mask
        if self._in_frozen(bits):
            self.claimed += 1       # past ``pre``, claims are certainly false hits (histogram)
            start = 2
        else:
            self.fresh += 1
            start = 1
        keys[i] = key
        self.counts[i] = start
        self.size += 1
        self._move(0, start)
        if self.size + self.pre - self.claimed > EVAL_MAX_ITEMS:
            return False
        if self.size > 0.6 * len(keys):
            self._grow()
        return True

    def _move(self, old: int, new: int) -> None:
        freq = self.freq
        while new >= len(freq):
            freq.extend([0] * len(freq))
        if old:
            freq[old] -= 1
        freq[new] += 1

    def _grow(self) -> None:
        old_keys, old_counts = self.keys, self.counts
        size = 2 * len(old_keys)
        self.keys, self.counts = array("Q", bytes(8 * size)), array("H", bytes(2 * size))
        mask = size - 1
        for k, c in zip(old_keys, old_counts):
            if k == _EMPTY:
                continue
            i = k & mask
            while self.keys[i] != _EMPTY:
                i = (i + 1) & mask
            self.keys[i], self.counts[i] = k, c

    def histogram(self) -> np.ndarray:
        """Distinct requests by send count (index: times sent), the frozen filter's plausible false
        hits counted against the exemption. A false hit is a new request whose count carries one
        send too many, and one request before the first re-send was never re-sent (count 1); the
        false hits are taken from the most common count of two or more (fewer requests sent
        equally often, and more sent once when that count is 2)."""
        hist = np.frombuffer(self.freq, dtype=np.int64).copy()
        hist[0] = 0
        errors = max(0, self.claimed - self.pre)     # claims past the requests before: false hits
        if self.fresh and self.p0 > 0.0:
            mean = self.fresh * self.p0 / (1.0 - self.p0)
            errors = max(errors, math.ceil(mean + 3.0 * math.sqrt(mean)))
        errors = min(self.claimed, errors)
        hist[1] += self.pre - self.claimed + errors
        left = errors
        while left > 0 and len(hist) > 2:
            top = 2 + int(np.argmax(hist[2:]))
            take = min(left, int(hist[top]))
            if take <= 0:
                break
            hist[top] -= take
            hist[top - 1] += take
            left -= take
        return hist

    def reading(self) -> tuple[float, float, float]:
        """Distinct requests, their set's estimated size (``prompt_space``) and the share sent
        equally often (``pass_share``): the batch scan's functions on the counts."""
        hist = self.histogram()
        sends = np.repeat(np.arange(len(hist), dtype=np.int64), hist)
        return float(len(sends)), prompt_space(sends), pass_share(sends)

    def memory_bytes(self) -> int:
        return (sys.getsizeof(self) + sys.getsizeof(self.keys) + sys.getsizeof(self.counts)
                + sys.getsizeof(self.freq) + sys.getsizeof(self.frozen))
