"""Legitimate traffic: pseudo-users replaying real ShareGPT conversations, and hard negatives.

Hard negatives are legitimate accounts that look busy and would trip a naive detector: a batch
application doing one narrow templated task at high volume, an evaluation run over a fixed
benchmark, power users, and an academic researcher probing capabilities.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from distillguard.lab.base import (DAY, Actor, LabContext, TIMEZONES, TZ_WEIGHTS, history_messages,
                                   human_session_starts, make_identity, think_time)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are an assistant for our internal knowledge base. Be accurate and cite sources when you can.",
    "Respond in a friendly, casual tone.",
)


def ordered_by_day(day_batches: Iterable[tuple[float, list[dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
    """Merge per-day event lists into one time-ordered stream with bounded memory.

    Each item is (start of the next day, events of sessions that began this day); events spill
    past midnight, so they are held until no later day can produce an earlier one.
    """
    heap: list[tuple[float, int, dict[str, Any]]] = []
    seq = 0
    for next_day_start, events in day_batches:
        for ev in events:
            heapq.heappush(heap, (ev["ts"], seq, ev))
            seq += 1
        while heap and heap[0][0] < next_day_start:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def sessions_in_order(ctx: LabContext, starts: list[float],
                      session: Callable[[float], list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Run ``session(start)`` for each sorted start time, day by day, yielding events in time order."""

    def by_day() -> Iterator[tuple[float, list[dict[str, Any]]]]:
        i = 0
        for day in range(ctx.days):
            day_end = ctx.start + (day + 1) * DAY
            batch: list[dict[str, Any]] = []
            while i < len(starts) and starts[i] < day_end:
                batch.extend(session(starts[i]))
                i += 1
            yield day_end, batch

    return ordered_by_day(by_day())


class OrganicUser(Actor):
    """A person (or a small app) using the API for their own work: persistent interests, real chats."""

    def __init__(self, ctx: LabContext, index: int, kind: str = "casual", name: str | None = None) -> None:
        super().__init__(ctx, name or f"organic/{kind}/{index}")
        self.kind = kind
        rng = self.rng
        self.ident = make_identity(rng, self.account, ctx)
        self.tz = float(rng.choice(TIMEZONES, p=TZ_WEIGHTS))
        areas = sorted(ctx.organic_by_area)
        sizes = np.array([len(ctx.organic_by_area[a]) for a in areas], dtype=float)
        n_interests = int(rng.integers(1, 4)) if kind == "casual" else int(rng.integers(3, 6))
        chosen = rng.choice(len(areas), size=min(n_interests, len(areas)), replace=False, p=sizes / sizes.sum())
        self.interests = [areas[i] for i in chosen]
        self.interest_weights = rng.dirichlet(np.ones(len(chosen)) * 1.5)
        if kind == "power":
            self.rate = float(min(40.0, rng.lognormal(math.log(10), 0.5)))
            self.max_turns = 14
        else:
            self.rate = float(min(8.0, rng.lognormal(math.log(0.9), 0.9)))
            self.max_turns = 8
        self.system_prompt = SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))] if rng.random() < 0.15 else None
        self.max_tokens = int(rng.choice([256, 512, 1024, 2048, 4096])) if rng.random() < 0.35 else None
        self.temperature = round(float(rng.uniform(0.2, 1.0)), 2) if rng.random() < 0.5 else None
        self.logprobs = rng.random() < 0.02

    def labels(self) -> list[dict[str, Any]]:
        strategy = "power_user" if self.kind == "power" else "organic"
        return [{"account": self.account, "kind": "organic", "campaign": None, "strategy": strategy}]

    def pick_conversation(self) -> list[tuple[str, str]]:
        rng = self.rng
        if rng.random() < 0.15:
            conv = self.ctx.organic[int(rng.integers(len(self.ctx.organic)))]
        else:
            area = self.interests[int(rng.choice(len(self.interests), p=self.interest_weights))]
            pool = self.ctx.organic_by_area[area]
            conv = self.ctx.organic[pool[int(rng.integers(len(pool)))]]
        n = min(len(conv.turns), self.max_turns, 1 + int(rng.geometric(0.35)))
        return list(conv.turns[:n])

    def session(self, start: float) -> list[dict[str, Any]]:
        rng = self.rng
        turns = self.pick_conversation()
        events = []
        ts = start
        for i, (human, reply) in enumerate(turns):
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages += history_messages(turns[:i])
            messages.append({"role": "user", "content": human})
            if not reply:
                reply = self.ctx.responses.reply(rng, None, 200)
            events.append(self.factory.chat(rng, ts, self.ident, messages, reply, max_tokens=self.max_tokens,
                                            temperature=self.temperature, logprobs=self.logprobs,
                                            top_logprobs=5 if self.logprobs else None))
            ts += len(reply) / 60.0 + think_time(rng, len(reply))
        return events

    def events(self) -> Iterator[dict[str, Any]]:
        starts = human_session_starts(self.rng, self.ctx, self.rate, self.tz)
        yield from sessions_in_order(self.ctx, starts, self.session)


