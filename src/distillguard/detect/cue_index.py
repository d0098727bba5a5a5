"""One pass of anchor finding per cue text, shared by every cue pattern.

Each cue pattern (:mod:`distillguard.detect.text`, :mod:`distillguard.detect.probes`) registers
the literal anchor words every one of its matches holds (``text._ANCHORS``), and
:func:`text.has` searches a text only in windows around them. Finding them one ``str.find`` per
word per pattern cost about a third of the scan's cue time. :class:`CueTexts` finds every
pattern's anchors in a text in one Aho-Corasick pass (``pyahocorasick``, in C): a pattern none of
whose anchors occur is not searched, and the others are searched exactly as before, over their
present anchors in the pattern's order, so every result is the one the plain list gives
(``tests/test_cue_index.py``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from distillguard.detect.text import _ANCHORS, CUE_LIMIT, _anchored_search, _anchors


def anchor_automaton() -> tuple[Any, dict[str, int]]:
    """An Aho-Corasick automaton over every cue pattern's anchor words (value: the bit mask of the
    patterns that own the word) and each pattern's bit. Built on first use, and again if a
    module registered more patterns since (patterns register at import)."""
    global _AUTOMATON
    if _AUTOMATON is None or _AUTOMATON[2] != len(_ANCHORS):
        import ahocorasick

        bits = {pattern: 1 << k for k, pattern in enumerate(_ANCHORS)}
        owners: dict[str, int] = {}
        for pattern, words in _ANCHORS.items():
            for word in words:
                owners[word] = owners.get(word, 0) | bits[pattern]
        automaton = ahocorasick.Automaton()
        for word, mask in owners.items():
            automaton.add_word(word, (mask, word))
        automaton.make_automaton()
        _AUTOMATON = (automaton, bits, len(_ANCHORS))
    return _AUTOMATON[0], _AUTOMATON[1]


_AUTOMATON: tuple[Any, dict[str, int], int] | None = None


class CueTexts(list):
    """Lowercased cue texts, each with the set of cue patterns whose anchor words occur in its
    first ``CUE_LIMIT`` characters, found in one Aho-Corasick pass per text (instead of one
    ``str.find`` per anchor word per pattern). :func:`has` skips a pattern's search where none of
    its anchors occur (a search there would find nothing: every match holds an anchor) and runs
    the same anchored search as for a plain list elsewhere, so results are identical."""

    def __init__(self, texts: list[str], masks: list[int] | None = None,
                 found: list[set[str]] | None = None) -> None:
        super().__init__(texts)
        if masks is None or found is None:
            automaton = anchor_automaton()[0]
            masks, found = [], []
            for t in self:
                m = 0
                words: set[str] = set()
                for _, (owner, word) in automaton.iter(t[:CUE_LIMIT]):
                    m |= owner
                    words.add(word)
                masks.append(m)
                found.append(words)
        self.masks = masks          # per text: bits of the patterns with an anchor in it
        self.found = found          # per text: the anchor words in it

    @staticmethod
    def bit_of(pattern: re.Pattern[str]) -> int:
        """The bit of ``pattern`` in :attr:`masks`."""
        return anchor_automaton()[1][pattern.pattern]

    def holding(self, pattern: re.Pattern[str], index: np.ndarray) -> np.ndarray:
        """The entries of ``index`` whose text holds one of ``pattern``'s anchors."""
        bit = anchor_automaton()[1][pattern.pattern]
        masks = self.masks
        return index[np.fromiter((masks[i] & bit != 0 for i in index), dtype=bool, count=len(index))]

    def subset(self, index: np.ndarray) -> "CueTexts":
        return CueTexts([self[i] for i in index], [self.masks[i] for i in index], [self.found[i] for i in index])


class CueText:
    """One lowercased cue text and the anchor words in its first ``CUE_LIMIT`` characters (one
    Aho-Corasick pass), for a caller that reads one text at a time: the gateway, per request.
    :meth:`has` answers what ``text.has(pattern, [text])[0]`` answers, as a plain bool, without
    the numpy arrays the list forms build (which cost more than the searches on one text)."""

    __slots__ = ("text", "head", "mask", "found")

    def __init__(self, text: str) -> None:
        self.text = text
        self.head = text[:CUE_LIMIT]
        mask = 0
        found: set[str] = set()
        for _, (owner, word) in anchor_automaton()[0].iter(self.head):
            mask |= owner
            found.add(word)
        self.mask = mask
        self.found = found

    def has(self, pattern: re.Pattern[str]) -> bool:
        anchors = _anchors(pattern)
        if not anchors:
            return pattern.search(self.head) is not None
        if not self.mask & anchor_automaton()[1][pattern.pattern]:
            return False
        found = self.found
        return _anchored_search(pattern.search, self.head, [a for a in anchors if a in found])
