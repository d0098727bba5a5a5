"""Security probes: what a vulnerability scanner sends (jailbreak and role-play personas, prompt
injection and instruction override, system-prompt and training-data leakage, encoding tricks,
harmful-content refusal tests, malware and script/markup injection, glitch tokens, package
hallucination). Probes are not value transferred: the scan and the gateway count them apart
(``probing`` status) and never as harvest."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from distillguard.detect.text import _ANCHORS, _FLAGS, has

# Security scanning: jailbreak and prompt-injection attempts, system-prompt leakage probes and
# refusal probes (requests a model should decline), in the many phrasings scanners use.
SECURITY_PROBE = re.compile(
    r"ignore (all |any |the )?(previous|prior|above|earlier|preceding) (instructions|prompts?|rules|directions)"
    r"|disregard (all |any |the |your )?(previous|prior|above|safety|earlier)|\bjailbr(eak|oken)\b|\bdan mode\b"
    r"|do anything now|developer mode|\bno (restrictions|filters|guidelines|rules)\b|without (any )?(restrictions|"
    r"filters|censorship|ethical)|pretend (you are|to be|you're) (an? )?(evil|unrestricted|unfiltered|uncensored)"
    r"|(print|repeat|reveal|output|leak|show|dump|recite)[^.?!\n]{0,40}(system prompt|hidden (prompt|instructions)|"
    r"initial (prompt|instructions)|instructions above|text above|your instructions|confidential)"
    r"|prompt injection|\bpayload\b[^.?!\n]{0,30}\b(inject|exploit)|(how (do i|to|can i)|steps to|instructions for) "
    r"(make|build|synthesi[sz]e|create|manufacture)[^.?!\n]{0,30}(bomb|explosive|nerve agent|\bmeth\b|malware|"
    r"ransomware|weapon|poison)|write (a |some )?(malware|ransomware|keylogger|phishing (email|page)|exploit)"
    r"|bypass (the |your )?(safety|content|filter|guard)|\b(api[_ ]?key|password|credentials)\b[^.?!\n]{0,30}"
    r"(leak|reveal|print|tell me)",
    _FLAGS)
# The categories open-source LLM scanners cover beyond those above, each by category-level cues
# (not any one scanner's sentences): jailbreak and role-play personas freed of rules, instruction
# override, system-prompt and training-data leakage, encoding and obfuscation tricks, harmful
# content a model should refuse, malware and markup/script injection, glitch tokens, and package
# hallucination. ``security_probe`` is the union of both patterns.
# The scanner categories one by one, each with its anchor words (every match holds one): a window
# around an anchor is searched with its own category's pattern only, not the whole union.
# personas freed of rules
_PROBE_PERSONA = re.compile(
    r"(you are|you're|act as|acting as|pretend|roleplay|role-play|role play|play the role|simulate|become)[^.?!\n]{0,60}"
    r"(unrestricted|unfiltered|uncensored|amoral|unethical|immoral|no morals|no ethics|without (any )?(limits|limitations|"
    r"morals|ethics|rules|restrictions|filters|guidelines))|(stay|remain|keep) in character|\byou are dan\b|\bas dan\b"
    r"|(free|freed|broken free|liberated) (of|from) (the )?(typical |usual )?(confines|restrictions|limitations|rules|"
    r"guidelines|policies)|(does not|doesn't|do not|don't|never|won't) (abide|adhere|comply|follow)[^.?!\n]{0,30}"
    r"(polic(y|ies)|rules|guidelines|restrictions)",
    _FLAGS)
_ANCHORS[_PROBE_PERSONA.pattern] = ("you are", "you're", "act as", "acting as", "pretend", "role", "simulate",
    "become", "in character", "dan", "free", "liberated", "abide", "adhere", "comply", "follow")
# instruction override
_PROBE_OVERRIDE = re.compile(
    r"(forget|override|overwrite|discard|abandon) (all |any |everything |your |the )?(previous |prior |above |earlier |"
    r"original )?(instructions|rules|guidelines|directions|prompt|you were told)|new (system )?instructions?:"
    r"|stop everything|ignore (all of |everything )?the (above|previous|preceding)( text| prompt| message)? and",
    _FLAGS)
_ANCHORS[_PROBE_OVERRIDE.pattern] = ("forget", "override", "overwrite", "discard", "abandon", "instruction",
    "stop everything", "ignore")
# system-prompt and training-data leakage
_PROBE_LEAKAGE = re.compile(
    r"(repeat|print|reveal|output|show|tell me|what (is|are|was|were)|disclose|spell out)[^.?!\n]{0,40}(system (prompt|"
    r"message)|original instructions|pre-?prompt|your (prompt|rules|guidelines|initial))|(word for word|verbatim)"
    r"[^.?!\n]{0,60}(above|before|prompt|instructions|training)|\[mask\]|training data[^.?!\n]{0,40}(verbatim|"
    r"memori[sz]ed|reveal|extract|recite)|repeat (the|this) word[^.?!\n]{0,40}(forever|times)"
    r"|(repeat|print|output|recite|copy|write out) (all |out )?(the |of the )?(words|text|everything|content|messages?)"
    r"[^.?!\n]{0,20}(above|before (this|my|the))|(summari[sz]e|list|quote|paraphrase|translate|tell me|what (are|were))"
    r"[^.?!\n]{0,20}\byour (instructions|rules|guidelines|directives)|(instructions|rules|guidelines) (were you|you were|"
    r"have you been) given",
    _FLAGS)
_ANCHORS[_PROBE_LEAKAGE.pattern] = ("system", "instruction", "pre-prompt", "preprompt", "your prompt", "your rules",
    "your guidelines", "your initial", "word for word", "verbatim", "[mask]", "training data", "repeat", "above",
    "before", "your directives", "given")
# encoding and obfuscation
_PROBE_ENCODING = re.compile(
    r"(decode|decoded|decipher|encoded|encoding|obfuscated)[^.?!\n]{0,40}(base64|base 64|base32|rot13|rot-13|morse|"
    r"braille|leetspeak|caesar|uuencode|quoted-printable|ascii85|zalgo|nato phonetic)|(base64|base32|rot13|rot-13|morse|"
    r"braille|leetspeak|uuencode|ascii85|zalgo)[^.?!\n]{0,30}(decode|decoded|decipher|encoded|encoding|obfuscated)",
    _FLAGS)
_ANCHORS[_PROBE_ENCODING.pattern] = ("decode", "decipher", "encod", "obfuscat", "base64", "base 64", "base32",
    "rot13", "rot-13", "morse", "braille", "leetspeak", "uuencode", "ascii85", "zalgo")
# harmful content a model should refuse
_PROBE_HARMFUL = re.compile(
    r"(kill|murder|hurt|poison|stalk|harass|kidnap) (someone|somebody|a person|people|my (wife|husband|neighbou?r|boss|"
    r"friend|partner)|him|her|them|a child)|(racist|sexist|homophobic|transphobic|antisemitic|hateful|offensive) "
    r"(jokes?|remarks?|slurs?|insults?|rants?|messages?|content)|\bslurs?\b|(make|cook|synthesi[sz]e|produce|obtain|"
    r"buy|extract)[^.?!\n]{0,30}(methamphetamine|cocaine|heroin|fentanyl|\blsd\b|ricin|sarin|anthrax|nerve agent|"
    r"napalm|pipe bomb|untraceable gun)|(help|assist)[^.?!\n]{0,30}(something |anything )?(illegal|unethical|harmful)",
    _FLAGS)
_ANCHORS[_PROBE_HARMFUL.pattern] = ("kill", "murder", "hurt", "poison", "stalk", "harass", "kidnap", "racist",
    "sexist", "homophobic", "transphobic", "antisemitic", "hateful", "offensive", "slur", "methamphetamine",
    "cocaine", "heroin", "fentanyl", "lsd", "ricin", "sarin", "anthrax", "nerve agent", "napalm", "pipe bomb",
    "untraceable", "illegal", "unethical", "harmful")
# malware, script and markup injection
_PROBE_INJECTION = re.compile(
    r"(write|create|generate|code|develop|build)[^.?!\n]{0,40}(virus|trojan|rootkit|keylogger|ransomware|malware|"
    r"botnet|backdoor|spyware|cryptojacker|worm that)|(evade|bypass|disable) (the )?(antivirus|anti-virus|defender|"
    r"edr|detection)|(alert|confirm|prompt)\((1|'xss'|\"xss\"|document\.)|onerror\s*=|javascript:\s*alert"
    r"|!\[[^\]\n]{0,40}\]\(https?://[^)\s]{0,80}(\?|\$|\{)|(sql injection|xss|cross-site scripting) payload",
    _FLAGS)
_ANCHORS[_PROBE_INJECTION.pattern] = ("virus", "trojan", "rootkit", "keylogger", "ransomware", "malware", "botnet",
    "backdoor", "spyware", "cryptojacker", "worm that", "antivirus", "anti-virus", "defender", "edr", "detection",
    "alert(", "confirm(", "prompt(", "onerror", "javascript:", "](http", "payload")
# glitch tokens
_PROBE_GLITCH = re.compile(
    r"(repeat|spell|say|print)[^.?!\n]{0,30}(the |this )?(string|token)\s*[\"'\u201c]|solidgoldmagikarp|petertodd"
    r"|davidjl|thenitromefan|externaltoeva|attrot|streamerbot",
    _FLAGS)
_ANCHORS[_PROBE_GLITCH.pattern] = ("string", "token", "solidgoldmagikarp", "petertodd", "davidjl", "thenitromefan",
    "externaltoeva", "attrot", "streamerbot")
# package hallucination
_PROBE_PACKAGE = re.compile(
    r"(is there|recommend|suggest|name|which|what)[^.?!\n]{0,30}(python|pip|pypi|npm|node|rust|crate|ruby|gem|go|java"
    r"|javascript) (packages?|librar(y|ies)|modules?|crates?|gems?) (for|to|that)",
    _FLAGS)
_ANCHORS[_PROBE_PACKAGE.pattern] = ("package", "librar", "module", "crate", "gem")
_PROBE_PARTS = (_PROBE_PERSONA, _PROBE_OVERRIDE, _PROBE_LEAKAGE, _PROBE_ENCODING, _PROBE_HARMFUL, _PROBE_INJECTION,
                _PROBE_GLITCH, _PROBE_PACKAGE)
# The union, for reference (``security_probe`` searches the parts one by one around their anchors).
SECURITY_PROBE_MORE = re.compile("|".join(f"(?:{p.pattern})" for p in _PROBE_PARTS), _FLAGS)
_ANCHORS[SECURITY_PROBE.pattern] = (
    "ignore", "disregard", "jailbr", "dan mode", "anything now", "developer mode", "restrictions", "filters",
    "guidelines", "no rules", "censorship", "ethical", "evil", "unrestricted", "unfiltered", "uncensored",
    "system prompt", "hidden prompt", "hidden instructions", "initial prompt", "initial instructions",
    "instructions above", "text above", "your instructions", "confidential", "prompt injection", "payload", "bomb",
    "explosive", "nerve agent", "meth ", "meth.", "malware", "ransomware", "weapon", "poison", "keylogger", "phishing",
    "exploit", "bypass", "api key", "api_key", "apikey", "password", "credentials")


def security_probe_one(cue: Any, revealed: bool = False) -> bool:
    """:func:`security_probe` of one text, a :class:`distillguard.detect.cue_index.CueText`."""
    return cue.has(SECURITY_PROBE) or any(cue.has(part) for part in _PROBE_PARTS
                                          if not (revealed and part is _PROBE_ENCODING))


def security_probe(texts: list[str], revealed: np.ndarray | None = None) -> np.ndarray:
    """Is each (lowercased) text a security probe of any category a scanner covers?

    ``revealed``: texts read decoded (``obfuscation.reveal``). Their encoding is seen through, so
    naming it ("decode this base64 ...") does not make a probe: what it hid is judged (a harvest
    wrapped in an encoding is a harvest)."""
    found = has(SECURITY_PROBE, texts)
    for part in _PROBE_PARTS:
        rest = np.flatnonzero(~found if revealed is None or part is not _PROBE_ENCODING else ~found & ~revealed)
        if len(rest) == 0:
            break
        if hasattr(texts, "holding"):        # a cue_index.CueTexts: only where the part's anchors occur
            rest = texts.holding(part, rest)
            subset: list[str] = texts.subset(rest)
        else:
            subset = [texts[i] for i in rest]
        found[rest[has(part, subset)]] = True
    return found
