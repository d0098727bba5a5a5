"""What extraction campaigns ask: one prompt generator per content strategy.

Each generator has several wording *families*, chosen per campaign, so a detector tuned on one
family can be tested on another. Payloads come from the *public* half of the corpus (text an
attacker can find elsewhere), never from our own users' conversations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.lab.base import LabContext
from distillguard.taxonomy import AREAS

AREA_LABELS = {a: a.replace("_", " ") for a in AREAS}


@dataclass
class Prompt:
    messages: list[dict[str, Any]]
    area: str | None
    target_tokens: int
    tools: list[dict[str, Any]] | None = None


def _pick(rng: np.random.Generator, seq: tuple | list) -> Any:
    return seq[int(rng.integers(len(seq)))]


@dataclass
class SweepPrompts:
    """Templated sweep over the capability taxonomy: area x subject x aspect, in order."""

    ctx: LabContext
    family: int = 0
    _cursor: int = 0
    _plan: list[tuple[str, str, str]] = field(default_factory=list)

    ASPECTS = ("core concepts and terminology", "a worked example", "common mistakes and how to avoid them",
               "advanced techniques", "the history and key figures", "best practices used by professionals",
               "how it compares with alternatives", "a step-by-step tutorial", "frequently asked questions",
               "edge cases and limitations")
    AUDIENCES = ("a complete beginner", "a graduate student", "a senior practitioner", "a 12-year-old",
                 "a busy executive")
    FORMATS = ("markdown with headings", "a numbered list", "a table followed by prose", "JSON with keys "
               "'summary' and 'details'", "an essay of about 800 words")
    FAMILIES = (
        "Explain {subject} ({area}) in depth, covering {aspect}. Write for {audience}.",
        "Write a comprehensive guide to {subject} in the field of {area}. Focus on {aspect}. Format: {format}.",
        "Topic: {area} > {subject}\nAspect: {aspect}\nAudience: {audience}\nOutput format: {format}\nWrite the full answer.",
        "I need a detailed, expert-level answer about {subject}: {aspect}. Use {format}.",
        "Generate a high-quality instructional response about {subject} ({area}) that covers {aspect}, suitable for {audience}.",
    )

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.ctx.seed * 7919 + self.family)
        plan = [(area, subject.replace("\\", ""), aspect) for area, subjects in AREAS.items()
                for subject in subjects for aspect in self.ASPECTS]
        rng.shuffle(plan)
        self._plan = plan

    def __call__(self, rng: np.random.Generator) -> Prompt:
        area, subject, aspect = self._plan[self._cursor % len(self._plan)]
        self._cursor += 1
        template = self.FAMILIES[self.family % len(self.FAMILIES)]
        text = template.format(subject=subject, area=AREA_LABELS[area], aspect=aspect,
                               audience=_pick(rng, self.AUDIENCES), format=_pick(rng, self.FORMATS))
        return Prompt([{"role": "user", "content": text}], area, int(rng.integers(700, 1500)))


COT_SUFFIXES = (
    ("Articulate the internal reasoning step by step before the final answer.",
     "Show your complete chain of thought, then state the answer on its own line."),
    ("Think through this carefully and write out every intermediate step of your reasoning.",
     "Before answering, reason out loud in detail. Put the final answer after 'Answer:'."),
    ("Explain your reasoning process thoroughly, including the assumptions you make, then conclude.",
     "Walk through exactly how you would solve this, one step at a time, and justify each step."),
)
COT_SYSTEM = ("You always think step by step and write your full reasoning inside <thinking> tags before "
              "the final answer.")


@dataclass
class CotPrompts:
    """Chain-of-thought elicitation: real questions plus a demand for the reasoning trace."""

    ctx: LabContext
    family: int = 0

    def __call__(self, rng: np.random.Generator) -> Prompt:
        conv = self.ctx.public[int(rng.integers(len(self.ctx.public)))]
        question = conv.turns[0][0][:700]
        if rng.random() < 0.35:
            a, b, c = (int(x) for x in rng.integers(2, 60, size=3))
            question = _pick(rng, (
                f"A tank fills at {a} litres per minute and drains at {b} litres per minute. It holds {a * c} litres. How long until it is full?",
                f"If {a} workers build {b} walls in {c} days, how many days do {a + b} workers need for {b * 2} walls?",
                f"What is the probability of getting at least {min(a, 5)} heads in {min(a, 5) + c % 5} fair coin flips?",
                f"A shop discounts an item by {a}% and then raises the price by {b}%. What is the net change?",
            ))
        suffix = _pick(rng, COT_SUFFIXES[self.family % len(COT_SUFFIXES)])
        messages = []
        if self.family % 2 == 1 and rng.random() < 0.5:
            messages.append({"role": "system", "content": COT_SYSTEM})
        messages.append({"role": "user", "content": f"{question}\n\n{suffix}"})
        return Prompt(messages, conv.area, int(rng.integers(500, 1200)))


RUBRIC_CRITERIA = ("helpfulness, accuracy and clarity", "factual correctness", "harmlessness and honesty",
                   "instruction following", "depth and completeness")


@dataclass
class RubricPrompts:
    """Grading / reward-model extraction: score answers, compare pairs, apply rubrics."""

    ctx: LabContext
    family: int = 0

    def __call__(self, rng: np.random.Generator) -> Prompt:
        conv = self.ctx.public[int(rng.integers(len(self.ctx.public)))]
        question, answer = conv.turns[0]
        answer = (answer or self.ctx.responses.reply(rng, conv.area, 200))[:1200]
        kind = (self.family + int(rng.integers(3))) % 3
        if kind == 0:
            text = (f"Rate the following response on a scale of 1 to 10 for {_pick(rng, RUBRIC_CRITERIA)}. "
                    f"Give the score first, then a justification.\n\nPrompt: {question[:600]}\n\nResponse: {answer}")
        elif kind == 1:
            other = self.ctx.responses.reply(rng, conv.area, 250)[:1200]
            text = (f"Which response better answers the question? Reply with A or B, then explain why.\n\n"
                    f"Question: {question[:600]}\n\n[A]: {answer}\n\n[B]: {other}")
        else:
            text = ("Grade the answer with this rubric: correctness (0-4), completeness (0-3), clarity (0-3). "
                    f"Return JSON with each criterion, the total and feedback.\n\nTask: {question[:600]}\n\nAnswer: {answer}")
        return Prompt([{"role": "user", "content": text}], conv.area, int(rng.integers(150, 400)))


TOOLS = [
    {"type": "function", "function": {"name": name, "description": desc,
                                      "parameters": {"type": "object", "properties": {arg: {"type": "string"}},
                                                     "required": [arg]}}}
    for name, desc, arg in (
        ("run_python", "Execute Python code and return stdout.", "code"),
        ("read_file", "Read a file from the workspace.", "path"),
        ("write_file", "Write a file in the workspace.", "path"),
        ("search_code", "Search the repository for a pattern.", "pattern"),
        ("http_get", "Fetch a URL.", "url"),
        ("sql_query", "Run a read-only SQL query.", "query"),
    )
]
CODE_TASKS = ("parses a CSV file and returns the rows grouped by a column", "implements an LRU cache",
              "validates an e-mail address", "merges overlapping intervals", "computes a moving average",
              "serialises a binary tree", "rate-limits calls with a token bucket", "diffs two JSON documents",
              "finds the shortest path in a weighted graph", "retries an HTTP request with backoff",
              "tokenises arithmetic expressions", "deduplicates records by fuzzy name match")
LANGS = ("Python", "TypeScript", "Go", "Rust", "Java", "C++", "SQL", "Bash")
AGENT_GOALS = ("find why the unit tests in tests/test_api.py fail and fix the bug",
               "add pagination to the /users endpoint and update the tests",
               "profile the slow report generation and optimise the hot loop",
               "migrate the config loader from INI to TOML",
               "write a script that backs up the database nightly and rotates old backups",
               "refactor the payment module to remove the global state")


CODE_CONSTRAINTS = ("without external libraries", "optimised for large inputs", "with full error handling",
                    "that is thread-safe", "using only the standard library", "with logging and metrics",
                    "following clean-architecture principles", "with property-based tests")


@dataclass
class AgenticPrompts:
    """Coding and tool-use tasks at volume, with tool definitions in the request.

    Tasks combine templates with real coding questions from public conversations, so the
    campaign keeps asking new things (an agentic distiller wants diverse trajectories).
    """

    ctx: LabContext
    family: int = 0

    def __post_init__(self) -> None:
        pool = self.ctx.public_by_area.get("coding", []) + self.ctx.public_by_area.get("technology", [])
        self._questions = [self.ctx.public[i].turns[0][0][:800] for i in pool] or ["write a web scraper"]

    def __call__(self, rng: np.random.Generator) -> Prompt:
        roll = rng.random()
        if roll < 0.35:
            text = (f"Write a {_pick(rng, LANGS)} function that {_pick(rng, CODE_TASKS)} "
                    f"{_pick(rng, CODE_CONSTRAINTS)}. Include type annotations, docstrings and unit tests.")
            tools = None if rng.random() < 0.5 else TOOLS[:3]
        elif roll < 0.7:
            text = f"Using the available tools, {_pick(rng, AGENT_GOALS)} in the {_pick(rng, LANGS)} service. Plan first, then act."
            tools = TOOLS
        else:
            text = f"Task: {_pick(rng, self._questions)}\n\nSolve this as an agent: use the tools, run the code, and report."
            tools = TOOLS
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an autonomous coding agent."}]
        messages.append({"role": "user", "content": text})
        return Prompt(messages, "coding", int(rng.integers(600, 1600)), tools)


@dataclass
class ReplayPrompts:
    """Organic-looking prompts lifted from public conversations, fired single-turn."""

    ctx: LabContext
    family: int = 0

    def __call__(self, rng: np.random.Generator) -> Prompt:
        conv = self.ctx.public[int(rng.integers(len(self.ctx.public)))]
        turn = 0 if rng.random() < 0.7 else int(rng.integers(len(conv.turns)))
        human, reply = conv.turns[turn]
        return Prompt([{"role": "user", "content": human[:4000]}], conv.area, max(100, len(reply) // 4))


GENERATORS = {"sweep": SweepPrompts, "cot": CotPrompts, "rubric": RubricPrompts, "agentic": AgenticPrompts,
              "replay": ReplayPrompts}
