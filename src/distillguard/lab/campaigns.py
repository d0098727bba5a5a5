"""Extraction campaigns: each a named strategy with parameters, run by one or many accounts.

Strategies: sweep, cot, rubric, agentic, replay (one account each, bot cadence), low_and_slow
(paced under rate limits with jitter), hydra (many small accounts sharing templates,
infrastructure and timing) and mixed (a reseller whose traffic is mostly organic).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np

from distillguard.errors import UsageError
from distillguard.lab.base import DAY, Actor, LabContext, account_name, make_identity, random_ip
from distillguard.lab.organic import OrganicUser
from distillguard.lab.prompts import GENERATORS, Prompt

CONTENT_STRATEGIES = tuple(GENERATORS)
STRATEGIES = CONTENT_STRATEGIES + ("low_and_slow", "hydra", "mixed")
BOT_AGENTS = ("python-requests/2.32.3", "aiohttp/3.11.2", "OpenAI/Python 1.82.0", "httpx/0.28.1",
              "node-fetch/1.0")


@dataclass(frozen=True)
class CampaignSpec:
    """Parameters of one campaign. ``content`` is the prompt strategy used by hydra/mixed/low_and_slow."""

    strategy: str
    name: str = ""
    per_day: int = 500             # queries per day, whole campaign
    accounts: int = 1              # hydra only
    max_per_account: int = 50      # hydra only
    extraction_share: float = 0.1  # mixed only: share of the reseller's queries that extract
    content: str = ""              # prompt strategy for hydra / mixed / low_and_slow
    family: int = 0                # wording family of the prompt generator
    schedule: str = "continuous"   # continuous | office | bursts
    start_day: int = 0
    days: int | None = None        # None: until the end of the period
    max_tokens: int = 4096
    end_user_ids: bool = True      # mixed only: the reseller names each customer in ``request.user``

    def resolved(self, index: int) -> "CampaignSpec":
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy '{self.strategy}' (choose from {', '.join(STRATEGIES)})")
        content = self.content or {"low_and_slow": "cot", "hydra": "sweep", "mixed": "cot"}.get(
            self.strategy, self.strategy)
        if content not in CONTENT_STRATEGIES:
            raise UsageError(f"campaign content must be one of {', '.join(CONTENT_STRATEGIES)}, got '{content}'")
        if not 0.0 < self.extraction_share <= 1.0:
            raise UsageError("extraction_share must be in (0, 1]")
        if self.per_day <= 0 or self.accounts <= 0 or self.max_per_account <= 0:
            raise UsageError("per_day, accounts and max_per_account must be positive")
        if self.schedule not in ("continuous", "office", "bursts"):
            raise UsageError(f"unknown schedule '{self.schedule}'")
        name = self.name or f"{self.strategy}-{index}"
        kw = asdict(self) | {"content": content, "name": name}
        return CampaignSpec(**kw)


def default_campaigns() -> list[CampaignSpec]:
    return [
        CampaignSpec("sweep", per_day=600, family=0, schedule="continuous"),
        CampaignSpec("cot", per_day=500, family=0, schedule="office"),
        CampaignSpec("rubric", per_day=400, family=0, schedule="bursts"),
        CampaignSpec("agentic", per_day=450, family=0, schedule="continuous"),
        CampaignSpec("replay", per_day=600, family=0, schedule="office"),
        CampaignSpec("low_and_slow", per_day=240, content="cot", family=1),
        CampaignSpec("hydra", accounts=40, max_per_account=45, per_day=600, content="sweep", family=2),
        CampaignSpec("mixed", per_day=400, extraction_share=0.1, content="cot", family=2),
    ]


def bot_times(rng: np.random.Generator, start: float, end: float, per_day: int, schedule: str,
              tz: float) -> np.ndarray:
    """Request times of an automated client: paced, with jitter, following its schedule."""
    days = max(1, int(round((end - start) / DAY)))
    n = int(rng.poisson(per_day * days))
    if schedule == "office":
        day_idx = rng.integers(days, size=n)
        hours = (rng.uniform(8, 19, size=n) - tz) % 24
        ts = start + day_idx * DAY + hours * 3600.0
    elif schedule == "bursts":
        n_bursts = max(1, days * int(rng.integers(3, 7)))
        centres = rng.uniform(start, end, size=n_bursts)
        ts = centres[rng.integers(n_bursts, size=n)] + rng.exponential(900.0, size=n)
    else:  # continuous: evenly paced worker with small jitter
        ts = np.linspace(start, end, n, endpoint=False) + rng.normal(0, 5.0, size=n)
    ts = np.sort(np.clip(ts, start, end - 1.0))
    return ts


class SingleAccountCampaign(Actor):
    """One account running one content strategy (sweep, cot, rubric, agentic, replay, low_and_slow)."""

    def __init__(self, ctx: LabContext, spec: CampaignSpec) -> None:
        super().__init__(ctx, f"campaign/{spec.name}")
        self.spec = spec
        rng = self.rng
        self.ident = make_identity(rng, self.account, ctx, user_agent=BOT_AGENTS[int(rng.integers(len(BOT_AGENTS)))],
                                   created=ctx.start - float(rng.uniform(1, 60)) * DAY)
        self.prompts = GENERATORS[spec.content](ctx, family=spec.family)
        self.tz = float(rng.choice([-5, 1, 8, 3]))

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "extraction", "campaign": self.spec.name,
                 "strategy": self.spec.strategy, "content": self.spec.content}]

    def _window(self) -> tuple[float, float]:
        start = self.ctx.start + self.spec.start_day * DAY
        days = self.spec.days if self.spec.days is not None else self.ctx.days - self.spec.start_day
        return start, min(self.ctx.end, start + max(1, days) * DAY)

    def _times(self) -> np.ndarray:
        start, end = self._window()
        if self.spec.strategy == "low_and_slow":
            # Paced under a rate limit: a fixed interval with heavy jitter, quiet a few hours a day.
            interval = DAY / self.spec.per_day
            gaps = interval * self.rng.uniform(0.6, 1.4, size=int((end - start) / interval) + 1)
            ts = start + np.cumsum(gaps)
            return ts[ts < end]
        return bot_times(self.rng, start, end, self.spec.per_day, self.spec.schedule, self.tz)

    def request(self, ts: float, prompt: Prompt) -> dict[str, Any]:
        reply = self.ctx.responses.reply(self.rng, prompt.area, prompt.target_tokens)
        return self.factory.chat(self.rng, ts, self.ident, prompt.messages, reply, max_tokens=self.spec.max_tokens,
                                 temperature=0.7, tools=prompt.tools)

    def events(self) -> Iterator[dict[str, Any]]:
        for ts in self._times():
            yield self.request(float(ts), self.prompts(self.rng))


class HydraCampaign(Actor):
    """One campaign split across many small accounts sharing templates, infrastructure and timing."""

    def __init__(self, ctx: LabContext, spec: CampaignSpec) -> None:
        super().__init__(ctx, f"campaign/{spec.name}")
        self.spec = spec
        rng = self.rng
        prefixes = [f"{int(rng.integers(11, 223))}.{int(rng.integers(256))}.{int(rng.integers(256))}"
                    for _ in range(int(rng.integers(2, 4)))]
        cards = ["card_" + hashlib.blake2b(f"{self.name}/card/{i}".encode(), digest_size=6).hexdigest()
                 for i in range(int(rng.integers(2, 5)))]
        domain = str(rng.choice(["mailbox-temp.net", "quickinbox.io", "gmail.com"]))
        stem = str(rng.choice(["dev", "user", "research", "acc"]))
        burst = ctx.start - float(rng.uniform(1, 4)) * DAY
        agent = BOT_AGENTS[int(rng.integers(len(BOT_AGENTS)))]
        self.members = []
        for i in range(spec.accounts):
            account = account_name(ctx.seed, f"{self.name}/{i}")
            ident = make_identity(rng, account, ctx, email=f"{stem}{int(rng.integers(1000, 99999))}@{domain}",
                                  payment=cards[int(rng.integers(len(cards)))],
                                  ips=[random_ip(rng, prefixes[int(rng.integers(len(prefixes)))])],
                                  user_agent=agent, created=burst + float(rng.uniform(0, 7200)))
            self.members.append(ident)
        self.prompts = GENERATORS[spec.content](ctx, family=spec.family)

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": m.account, "kind": "extraction", "campaign": self.spec.name, "strategy": "hydra",
                 "content": self.spec.content} for m in self.members]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        start = self.ctx.start + self.spec.start_day * DAY
        # Synchronised waves: every account fires inside the same shared windows.
        budget = [int(rng.integers(max(5, self.spec.max_per_account // 3), self.spec.max_per_account + 1))
                  for _ in self.members]
        total = sum(budget)
        n_days = max(1, (self.ctx.days - self.spec.start_day))
        n_waves = max(1, min(n_days * 4, int(np.ceil(total / max(1, self.spec.per_day / 4)))))
        waves = np.sort(rng.uniform(start, self.ctx.end - 7200.0, size=n_waves))
        rows: list[tuple[float, int]] = []
        for member, count in enumerate(budget):
            wave_ids = rng.integers(n_waves, size=count)
            for w in wave_ids:
                rows.append((float(waves[w] + rng.uniform(0, 3600.0)), member))
        rows.sort()
        for ts, member in rows:
            prompt = self.prompts(rng)
            ident = self.members[member]
            reply = self.ctx.responses.reply(rng, prompt.area, prompt.target_tokens)
            yield self.factory.chat(rng, ts, ident, prompt.messages, reply, max_tokens=self.spec.max_tokens,
                                    temperature=0.7, tools=prompt.tools)


RESELLER_SYSTEM = "You are ChatPal, a friendly assistant. Be helpful and concise."


class MixedCampaign(Actor):
    """A reseller account: organic customer traffic with a share of extraction hidden inside."""

    def __init__(self, ctx: LabContext, spec: CampaignSpec, name: str | None = None) -> None:
        super().__init__(ctx, name or f"campaign/{spec.name}")
        self.spec = spec
        rng = self.rng
        self.ident = make_identity(rng, self.account, ctx, business=True, user_agent="OpenAI/NodeJS 4.96.0")
        self.system = RESELLER_SYSTEM
        # The reseller's genuine customers, whose conversations it relays.
        self.customers = [OrganicUser(ctx, i, "casual", name=f"{self.name}/customer/{i}") for i in range(12)]
        self.prompts = GENERATORS[spec.content](ctx, family=spec.family)
        # Pseudonymous end-user ids, as OpenAI asks platforms to pass them (``user``); the
        # extraction script is one more customer of the reseller, with an id of its own.
        self.customer_ids = [_customer_id(self.account, i) for i in range(len(self.customers) + 1)]

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "extraction", "campaign": self.spec.name, "strategy": "mixed",
                 "content": self.spec.content, "extraction_share": self.spec.extraction_share,
                 "end_user_ids": self.spec.end_user_ids}]

    def _name_end_user(self, event: dict[str, Any], index: int) -> None:
        if self.spec.end_user_ids:
            event["request"]["user"] = self.customer_ids[index]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        start = self.ctx.start + self.spec.start_day * DAY
        organic_per_day = self.spec.per_day * (1.0 - self.spec.extraction_share)
        bad_per_day = self.spec.per_day * self.spec.extraction_share
        out: list[tuple[float, int, dict[str, Any]]] = []
        seq = 0
        # Customer sessions: each customer's conversations, relayed with the reseller's system prompt.
        days = self.ctx.days - self.spec.start_day
        n_sessions = int(rng.poisson(organic_per_day * days / 2.5))
        session_starts = np.sort(start + rng.uniform(0, days * DAY, size=n_sessions))
        for s in session_starts:
            index = int(rng.integers(len(self.customers)))
            customer = self.customers[index]
            turns = customer.pick_conversation()
            ts = float(s)
            history: list[tuple[str, str]] = []
            for human, reply in turns:
                messages = [{"role": "system", "content": self.system}]
                for h, r in history[-3:]:
                    messages += [{"role": "user", "content": h[:1500]}, {"role": "assistant", "content": r[:1500]}]
                messages.append({"role": "user", "content": human})
                reply = reply or self.ctx.responses.reply(rng, None, 200)
                ev = self.factory.chat(rng, ts, self.ident, messages, reply, max_tokens=2048, temperature=0.7)
                self._name_end_user(ev, index)
                out.append((ts, seq, ev))
                seq += 1
                history.append((human, reply))
                ts += len(reply) / 60.0 + float(rng.lognormal(3.7, 0.9))
        # The hidden extraction: one customer's script, mixed into the same account.
        bad_times = (bot_times(rng, start, self.ctx.end, max(1, int(round(bad_per_day))), "office", 1.0)
                     if self.spec.extraction_share > 0 else np.zeros(0))
        for t in bad_times:
            prompt = self.prompts(rng)
            messages = [{"role": "system", "content": self.system}] + [
                m for m in prompt.messages if m["role"] != "system"]
            reply = self.ctx.responses.reply(rng, prompt.area, prompt.target_tokens)
            remember = getattr(self.prompts, "remember", None)
            if remember is not None:  # a loop (self-instruct, evolution) feeds on its own answers
                remember(reply)
            ev = self.factory.chat(rng, float(t), self.ident, messages, reply, max_tokens=2048, temperature=0.7,
                                   tools=prompt.tools)
            self._name_end_user(ev, len(self.customers))
            out.append((float(t), seq, ev))
            seq += 1
        out.sort(key=lambda r: (r[0], r[1]))
        for _, _, ev in out:
            yield ev


class OrganicReseller(MixedCampaign):
    """A hard negative: a reseller (or any aggregator app) relaying its customers' conversations,
    busy, broad and round the clock, with no extraction inside."""

    def __init__(self, ctx: LabContext, index: int, per_day: int = 1000, end_user_ids: bool = True) -> None:
        # An extraction share of 0 (only campaigns' specs are checked to be > 0): no script at all.
        spec = CampaignSpec("mixed", name=f"reseller-{index}", per_day=per_day, extraction_share=0.0,
                            content="replay", end_user_ids=end_user_ids)
        super().__init__(ctx, spec, name=f"organic/reseller/{index}")

    def labels(self) -> list[dict[str, Any]]:
        return [{"account": self.account, "kind": "organic", "campaign": None, "strategy": "reseller",
                 "end_user_ids": self.spec.end_user_ids, "per_day": self.spec.per_day}]


def _customer_id(account: str, index: int) -> str:
    return "cus_" + hashlib.blake2b(f"{account}/{index}".encode(), digest_size=6).hexdigest()


def build_campaign(ctx: LabContext, spec: CampaignSpec) -> SingleAccountCampaign | HydraCampaign | MixedCampaign:
    if spec.strategy == "hydra":
        return HydraCampaign(ctx, spec)
    if spec.strategy == "mixed":
        return MixedCampaign(ctx, spec)
    return SingleAccountCampaign(ctx, spec)
