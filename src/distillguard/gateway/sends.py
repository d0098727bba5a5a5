"""Live send counts: how often an account sent each request, for the whole-pass re-run criterion.

The batch scan reads an evaluation re-run from the send count of every distinct request
(``detect.features.prompt_space``, ``pass_share``; ``scoring.rerun``). The live state's Bloom
filter says whether a request was seen, not how often, and its false hits are cheap to craft
(a request whose four positions earlier requests already set), so it must not decide a re-send
here. :class:`SendCounts` keeps the request digests themselves (:func:`request_key`: the 52 bits
of ``request_digest`` that ``RequestFacts.bloom_bits`` carry; no new fact, so every replica
folding the same facts counts the same, in any order):

* until the account's first re-send, a log of its distinct digests (8 bytes each, at most
  ``MAX_BEFORE_RESEND``: an account that sends more distinct requests than that before re-sending
  any is no bounded benchmark re-run, and its counts become unknown);
* from the first re-send on, an open-addressing table of digests and 16-bit counts (10 bytes a
  slot), exact, up to ``EVAL_MAX_ITEMS`` distinct requests.

Unknown (the exemption is never given on it) is final and frees the memory: past either bound,
or a count past 65,535.

The counts also say whether a re-run is *in progress* (:meth:`SendCounts.rerun_in_progress`), which
the scan's criterion cannot see until ~80 % of a second pass is sent: every request since the
account's last new one re-sent an earlier item, and no item twice (all items sent ``c`` or
``c + 1`` times, and the run of re-sends covers every item at ``c + 1``). The policy lets a
persistent flag's block wait while that holds (:mod:`distillguard.gateway.policy`). That run is
counted in arrival order, so replicas folding requests in another order may read it differently.
"""

from __future__ import annotations

import secrets
import sys
from array import array

import numpy as np

from distillguard.detect.features import pass_share, prompt_space
from distillguard.detect.scoring import EVAL_MAX_ITEMS

MAX_BEFORE_RESEND = 2048     # distinct requests logged before the first re-send (16 KB)
_EMPTY = 0
_TOP = 1 << 63               # set on every stored key (0 marks an empty slot)
_MAX_COUNT = 65_535
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# A table slot comes from the top bits of (digest ^ salt) * golden: digests are an unkeyed hash,
# so a caller could send many requests sharing their low bits and make every insert walk one
# long probe chain; with a salt drawn per process it cannot aim at a slot.
_SALT = secrets.randbits(64)


def _slot(key: int, shift: int) -> int:
    return (((key ^ _SALT) * _GOLDEN) & _M64) >> shift


def request_key(bloom_bits: tuple[int, ...], bloom_size: int) -> int:
    """The request's digest as its Bloom positions carry it (each position: ``log2(bloom_size)``
    bits of one 16-bit slice of ``request_digest``)."""
    shift = bloom_size.bit_length() - 1
    key = 0
    for i, b in enumerate(bloom_bits):
        key |= int(b) << (shift * i)
    return (key & (_TOP - 1)) | _TOP


class SendCounts:
    """Exact send counts per request digest: a log of distinct digests until the first re-send,
    then a table (see the module docstring)."""

    __slots__ = ("log", "keys", "counts", "size", "freq", "streak")

    def __init__(self) -> None:
        self.log: array | None = array("Q")     # distinct digests, until the first re-send
        self.keys = self.counts = None
        self.size = 0
        self.freq = array("q", [0, 0, 0, 0])     # freq[c]: requests sent c times
        self.streak = 0                          # re-sends since the last new request

    @property
    def resent(self) -> bool:
        return self.log is None

    def add(self, key: int, seen: bool) -> bool:
        """Count one send (``seen``: the Bloom filter's word, only a hint that it may be a re-send);
        False when the counts became unknown (the caller drops them)."""
        log = self.log
        if log is None:
            return self._count(key)
        if seen and key in log:          # the first re-send: the log becomes the table
            self._table(log)
            self.log = None
            return self._count(key)
        log.append(key)
        self.size += 1
        self.streak = 0
        self._move(0, 1)
        return len(log) <= MAX_BEFORE_RESEND

    def _table(self, log: array) -> None:
        size = 64
        while 0.6 * size < len(log) + 1:
            size *= 2
        self._place(size, ((k, 1) for k in log))

    def _count(self, key: int) -> bool:
        keys = self.keys
        mask = len(keys) - 1
        i = _slot(key, 65 - len(keys).bit_length())
        while True:
            k = keys[i]
            if k == key:
                c = self.counts[i]
                if c >= _MAX_COUNT:
                    return False
                self._move(c, c + 1)
                self.counts[i] = c + 1
                self.streak += 1
                return True
            if k == _EMPTY:
                break
            i = (i + 1) & mask
        keys[i] = key
        self.counts[i] = 1
        self.size += 1
        self.streak = 0
        self._move(0, 1)
        if self.size > EVAL_MAX_ITEMS:
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
        self._place(2 * len(self.keys), ((k, c) for k, c in zip(self.keys, self.counts) if k != _EMPTY))

    def _place(self, size: int, entries) -> None:
        """A fresh table of ``size`` slots holding ``entries`` ((digest, count) pairs, distinct)."""
        keys, counts = array("Q", bytes(8 * size)), array("H", bytes(2 * size))
        mask, shift = size - 1, 65 - size.bit_length()
        for k, c in entries:
            i = _slot(k, shift)
            while keys[i] != _EMPTY:
                i = (i + 1) & mask
            keys[i], counts[i] = k, c
        self.keys, self.counts = keys, counts

    def rerun_in_progress(self) -> bool:
        """A whole pass being re-sent: every item sent ``c`` or ``c + 1`` times (``c >= 1``) and
        every request since the last new one a re-send, at least as many as the items at ``c + 1``
        (so each raised once, none twice). An account that mixes new requests among its re-sends,
        re-sends one item twice, or re-samples at random does not read so."""
        if self.log is not None or not self.streak:
            return False
        freq = self.freq
        levels = [c for c in range(1, len(freq)) if freq[c]]
        if len(levels) == 1:                # a whole pass just completed (c >= 2: re-sends seen)
            return levels[0] >= 2 and self.streak >= freq[levels[0]]
        return len(levels) == 2 and levels[1] == levels[0] + 1 and self.streak >= freq[levels[1]]

    def histogram(self) -> np.ndarray:
        """Distinct requests by send count (index: times sent; index 0 is 0)."""
        hist = np.frombuffer(self.freq, dtype=np.int64).copy()
        hist[0] = 0
        return hist

    def reading(self) -> tuple[float, float, float]:
        """Distinct requests, their set's estimated size (``prompt_space``) and the share sent
        equally often (``pass_share``): the batch scan's functions on the counts."""
        hist = self.histogram()
        sends = np.repeat(np.arange(len(hist), dtype=np.int64), hist)
        return float(len(sends)), prompt_space(sends), pass_share(sends)

    def memory_bytes(self) -> int:
        held = sys.getsizeof(self) + sys.getsizeof(self.freq)
        for part in (self.log, self.keys, self.counts):
            if part is not None:
                held += sys.getsizeof(part)
        return held
