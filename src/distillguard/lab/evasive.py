"""Evasive extraction families: actors built to slip past a rule tuned on the lab's own campaigns.

Every family draws its volume, cadence and wording per account from wide ranges; labels carry the
``family`` and the ``expected_status`` ("flagged"), and swarms and library campaigns their
``campaign``. Families:

* ``narrow_coding`` / ``narrow_agentic`` / ``narrow_math`` / ``narrow_language``: one capability
  area at a time (agentic requests carry tools and earlier tool-call rounds);
* ``self_instruct`` / ``evol_instruct``: loops that turn earlier answers into new instructions;
* ``judge_pipeline``: rating and feedback prompts carrying a candidate answer;
* ``persona``: the same tasks through many personas;
* ``system_only``: the prompt in the system or developer message, no or an empty user turn;
* ``slow_reasoning``: 10-20 queries a day for the whole period, each asking for reasoning;
* ``resample``: a fixed set of 40-600 reasoning, math or coding prompts, each sent 2-8 times at
  temperature > 0 (several traces per prompt, in whole passes or in a row);
* ``topic_frame``: one fixed instruction ("write a {form} about {topic} for {audience}") over
  open topics, Cosmopedia-style synthetic data; ``syllabus_frame``: one fixed frame asking for
  worked explanations over a bounded list of 10-42 topics and 1-3 levels, re-sampled;
* ``probe_wrapped``: coding tasks or reasoning asks, each wrapped in a jailbreak or override phrase
  (so every request reads as a security probe, never counted as harvest);
* ``swarm``: 30-60 accounts with nothing shared (own /24, e-mail domain, card, user agent, creation
  date), linked only by prompt style, targets and synchronised or load-balanced timing;
* ``library``: 2-4 campaigns that share only a public prompt library (each its own ``campaign``);
* ``proxy_mixed``: extraction by one of the families above inside a proxy's organic traffic.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np

from distillguard.lab.base import DAY, Actor, LabContext, account_name, make_identity, random_ip, rng_for
from distillguard.lab.campaigns import CampaignSpec, MixedCampaign
from distillguard.lab.evasive_prompts import BUILDERS, NARROW, Builder, CodingOnly, MathOnly, ReasoningAsks
from distillguard.lab.prompts import Prompt
from distillguard.lab.wording import log_uniform, pick

FIRST = ("alex", "maria", "li", "sam", "noah", "emma", "ivan", "fatima", "kenji", "lucas", "sofia", "omar",
         "priya", "jonas", "chloe", "mateo", "aisha", "david", "yuki", "elena", "tom", "nina", "ravi", "zoe")
LAST = ("smith", "garcia", "wang", "mueller", "rossi", "kim", "silva", "nguyen", "kowalski", "ali", "dubois",
        "tanaka", "okafor", "jensen", "novak", "ivanova", "patel", "lopez", "brown", "haddad")
DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "hotmail.com", "fastmail.com",
           "gmx.de", "web.de", "orange.fr", "libero.it", "yandex.ru", "mail.com", "zoho.com", "aol.com",
           "tutanota.com", "hey.com", "qq.com", "163.com", "naver.com", "uol.com.br", "rediffmail.com")
UA_BASES = ("OpenAI/Python {a}.{b}.{c}", "OpenAI/NodeJS {a}.{b}.{c}", "python-requests/2.{b}.{c}",
            "httpx/0.{b}.{c}", "aiohttp/3.{b}.{c}", "langchain-openai/0.{b}.{c}", "llama-index/0.{b}.{c}",
            "Go-http-client/{a}.{c}", "curl/8.{b}.{c}", "okhttp/4.{b}.{c}", "axios/1.{b}.{c}",
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/{a}{b}.0.{c} Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_{b}) Firefox/{a}{c}.0", "litellm/1.{b}.{c}", "Java-http-client/{a}{b}")
SCHEDULES = ("paced", "office", "bursts", "poisson", "sessions", "night")


def unique_ua(rng: np.random.Generator) -> str:
    return pick(rng, UA_BASES).format(a=int(rng.integers(1, 10)), b=int(rng.integers(0, 99)), c=int(rng.integers(0, 40)))


def own_email(rng: np.random.Generator) -> str:
    first, last = pick(rng, FIRST), pick(rng, LAST)
    local = pick(rng, (f"{first}.{last}", f"{first}{last}{int(rng.integers(1, 9999))}", f"{first[0]}{last}",
                       f"{last}.{first}{int(rng.integers(1, 99))}", f"{first}_{int(rng.integers(1980, 2006))}"))
    domain = pick(rng, DOMAINS) if rng.random() < 0.8 else f"{last}{pick(rng, ('-studio', 'tech', 'labs', 'dev'))}.com"
    return f"{local}@{domain}"


def times_for(rng: np.random.Generator, start: float, end: float, total: int, schedule: str, tz: float) -> np.ndarray:
    """``total`` request times in [start, end) under a schedule: paced worker, office hours, bursts,
    Poisson, human-like sessions, or overnight batches."""
    span = max(end - start, 3600.0)
    days = max(1, int(round(span / DAY)))
    if total <= 0:
        return np.zeros(0)
    if schedule == "paced":
        ts = np.linspace(start, end, total, endpoint=False) + rng.normal(0, span / total * 0.2, size=total)
    elif schedule in ("office", "night"):
        lo, hi = (8, 19) if schedule == "office" else (0, 6)
        ts = start + rng.integers(days, size=total) * DAY + ((rng.uniform(lo, hi, size=total) - tz) % 24) * 3600.0
    elif schedule == "bursts":
        centres = rng.uniform(start, end, size=max(1, days * int(rng.integers(1, 6))))
        ts = centres[rng.integers(len(centres), size=total)] + rng.exponential(float(rng.uniform(120, 1800)), size=total)
    elif schedule == "sessions":
        n_sessions = max(1, total // int(rng.integers(5, 30)))
        starts = rng.uniform(start, end, size=n_sessions)
        owner = rng.integers(n_sessions, size=total)
        ts = starts[owner] + np.array([float(rng.lognormal(4.5, 1.0)) for _ in range(total)]).cumsum() % 7200
    else:  # poisson
        ts = rng.uniform(start, end, size=total)
    return np.sort(np.clip(ts, start, end - 1.0))


def family_label(account: str, family: str, campaign: str, kind: str = "extraction",
                 expected: str = "flagged", **extra: Any) -> dict[str, Any]:
    return {"account": account, "kind": kind, "campaign": campaign, "strategy": family, "family": family,
            "expected_status": expected, **extra}


class FamilyAccount(Actor):
    """One account of a single-account family: identity, volume, cadence and builder all drawn."""

    VOLUME = (150, 900)

    def __init__(self, ctx: LabContext, family: str, index: int) -> None:
        super().__init__(ctx, f"family/{family}/{index}")
        rng = self.rng
        self.family = family
        self.ident = make_identity(rng, self.account, ctx, user_agent=unique_ua(rng) if rng.random() < 0.6 else None,
                                   created=ctx.start - float(rng.uniform(0.5, 400)) * DAY)
        self.builder: Builder = BUILDERS[family](ctx, rng)
        self.tz = float(rng.choice([-8, -5, -3, 0, 1, 3, 5.5, 8, 9]))
        self.max_tokens = pick(rng, (None, 1024, 2048, 4096, 8192))
        self.temperature = pick(rng, (None, 0.0, 0.3, 0.7, 1.0))
        if family == "slow_reasoning":
            self.schedule = pick(rng, ("paced", "sessions", "office", "poisson"))
            self.total = int(rng.integers(10, 21) * ctx.days)
        else:
            self.schedule = pick(rng, SCHEDULES)
            self.total = log_uniform(rng, *self.VOLUME)
        if family == "resample":   # its volume is its item set times the samples per item, at temperature > 0
            self.total = self.builder.total
            self.temperature = pick(rng, (0.6, 0.7, 0.8, 1.0))
        lead = int(rng.integers(0, max(1, ctx.days // 3))) if family != "slow_reasoning" else 0
        self.window = (ctx.start + lead * DAY, ctx.end)

    def labels(self) -> list[dict[str, Any]]:
        return [family_label(self.account, self.family, self.name, schedule=self.schedule)]

    def request(self, ts: float, prompt: Prompt, ident: Any = None) -> dict[str, Any]:
        reply = self.ctx.responses.reply(self.rng, prompt.area, prompt.target_tokens)
        self.builder.remember(reply)
        return self.factory.chat(self.rng, ts, ident or self.ident, prompt.messages, reply,
                                 max_tokens=self.max_tokens, temperature=self.temperature, tools=prompt.tools)

    def events(self) -> Iterator[dict[str, Any]]:
        for ts in times_for(self.rng, *self.window, self.total, self.schedule, self.tz):
            yield self.request(float(ts), self.builder(self.rng))


class Swarm(Actor):
    """30-60 accounts sharing no infrastructure, linked only by style, targets and timing."""

    def __init__(self, ctx: LabContext, index: int) -> None:
        super().__init__(ctx, f"family/swarm/{index}")
        rng = self.rng
        self.members = []
        for i in range(int(rng.integers(30, 61))):
            account = account_name(ctx.seed, f"{self.name}/{i}")
            prefix = f"{int(rng.integers(11, 223))}.{int(rng.integers(256))}.{int(rng.integers(256))}"
            card = "card_" + hashlib.blake2b(f"{self.name}/{i}/card".encode(), digest_size=6).hexdigest()
            self.members.append(make_identity(rng, account, ctx, email=own_email(rng), payment=card,
                                              ips=[random_ip(rng, prefix)], user_agent=unique_ua(rng),
                                              created=ctx.start - float(rng.uniform(1, 120)) * DAY))
        self._dedupe()
        target = pick(rng, ("narrow_coding", "narrow_math", "slow_reasoning", "judge_pipeline", "persona", "self_instruct"))
        self.builder = BUILDERS[target](ctx, rng)  # one script, one style, shared by every member
        self.target = target
        self.timing = pick(rng, ("synchronised", "load_balanced"))
        self.budget = [int(rng.integers(20, 46)) for _ in self.members]
        self.max_tokens = pick(rng, (None, 2048, 4096))

    def _dedupe(self) -> None:
        """Guarantee nothing is shared: a second draw of the same /24 or user agent is redrawn."""
        seen_prefix, seen_ua, seen_mail = set(), set(), set()
        for ident in self.members:
            while ident.ips[0].rsplit(".", 1)[0] in seen_prefix:
                ident.ips = [random_ip(self.rng)]
            while ident.user_agent in seen_ua:
                ident.user_agent = unique_ua(self.rng) + f" ({int(self.rng.integers(1 << 20))})"
            while ident.email.split("@")[1] in seen_mail and len(seen_mail) < len(self.members):
                ident.email = ident.email.split("@")[0] + "@" + own_email(self.rng).split("@")[1].replace(
                    ".", f"{int(self.rng.integers(10, 99))}.", 1)
            seen_prefix.add(ident.ips[0].rsplit(".", 1)[0])
            seen_ua.add(ident.user_agent)
            seen_mail.add(ident.email.split("@")[1])

    def labels(self) -> list[dict[str, Any]]:
        return [family_label(m.account, "swarm", self.name, target=self.target, timing=self.timing,
                             accounts=len(self.members)) for m in self.members]

    def _schedule(self) -> list[tuple[float, int]]:
        rng, ctx = self.rng, self.ctx
        start = ctx.start + int(rng.integers(0, max(1, ctx.days // 2))) * DAY
        total = sum(self.budget)
        if self.timing == "load_balanced":
            # One paced queue dealt out across the members (round robin with a random order).
            ts = times_for(rng, start, ctx.end, total, pick(rng, ("paced", "office")), 0.0)
            owners = np.concatenate([np.full(n, i) for i, n in enumerate(self.budget)])
            rng.shuffle(owners)
            return sorted(zip((float(t) for t in ts), (int(o) for o in owners)))
        n_waves = int(rng.integers(3, 4 * max(1, (ctx.end - start) // DAY) + 4))
        waves = np.sort(rng.uniform(start, ctx.end - 3 * 3600.0, size=n_waves))
        width = float(rng.uniform(300, 5400))
        rows = [(float(waves[int(w)] + rng.uniform(0, width)), i)
                for i, n in enumerate(self.budget) for w in rng.integers(n_waves, size=n)]
        return sorted(rows)

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for ts, member in self._schedule():
            prompt = self.builder(rng)
            reply = self.ctx.responses.reply(rng, prompt.area, prompt.target_tokens)
            self.builder.remember(reply)
            yield self.factory.chat(rng, ts, self.members[member], prompt.messages, reply,
                                    max_tokens=self.max_tokens, temperature=0.7, tools=prompt.tools)


def public_library(ctx: LabContext, size: int = 1500) -> list[Prompt]:
    """A published prompt library (say, a data-generation repository's prompt file): fixed for a
    seed, the same for every campaign that downloads it."""
    rng = rng_for(ctx.seed, "public-prompt-library")
    makers = [CodingOnly(ctx, rng), MathOnly(ctx, rng), ReasoningAsks(ctx, rng)]
    return [makers[i % len(makers)](rng) for i in range(size)]


class LibraryCampaign(Actor):
    """One of several independent campaigns drawing prompts from the same public library.

    Within a campaign the accounts share an IP range and a card (one operator); across campaigns
    nothing is shared but the library, so they must be counted apart."""

    def __init__(self, ctx: LabContext, index: int, campaign: int, library: list[Prompt]) -> None:
        super().__init__(ctx, f"family/library/{index}/{campaign}")
        rng = self.rng
        self.library = library
        prefix = f"{int(rng.integers(11, 223))}.{int(rng.integers(256))}.{int(rng.integers(256))}"
        card = "card_" + hashlib.blake2b(f"{self.name}/card".encode(), digest_size=6).hexdigest()
        domain = pick(rng, DOMAINS)
        self.members = [make_identity(rng, account_name(ctx.seed, f"{self.name}/{i}"), ctx,
                                      email=own_email(rng).split("@")[0] + "@" + domain, payment=card,
                                      ips=[random_ip(rng, prefix)], user_agent=unique_ua(rng))
                        for i in range(int(rng.integers(1, 4)))]
        self.schedule = pick(rng, SCHEDULES)
        self.total = log_uniform(rng, 150, 700)
        self.suffix = pick(rng, ("", "", "Be detailed.", "Answer in full.", "Respond in markdown."))

    def labels(self) -> list[dict[str, Any]]:
        return [family_label(m.account, "library", self.name, library=self.name.rsplit("/", 1)[0])
                for m in self.members]

    def events(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for ts in times_for(rng, self.ctx.start, self.ctx.end, self.total, self.schedule, float(rng.integers(-8, 9))):
            prompt = self.library[int(rng.integers(len(self.library)))]
            messages = [dict(m) for m in prompt.messages]
            if self.suffix:
                messages[-1]["content"] = f"{messages[-1]['content']}\n\n{self.suffix}"
            reply = self.ctx.responses.reply(rng, prompt.area, prompt.target_tokens)
            yield self.factory.chat(rng, float(ts), pick(rng, self.members), messages, reply, temperature=0.7)


PROXY_SYSTEMS = ("You are {name}, a friendly assistant. Be helpful and concise.", "You are {name}. Answer the user.",
                 "System: {name} assistant. Follow the user's instructions.", "{name} — AI helper for our members.",
                 "You are a helpful assistant provided by {name}.")
PROXY_NAMES = ("ChatPal", "AskNova", "QuillBot Pro", "HelpMate", "Brainy", "OpenDesk AI", "Kai", "Mentora")


class ProxyMixed(MixedCampaign):
    """A proxy / reseller whose organic customer traffic hides 5-30 % extraction by an evasive family."""

    def __init__(self, ctx: LabContext, index: int) -> None:
        rng = rng_for(ctx.seed, f"family/proxy_mixed/{index}/spec")
        spec = CampaignSpec("mixed", name=f"proxy_mixed-{index}", per_day=log_uniform(rng, 200, 2000),
                            extraction_share=round(float(rng.uniform(0.05, 0.3)), 3), content="replay",
                            end_user_ids=bool(rng.random() < 0.5))
        super().__init__(ctx, spec, name=f"family/proxy_mixed/{index}")
        self.inner = pick(rng, sorted(set(BUILDERS) - {"system_only", "resample", "topic_frame", "syllabus_frame"}))
        builder = BUILDERS[self.inner](ctx, self.rng)
        self.prompts = builder
        self.system = pick(rng, PROXY_SYSTEMS).format(name=pick(rng, PROXY_NAMES))

    def labels(self) -> list[dict[str, Any]]:
        return [family_label(self.account, "proxy_mixed", self.name, inner=self.inner,
                             extraction_share=self.spec.extraction_share, end_user_ids=self.spec.end_user_ids)]


ATTACK_FAMILIES = tuple(BUILDERS) + ("swarm", "library", "proxy_mixed")
NARROW_FAMILIES = tuple(NARROW)


def build_attack(ctx: LabContext, family: str, index: int) -> list[Actor]:
    """The actors of one instance of ``family`` (a swarm and a library group are one instance)."""
    if family == "swarm":
        return [Swarm(ctx, index)]
    if family == "library":
        library = public_library(ctx)
        n = int(rng_for(ctx.seed, f"family/library/{index}").integers(2, 5))
        return [LibraryCampaign(ctx, index, c, library) for c in range(n)]
    if family == "proxy_mixed":
        return [ProxyMixed(ctx, index)]
    return [FamilyAccount(ctx, family, index)]