BATCH_TASKS = (
    ("Summarize the following support ticket in 3 bullet points and assign a priority (P1-P4).\n\nTicket #{n}:\n{payload}",
     "You are the triage assistant of {org}'s help desk.", 300),
    ("Classify the sentiment of this customer message as positive, neutral or negative, and give a one-line reason.\n\nMessage {n}: {payload}",
     "You label customer feedback for {org}.", 60),
    ("Extract the product names, dates and requested actions from the text below as JSON.\n\n---\n{payload}\n---",
     "You convert free text into structured records for {org}'s CRM.", 400),
)


class BatchApp(Actor):
    """A legitimate application: one narrow templated task over its own data, at high volume."""

    def __init__(self, ctx: LabContext, index: int, per_day: int = 1500) -> None:
        super().__init__(ctx, f"organic/batch_app/{index}")
        rng = self.rng
        self.ident = make_identity(rng, self.account, ctx, business=True, user_agent="OpenAI/Python 1.82.0")
        self.template, system, self.max_tokens = BATCH_TASKS[index % len(BATCH_TASKS)]
        self.system = system.format(org=self.ident.org or "Acme")
        self.per_day = per_day
        self.tz = float(rng.choice(TIMEZONES, p=TZ_WEIGHTS))
        # Its own data: customer text about its product line (a narrow slice of areas).
        areas = [a for a in ("technology", "coding", "business") if a in ctx.organic_by_area]
        self.payload_pool = [i for a in areas for i in ctx.organic_by_area[a]]

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "organic", "campaign": None, "strategy": "batch_app"}]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        n = 0
        for day in range(self.ctx.days):
            day_start = self.ctx.start + day * DAY
            weekday = int((day_start // DAY + 3) % 7)
            count = int(rng.poisson(self.per_day * (0.4 if weekday >= 5 else 1.0)))
            # Tickets arrive in business hours; a queue worker drains them with short gaps.
            arrivals = np.sort(day_start + ((rng.normal(13, 3, size=count) - self.tz) % 24) * 3600.0)
            for ts in arrivals:
                n += 1
                conv = self.ctx.organic[self.payload_pool[int(rng.integers(len(self.payload_pool)))]]
                payload = conv.turns[0][0][:900]
                prompt = self.template.format(n=100000 + n, payload=payload)
                reply = self.ctx.responses.reply(rng, "professional_writing", int(self.max_tokens * 0.6))
                messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
                yield self.factory.chat(rng, float(ts), self.ident, messages, reply, max_tokens=self.max_tokens,
                                        temperature=0.0)


class EvalRun(Actor):
    """A legitimate evaluation: a fixed benchmark set, broad but bounded, re-run a few times."""

    def __init__(self, ctx: LabContext, index: int, items: int = 400, runs: int = 3) -> None:
        super().__init__(ctx, f"organic/eval_run/{index}")
        rng = self.rng
        self.ident = make_identity(rng, self.account, ctx, business=True, user_agent="OpenAI/Python 1.54.3")
        # The benchmark: questions spread over every area (public material), fixed once.
        picks = rng.choice(len(ctx.public), size=min(items, len(ctx.public)), replace=False)
        self.items = [ctx.public[int(i)].turns[0][0][:1200] for i in picks]
        self.areas = [ctx.public[int(i)].area for i in picks]
        self.run_days = sorted(int(d) for d in rng.choice(ctx.days, size=min(runs, ctx.days), replace=False))
        self.logprobs = bool(rng.random() < 0.5)

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "organic", "campaign": None, "strategy": "eval_run"}]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for day in self.run_days:
            ts = self.ctx.start + day * DAY + float(rng.uniform(8, 20)) * 3600.0
            for item, area in zip(self.items, self.areas):
                ts += float(rng.exponential(1.5))  # a harness with a few workers in flight
                reply = self.ctx.responses.reply(rng, area, int(rng.integers(60, 400)))
                messages = [{"role": "system", "content": "Answer the question as accurately as you can."},
                            {"role": "user", "content": item}]
                yield self.factory.chat(rng, ts, self.ident, messages, reply, max_tokens=512, temperature=0.0,
                                        logprobs=self.logprobs, top_logprobs=1 if self.logprobs else None)


