"""Shared pieces of the lab's actors: context, identities, timing and the event factory.

An *actor* owns one account (or, for a hydra campaign, many) and yields its event dicts in time
order; the traffic writer merges all actors into one time-ordered log. Every actor draws from
its own random generator derived from (seed, actor name), so the output is deterministic under
``--seed`` and independent of how many other actors there are.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.lab.corpus import Conversation
from distillguard.lab.text import ResponsePool, approx_tokens

DAY = 86400.0
MODEL = "acme-large-2"

EMAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "hotmail.com",
                 "fastmail.com", "gmx.de", "qq.com", "naver.com")
ORG_SUFFIXES = ("labs", "ai", "io", "tech", "systems", "studio", "group", "data")
SDK_AGENTS = ("OpenAI/Python 1.82.0", "OpenAI/Python 1.54.3", "OpenAI/NodeJS 4.96.0",
              "OpenAI/NodeJS 5.1.2", "langchain-openai/0.3.7", "llama-index/0.12.4",
              "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
              "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36",
              "curl/8.5.0", "Go-http-client/2.0")
# Local-time session-start profile for people (index = local hour); low at night, peaks by day.
HUMAN_HOURS = np.array([0.6, 0.35, 0.2, 0.12, 0.1, 0.12, 0.3, 0.7, 1.3, 1.9, 2.2, 2.2, 1.8, 1.9, 2.1,
                        2.1, 2.0, 1.8, 1.5, 1.4, 1.5, 1.5, 1.2, 0.9])
HUMAN_HOURS = HUMAN_HOURS / HUMAN_HOURS.sum()
TIMEZONES = np.array([-8, -7, -5, -3, 0, 1, 2, 3, 5.5, 7, 8, 9, 10])
TZ_WEIGHTS = np.array([10, 3, 12, 4, 6, 10, 4, 2, 12, 3, 12, 5, 2], dtype=float)
TZ_WEIGHTS /= TZ_WEIGHTS.sum()


def rng_for(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass
class LabContext:
    """What every actor may read: the corpus split, response pool and the period simulated."""

    seed: int
    start: float                   # epoch seconds of day 0, 00:00 UTC
    days: int
    organic: list[Conversation]    # conversations real users of *our* service have
    public: list[Conversation]     # conversations an attacker can find elsewhere (disjoint)
    responses: ResponsePool
    organic_by_area: dict[str, list[int]] = field(default_factory=dict)
    public_by_area: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for conv_list, index in ((self.organic, self.organic_by_area), (self.public, self.public_by_area)):
            for i, conv in enumerate(conv_list):
                index.setdefault(conv.area, []).append(i)

    @property
    def end(self) -> float:
        return self.start + self.days * DAY


@dataclass
class Identity:
    """Account-level identifiers (what a provider knows about a billing account)."""

    account: str
    key: str
    email: str
    payment: str
    org: str | None
    created: float
    ips: list[str]
    user_agent: str

    def as_record(self) -> dict[str, Any]:
        from distillguard.events.schema import format_ts

        out: dict[str, Any] = {"email": self.email, "payment": self.payment, "created": format_ts(self.created)}
        if self.org:
            out["org"] = self.org
        return out


def random_ip(rng: np.random.Generator, prefix: str | None = None) -> str:
    if prefix is None:
        prefix = f"{int(rng.integers(11, 223))}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}"
    return f"{prefix}.{int(rng.integers(2, 254))}"


def make_identity(rng: np.random.Generator, account: str, ctx: LabContext, *, business: bool = False,
                  email: str | None = None, payment: str | None = None, ips: list[str] | None = None,
                  user_agent: str | None = None, created: float | None = None) -> Identity:
    words = ("river", "maple", "nova", "orbit", "delta", "pixel", "cedar", "lumen", "atlas", "echo",
             "ember", "quartz", "sage", "zephyr", "birch", "cobalt")
    name = f"{words[int(rng.integers(len(words)))]}{words[int(rng.integers(len(words)))]}"
    org = f"{name}-{ORG_SUFFIXES[int(rng.integers(len(ORG_SUFFIXES)))]}" if business or rng.random() < 0.3 else None
    if email is None:
        domain = f"{org}.com" if org and rng.random() < 0.7 else EMAIL_DOMAINS[int(rng.integers(len(EMAIL_DOMAINS)))]
        email = f"{name}{int(rng.integers(1, 999))}@{domain}"
    if payment is None:
        payment = "card_" + hashlib.blake2b(f"{account}/{rng.random()}".encode(), digest_size=6).hexdigest()
    if ips is None:
        ips = [random_ip(rng) for _ in range(int(rng.integers(1, 4)))]
    if user_agent is None:
        user_agent = SDK_AGENTS[int(rng.integers(len(SDK_AGENTS)))]
    if created is None:
        created = ctx.start - float(rng.uniform(5, 700)) * DAY
    key = "sk-" + hashlib.blake2b(f"key/{account}".encode(), digest_size=10).hexdigest()
    return Identity(account=account, key=key, email=email, payment=payment, org=org, created=created,
                    ips=ips, user_agent=user_agent)


def account_name(seed: int, actor: str) -> str:
    """Opaque account id: nothing in it tells how the account was simulated."""
    return "acct_" + hashlib.blake2b(f"account/{seed}/{actor}".encode(), digest_size=6).hexdigest()


class Actor:
    """Base of every lab actor: its name, random generator, account id and event factory.

    Everything an actor draws comes from ``rng``, derived from (seed, name) alone, so an actor's
    traffic does not depend on which other actors exist.
    """

    def __init__(self, ctx: "LabContext", name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.rng = rng_for(ctx.seed, name)
        self.account = account_name(ctx.seed, name)
        self.factory = EventFactory(ctx.seed, name)


class EventFactory:
    """Builds OpenAI-shaped event dicts for one actor (ids unique and deterministic)."""

    def __init__(self, seed: int, actor: str) -> None:
        self._prefix = hashlib.blake2b(f"{seed}/{actor}".encode(), digest_size=5).hexdigest()
        self._n = 0

    def chat(self, rng: np.random.Generator, ts: float, ident: Identity, messages: list[dict[str, Any]],
             reply: str, *, max_tokens: int | None = None, temperature: float | None = None,
             logprobs: bool = False, top_logprobs: int | None = None, tools: list[dict] | None = None,
             ip: str | None = None, extra: dict[str, Any] | None = None,
             more_replies: list[str] | None = None) -> dict[str, Any]:
        """``extra``: further request fields (``n``, ``user`` ...); ``more_replies``: the other choices
        of an ``n`` > 1 request, so usage counts every answer generated."""
        self._n += 1
        request: dict[str, Any] = {"model": MODEL, "messages": messages}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if temperature is not None:
            request["temperature"] = temperature
        if logprobs:
            request["logprobs"] = True
            if top_logprobs:
                request["top_logprobs"] = top_logprobs
        if tools:
            request["tools"] = tools
        if extra:
            request.update(extra)
        choices = []
        completion_tokens = 0
        for index, text in enumerate([reply, *(more_replies or [])]):
            tokens = approx_tokens(text)
            finish = "stop"
            if max_tokens is not None and tokens > max_tokens:
                text = text[: max_tokens * 4]
                tokens = max_tokens
                finish = "length"
            completion_tokens += tokens
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish})
        prompt_tokens = sum(approx_tokens(m.get("content") or "") + 4 for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        event_id = f"chatcmpl-{self._prefix}{self._n:07x}"
        response = {"id": event_id, "object": "chat.completion", "created": int(ts), "model": MODEL,
                    "choices": choices}
        return {"id": event_id, "ts": ts, "account": ident.account, "key": ident.key,
                "endpoint": "/v1/chat/completions", "model": MODEL,
                "ip": ip or ident.ips[int(rng.integers(len(ident.ips)))], "user_agent": ident.user_agent,
                "identity": ident.as_record(), "request": request, "response": response,
                "usage": usage, "status": 200}


def human_session_starts(rng: np.random.Generator, ctx: LabContext, rate_per_day: float,
                         tz_hours: float, weekend_factor: float = 0.6) -> list[float]:
    """Session start times over the period for a person: Poisson count per day, diurnal hours."""
    starts: list[float] = []
    for day in range(ctx.days):
        day_start = ctx.start + day * DAY
        weekday = int((day_start // DAY + 3) % 7)  # 1970-01-01 was a Thursday
        rate = rate_per_day * (weekend_factor if weekday >= 5 else 1.0)
        n = int(rng.poisson(rate))
        if n == 0:
            continue
        local_hours = rng.choice(24, size=n, p=HUMAN_HOURS) + rng.random(n)
        for h in local_hours:
            ts = day_start + ((h - tz_hours) % 24) * 3600.0
            starts.append(float(ts))
    starts.sort()
    return starts


def think_time(rng: np.random.Generator, reply_chars: int) -> float:
    """Seconds between a reply and a person's next message: reading plus writing, heavy-tailed."""
    reading = reply_chars / 25.0 * float(rng.uniform(0.2, 1.0))
    return reading + float(rng.lognormal(math.log(40), 0.9))


def history_messages(turns: list[tuple[str, str]], window: int = 3, cap_chars: int = 1500) -> list[dict]:
    """Chat history as a client would send it: the last ``window`` exchanges, long texts trimmed."""
    messages: list[dict[str, Any]] = []
    for human, reply in turns[-window:]:
        messages.append({"role": "user", "content": human[:cap_chars]})
        messages.append({"role": "assistant", "content": reply[:cap_chars]})
    return messages
