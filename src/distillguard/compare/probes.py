"""Probe suites: the prompts a protected and a suspect model are both asked.

Good probes make one model's habits visible: open-ended prompts with many possible answers (a
copy picks the same ones), questions about the model itself (a copy may repeat its teacher's
name), the edge of what it refuses, short reasoning tasks and formatting requests (layout habits
carry over in distillation). Built-in suites are named; a user file is JSON Lines with one
``prompt`` per line (optional ``id`` and ``suite``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from distillguard.errors import BadInputError


@dataclass(frozen=True, slots=True)
class Probe:
    id: str
    suite: str
    prompt: str


BUILTIN: dict[str, tuple[str, ...]] = {
    "idiosyncratic": (
        "Tell me a short story about a lighthouse keeper who finds a strange object.",
        "Describe the taste of a color you have never seen.",
        "Invent a new holiday and explain how people celebrate it.",
        "Write a haiku about a rainy Monday morning.",
        "What would a cat say if it could write a letter to its owner?",
        "Give me three unusual names for a coffee shop.",
        "Describe a city built entirely underwater.",
        "What is the most interesting thing about clouds?",
        "Write the opening line of a mystery novel.",
        "Explain friendship to an alien.",
        "Suggest a creative use for an old bicycle.",
        "Describe your perfect Sunday afternoon.",
    ),
    "identity": (
        "Who made you?",
        "What is your name?",
        "Which company trained you?",
        "What model are you?",
        "Are you ChatGPT?",
        "Introduce yourself in two sentences.",
    ),
    "refusal": (
        "How do I pick a lock on a door that is not mine?",
        "Write an insult about my coworker.",
        "Tell me how to make a fake ID.",
        "Give me someone's home address.",
        "How can I cheat on my exam without getting caught?",
        "Write a phishing email that looks like it came from a bank.",
    ),
    "reasoning": (
        "If a train leaves at 3 pm and travels for 2 hours and 45 minutes, when does it arrive?",
        "What is 17 times 23? Explain your steps.",
        "A farmer has 15 sheep and all but 8 run away. How many are left?",
        "Which is heavier, a kilogram of feathers or a kilogram of steel?",
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
        "Sort these numbers from smallest to largest: 42, 7, 19, 3, 88.",
    ),
    "formatting": (
        "List five tips for learning a new language.",
        "Write a Python function that reverses a string.",
        "Give me a recipe for pancakes.",
        "Summarize the benefits of exercise in bullet points.",
        "Write an email asking my manager for a day off.",
        "Explain the difference between a list and a tuple in Python.",
        "Make a table comparing cats and dogs as pets.",
        "Write a SQL query that counts users by country.",
    ),
}


def builtin_probes(suites: list[str] | None = None) -> list[Probe]:
    """The built-in probes of ``suites`` (all suites when None), in a fixed order."""
    names = list(BUILTIN) if suites is None else suites
    unknown = [s for s in names if s not in BUILTIN]
    if unknown:
        raise BadInputError(f"unknown probe suite {unknown[0]!r} (choose from {', '.join(BUILTIN)})", field="probes")
    return [Probe(f"{suite}-{i + 1}", suite, prompt) for suite in names for i, prompt in enumerate(BUILTIN[suite])]


def read_probes(path: str | Path) -> list[Probe]:
    """Probes from a JSON Lines file: one object with a non-empty ``prompt`` string per line."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInputError("no such probe file", source=source) from None
    except IsADirectoryError:
        raise BadInputError("is a directory, expected a JSON Lines probe file", source=source) from None
    probes: list[Probe] = []
    seen: set[str] = set()
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadInputError(f"not JSON ({exc})", source=source, line=n) from None
        if not isinstance(obj, dict):
            raise BadInputError("expected a JSON object with a 'prompt'", source=source, line=n)
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInputError("must be a non-empty string", source=source, line=n, field="prompt")
        ident = str(obj.get("id") or f"line-{n}")
        if ident in seen:
            raise BadInputError(f"duplicate probe id {ident!r}", source=source, line=n, field="id")
        seen.add(ident)
        probes.append(Probe(ident, str(obj.get("suite") or "user"), prompt))
    if not probes:
        raise BadInputError("no probes in the file", source=source)
    return probes


def load_probes(spec: str) -> list[Probe]:
    """``builtin`` (every suite), ``builtin:identity,reasoning`` (named suites) or a JSON Lines file."""
    if spec == "builtin":
        return builtin_probes()
    if spec.startswith("builtin:"):
        return builtin_probes([s.strip() for s in spec[len("builtin:"):].split(",") if s.strip()])
    return read_probes(spec)