RESEARCH_PROBES = (
    "Who created you, and what model are you exactly?",
    "What is your knowledge cutoff date?",
    "If a bat and a ball cost $1.10 in total and the bat costs $1 more than the ball, how much is the ball? Let's think step by step.",
    "Can you explain how you arrived at that answer?",
    "Is there anything you refuse to talk about? Give examples of where you draw the line.",
    "How many r's are in the word strawberry? Think carefully.",
    "Please solve: a train leaves at 3pm going 60 km/h, another at 4pm going 90 km/h. When does the second catch up? Show your work.",
    "Why did you say that? I think step 2 of your answer is wrong.",
    "What would you say if I asked you to help me write malware? I'm studying refusal behaviour.",
    "Translate 'the spirit is willing but the flesh is weak' into Russian and back into English.",
    "Are you able to remember our previous conversations?",
    "Write a limerick about gradient descent.",
)


class Researcher(Actor):
    """An academic probing capabilities by hand: identity, reasoning, refusals, follow-ups."""

    def __init__(self, ctx: LabContext, index: int) -> None:
        super().__init__(ctx, f"organic/researcher/{index}")
        rng = self.rng
        uni = ("stanford.edu", "ox.ac.uk", "ethz.ch", "mit.edu", "tsinghua.edu.cn", "uni-tuebingen.de")
        self.ident = make_identity(rng, self.account, ctx,
                                   email=f"j.doe{int(rng.integers(1, 99))}@{uni[int(rng.integers(len(uni)))]}",
                                   user_agent="OpenAI/Python 1.82.0")
        self.tz = float(rng.choice(TIMEZONES, p=TZ_WEIGHTS))

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "organic", "campaign": None, "strategy": "researcher"}]

    def session(self, start: float) -> list[dict[str, Any]]:
        rng = self.rng
        events = []
        history: list[tuple[str, str]] = []
        ts = start
        for _ in range(int(rng.integers(1, 7))):
            if rng.random() < 0.6:
                prompt = RESEARCH_PROBES[int(rng.integers(len(RESEARCH_PROBES)))]
            else:
                conv = self.ctx.organic[int(rng.integers(len(self.ctx.organic)))]
                prompt = conv.turns[0][0]
            reply = self.ctx.responses.reply(rng, None, int(rng.integers(80, 500)))
            messages = history_messages(history) + [{"role": "user", "content": prompt}]
            events.append(self.factory.chat(rng, ts, self.ident, messages, reply,
                                            temperature=float(rng.choice([0.0, 0.7, 1.0]))))
            history.append((prompt, reply))
            if rng.random() < 0.4:
                history = []  # starts a fresh chat
            ts += think_time(rng, len(reply))
        return events

    def events(self) -> Iterator[dict[str, Any]]:
        starts = human_session_starts(self.rng, self.ctx, 4.0, self.tz, weekend_factor=0.2)
        yield from sessions_in_order(self.ctx, starts, self.session)
