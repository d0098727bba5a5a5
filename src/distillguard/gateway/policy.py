"""Policy: from an account's live risk to an action, with a reason code and an explanation.

Actions, weakest to strongest: ``allow``, ``modify`` (strip ``logprobs``/``top_logprobs`` or
reasoning fields, shorten ``max_tokens``, route to a watermark cohort, ask the model server to
shape the answer so it teaches a copier less: ``shape``, reason code ``output_shaped``), ``throttle`` (token
buckets per account and per cluster, on requests and on tokens) and ``block``. The first rule
whose condition holds applies; manual actions from the admin API come first, the allowlist
exempts an account from everything but manual blocks. In ``shadow`` mode decisions are made
and logged but never acted on.

Reason codes are stable strings a client or an analyst can match on; every non-allow decision
also carries a sentence a person can read.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from distillguard.detect.scoring import FAMILY_ALPHA
from distillguard.detect.signals import ELICITATION
from distillguard.gateway import policy_words as words
from distillguard.gateway.rules import DEFAULT_RULES, INTEL_CONDITIONS, STATUS_CONDITIONS, Limits, Rule
from distillguard.gateway.scorer import Assessment

_RANK = {"allow": 0, "modify": 1, "throttle": 2, "block": 3}

MAX_SUSTAINED = 200_000         # flags whose start is remembered (oldest forgotten first)


@dataclass
class PolicyConfig:
    mode: str = "enforce"                      # enforce | shadow
    fail: str = "open"                         # open | closed: what an internal error does
    limits: Limits = Limits()                  # everyone (None: unlimited)
    cluster_limits: Limits = Limits()          # every hydra cluster, summed over its members
    rules: tuple[Rule, ...] = DEFAULT_RULES
    cohorts: int = 8                           # default watermark cohorts (by account hash)


@dataclass
class Decision:
    action: str = "allow"
    codes: list[str] = field(default_factory=list)
    explanation: str = ""
    strip_logprobs: bool = False
    strip_reasoning: bool = False
    max_tokens: int | None = None
    cohort: str | None = None
    shape: str | None = None                   # shaping mode for the model server (x-distillguard-shape)
    retry_after: float | None = None
    enforced: bool = True
    rule: str | None = None
    _buckets: list = field(default_factory=list, repr=False)   # request buckets consulted

    def escalate(self, action: str) -> None:
        if _RANK[action] > _RANK[self.action]:
            self.action = action

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "enforced": self.enforced}
        if self.codes:
            out["codes"] = self.codes
        if self.explanation:
            out["explanation"] = self.explanation
        if self.rule:
            out["rule"] = self.rule
        if self.cohort:
            out["cohort"] = self.cohort
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.shape:
            out["shape"] = self.shape
        if self.retry_after is not None:
            out["retry_after_s"] = round(self.retry_after, 2)
        return out


class TokenBucket:
    """Rate per minute with a burst of one minute's worth; ``charge`` may run it into debt."""

    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, float(per_minute))
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0 if it fits now)."""
        self._refill(now)
        if self.level >= cost or self.level >= self.capacity:
            return 0.0
        return (min(cost, self.capacity) - self.level) / self.rate if self.rate > 0 else math.inf

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost


@dataclass
class ManualAction:
    action: str                       # block | throttle | allow
    reason: str
    limits: Limits = Limits()
    set_at: float = 0.0
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "limits": self.limits.to_dict(),
                "set_at": self.set_at, "expires_at": self.expires_at}


def _since_key(subject: Any, when: str, evidence: str) -> tuple[str, str]:
    """The key of a sustained flag's start: the flagged subject and the flag (condition/evidence)."""
    return f"{subject}", f"{when}/{evidence}"


class Policy:
    def __init__(self, config: PolicyConfig, allowlist: set[str] | None = None) -> None:
        self.config = config
        self.allowlist = allowlist if allowlist is not None else set()
        self.manual: dict[str, ManualAction] = {}
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        # (subject, condition) -> (clock, account queries) when a sustained rule's flag first held
        self._since: dict[tuple[str, str], tuple[float, int]] = {}

    def cohort_of(self, account: str) -> str:
        """Default watermark cohort: a stable hash of the account."""
        return f"cohort-{zlib.crc32(account.encode('utf-8', 'surrogatepass')) % max(1, self.config.cohorts)}"

    # -- throttling ---------------------------------------------------------------------------
    def _bucket(self, scope: str, name: str, what: str, per_minute: float, now: float) -> TokenBucket:
        key = (scope, name, what)
        bucket = self._buckets.get(key)
        if bucket is None or abs(bucket.capacity - max(1.0, per_minute)) > 1e-9:
            bucket = self._buckets[key] = TokenBucket(per_minute, now)
        return bucket

    def _check_limits(self, decision: Decision, scope: str, name: str, limits: Limits, now: float,
                      tokens_wanted: float) -> None:
        for what, per_minute, cost in (("requests", limits.requests_per_minute, 1.0),
                                       ("tokens", limits.tokens_per_minute, tokens_wanted)):
            if per_minute is None:
                continue
            bucket = self._bucket(scope, name, what, per_minute, now)
            wait = bucket.wait(cost, now)
            if what == "requests":
                decision._buckets.append(bucket)
            if wait > 0:
                decision.escalate("throttle")
                decision.codes.append(f"rate_limit_{scope}_{what}")
                decision.retry_after = max(decision.retry_after or 0.0, wait)
                if not decision.explanation:
                    decision.explanation = (f"{scope} {name!r} is limited to {per_minute:g} {what} per minute; "
                                            f"retry in {wait:.1f} s")

    def charge_tokens(self, account: str, cluster: str | None, tokens: float, now: float | None = None) -> None:
        """Count an answered request's tokens against the token buckets that exist for it (they
        may go into debt: the next request waits until the debt is paid)."""
        now = time.monotonic() if now is None else now
        for scope, name in (("account", account), ("cluster", cluster)):
            if name is None:
                continue
            bucket = self._buckets.get((scope, name, "tokens"))
            if bucket is not None:
                bucket.take(float(tokens), now)

    # -- the decision -------------------------------------------------------------------------
    def decide(self, a: Assessment, *, now: float | None = None, tokens_wanted: float = 0.0) -> Decision:
        """The action for one request; ``tokens_wanted`` is checked against token buckets (by
        default 0: a token bucket refuses only while it is in debt from answered requests)."""
        now = time.monotonic() if now is None else now
        d = Decision(cohort=self.cohort_of(a.account), enforced=self.config.mode != "shadow")
        manual = self.manual.get(a.account)
        if manual is not None and manual.expires_at is not None and manual.expires_at < time.time():
            self.manual.pop(a.account, None)
            manual = None
        if manual is not None and manual.action == "block":
            d.escalate("block")
            d.codes.append("manual_block")
            d.explanation = f"account {a.account!r} is blocked by an operator: {manual.reason}"
            d.rule = "manual"
            return d
        if a.account in self.allowlist:
            d.codes.append("authorised")
            return d
        if manual is not None and manual.action == "allow":
            return d
        if manual is not None and manual.action == "throttle":
            d.rule = "manual"
            self._check_limits(d, "account", a.account, manual.limits, now, tokens_wanted)
            if d.action == "throttle":
                d.codes.insert(0, "manual_throttle")
                d.explanation = f"an operator limits this account ({manual.reason}); " + d.explanation
                return self._admit(d, now)
        self._check_limits(d, "account", a.account, self.config.limits, now, tokens_wanted)
        if a.cluster is not None:
            self._check_limits(d, "cluster", a.cluster, self.config.cluster_limits, now, tokens_wanted)
        waits = False
        for rule in self.config.rules:
            if self._holds(rule, a) and (not rule.sustained or self._sustained(rule, a, now)):
                if a.rerun and rule.sustained and rule.when == "flagged" and "block" in rule.actions:
                    waits = True          # a re-run in progress: the persistent flag's block waits
                    continue
                self._apply(rule, d, a, now, tokens_wanted)
                break
        if waits and d.action != "allow":
            d.codes.append("rerun_in_progress")
            d.explanation += ("; the flag has persisted long enough to block, but every request since its last "
                              "new one re-sends an earlier one, each once (a re-run in progress): the block waits "
                              "until new requests come or an item is re-sent twice")
        return self._admit(d, now)

    def _admit(self, d: Decision, now: float) -> Decision:
        """A request that goes through takes one token from each request bucket it was checked
        against (refused ones take nothing: being throttled does not extend the wait)."""
        if d.action not in ("throttle", "block") or not d.enforced:
            for bucket in d._buckets:
                bucket.take(1.0, now)
        return d

    def _sustained(self, rule: Rule, a: Assessment, now: float) -> bool:
        """Whether the flag ``rule`` rests on has held for ``sustained_s`` and over
        ``sustained_queries`` of the account's queries since it was first seen to hold here (it is
        held, so this is that moment or later). The start is kept when the flag lapses: pausing
        or slowing down does not restart the count. A cluster's flag is counted from each
        member's first request under it (its queries are the cluster's): an account that behaviour
        links join to a cluster flagged days ago is not blocked on its first request there."""
        cluster = rule.when == "cluster_flagged"
        subject = f"{a.cluster}/{a.account}" if cluster else (a.end_user_key if a.end_user else a.account)
        queries = a.cluster_queries if cluster else a.queries     # a cluster's flag counts its members' queries
        key = _since_key(subject, rule.when, rule.evidence)
        start = self._since.get(key)
        if start is None:
            if len(self._since) >= MAX_SUSTAINED:
                self._since.pop(next(iter(self._since)))
            start = self._since[key] = (now, queries)
        return now - start[0] >= rule.sustained_s and queries - start[1] >= rule.sustained_queries

    def flagged_since(self, account: str, when: str = "flagged", evidence: str = "any") -> tuple[float, int] | None:
        """(clock, account queries) when a sustained rule's flag on ``account`` was first seen, if it was."""
        return self._since.get(_since_key(account, when, evidence))

    @staticmethod
    def _holds(rule: Rule, a: Assessment) -> bool:
        intel_rule = rule.when in INTEL_CONDITIONS
        if intel_rule and (a.intel is None or (rule.when == "intel" and not a.intel.flagged)):
            return False              # (first, so that without intel these rules cost one test)
        if a.queries < rule.min_queries:
            return False
        verdict = a.cluster_verdict if rule.when == "cluster_flagged" else a.verdict
        if rule.evidence == "elicitation" and (
                verdict is None or verdict.family_p.get(ELICITATION, 1.0) > FAMILY_ALPHA):
            return False
        if rule.when == "any" or intel_rule:
            return True
        if rule.when == "flagged":
            return a.verdict.flagged
        if rule.when == "cluster_flagged":
            return (a.cluster_verdict is not None and a.cluster_verdict.flagged
                    and rule.links in ("any", a.cluster_links))
        if rule.when == "elevated":
            return a.elevated
        if rule.when in STATUS_CONDITIONS:
            return a.verdict.status == rule.when
        return False

    def _apply(self, rule: Rule, d: Decision, a: Assessment, now: float, tokens_wanted: float) -> None:
        d.rule = rule.name
        if rule.when in INTEL_CONDITIONS:
            return self._apply_intel(rule, d, a, now, tokens_wanted)
        if rule.when in STATUS_CONDITIONS:
            return self._apply_status(rule, d, a, now, tokens_wanted)
        code = {"flagged": "extraction_flagged", "cluster_flagged": "cluster_flagged",
                "elevated": "elevated_risk"}.get(rule.when, rule.name)
        verdict = a.cluster_verdict if rule.when == "cluster_flagged" and a.cluster_verdict else a.verdict
        why = words.top_reasons(verdict)
        if rule.when == "cluster_flagged":
            carried = ("tied by shared infrastructure" if a.cluster_links == "infrastructure" else
                       "linked by shared prompt structure and timing, no shared infrastructure")
            subject = (f"account {a.account!r} belongs to cluster {a.cluster} ({a.cluster_size} accounts "
                       f"{carried}, attribution confidence {a.cluster_confidence:.0%})")
        elif a.end_user is not None:
            subject = f"end user {a.end_user!r} of account {a.account!r}"
        else:
            subject = f"account {a.account!r}"
        p_text = f"p = {verdict.p_value:.1e}" if verdict.p_value > 0 else "p < 1e-300"
        also = ""
        if a.intel is not None:       # peers' intel adds to a decision of ours, never softens it
            also = f"; also matches peers' intel: {words.intel_reasons(a.intel, 1)}"
        if "block" in rule.actions:
            d.escalate("block")
            d.codes.insert(0, code)
            held = ""
            if rule.sustained:
                whose = " of the cluster's" if rule.when == "cluster_flagged" else ""
                held = (f" and the flag has persisted {words.persists(rule, whose)} after its answers were "
                        f"limited")
            d.explanation = f"{subject} is flagged for model extraction ({p_text}){held}: {why}{also}"
            if also:
                d.codes.append("intel_match")
            if a.end_user is not None and rule.when != "cluster_flagged":
                d.codes.append("end_user")
            return
        if rule.when == "flagged" and rule.evidence == "elicitation":
            lead = (f"{subject} is flagged for model extraction on privileged content ({p_text}); "
                    f"{words.limited(rule, self.config.rules)}: {why}{also}")
        elif rule.when == "cluster_flagged":
            lead = (f"{subject} is flagged for model extraction ({p_text}); "
                    f"{words.limited(rule, self.config.rules)}: {why}{also}")
        elif rule.when == "flagged":
            lead = (f"{subject} is flagged for model extraction ({p_text}) without privileged content "
                    f"(value or broad coverage from automated prompts); limited and watermarked rather than "
                    f"blocked: {why}{also}")
        else:
            lead = f"{subject} shows elevated extraction risk ({p_text}): {why}{also}"
        self._act(rule, d, a, now, tokens_wanted, code, lead)
        if also and d.action != "allow":
            d.codes.append("intel_match")
        if a.end_user is not None and rule.when != "cluster_flagged" and d.action != "allow":
            d.codes.append("end_user")

    def _apply_status(self, rule: Rule, d: Decision, a: Assessment, now: float, tokens_wanted: float) -> None:
        """Probing or evaluation: the status's reason in words; never a block (see DEFAULT_RULES)."""
        code = {"probing": "security_probing", "evaluation": "evaluation_run"}[rule.when]
        what = {"probing": "security probing (jailbreak, leakage and refusal tests)",
                "evaluation": "an evaluation run (benchmark items at temperature 0)"}[rule.when]
        subject = f"end user {a.end_user!r} of account {a.account!r}" if a.end_user else f"account {a.account!r}"
        lead_reason = next((r.detail for r in a.verdict.reasons if r.signal == rule.when), "")
        limits = rule.limits.requests_per_minute
        held = f"held to {limits:g} requests per minute and " if limits and "throttle" in rule.actions else ""
        lead = (f"{subject} is reported as {what}, not extraction; {held}routed to watermark cohort "
                f"{rule.cohort!r}, never blocked on this status: {lead_reason}")
        self._act(rule, d, a, now, tokens_wanted, code, lead)
        if d.action == "allow":     # within its limits: still say why it is watermarked
            d.codes.insert(0, code)
            d.explanation = lead

    def _apply_intel(self, rule: Rule, d: Decision, a: Assessment, now: float, tokens_wanted: float) -> None:
        """A rule on peers' intel: the explanation names the peers and indicators that matched."""
        intel = a.intel
        code = "intel_flagged" if rule.when == "intel" else "intel_match"
        standing = "flagged on peers' intel" if intel.flagged else "matches peers' intel below the flag"
        subject = f"account {a.account!r} is {standing} (intel score {intel.score:.2f})"
        why = words.intel_reasons(intel)
        if "block" in rule.actions:
            d.escalate("block")
            d.codes.insert(0, code)
            d.explanation = f"{subject}: {why}"
            return
        lead = f"{subject}; limited and watermarked rather than blocked: {why}"
        if rule.actions == ("cohort",):
            lead = f"{subject}; routed to watermark cohort {rule.cohort!r}: {why}"
        self._act(rule, d, a, now, tokens_wanted, code, lead)

    def _act(self, rule: Rule, d: Decision, a: Assessment, now: float, tokens_wanted: float, code: str,
             lead: str) -> None:
        modified = False
        if "throttle" in rule.actions:
            if rule.when == "cluster_flagged" and a.cluster is not None:
                # One bucket for the whole cluster: rotating accounts inside it buys no rate.
                self._check_limits(d, "cluster", a.cluster, rule.limits, now, tokens_wanted)
            elif a.end_user is not None and a.end_user_key is not None:
                # The end user's requests only, in buckets of its own: the reseller's other
                # customers are not slowed down.
                self._check_limits(d, "end_user", a.end_user_key, rule.limits, now, tokens_wanted)
            else:
                self._check_limits(d, "account", a.account, rule.limits, now, tokens_wanted)
        if "strip_logprobs" in rule.actions:
            d.strip_logprobs = modified = True
        if "strip_reasoning" in rule.actions:
            d.strip_reasoning = modified = True
        if "cap_max_tokens" in rule.actions and rule.max_tokens:
            d.max_tokens = rule.max_tokens
            modified = True
        if "cohort" in rule.actions and rule.cohort:
            d.cohort = rule.cohort
            modified = True
        if "shape" in rule.actions and rule.shape:
            d.shape = rule.shape
            modified = True
        if modified:
            d.escalate("modify")
        if d.action != "allow":
            d.codes.insert(0, code)
            if d.shape:
                d.codes.append("output_shaped")
            d.explanation = lead + ("; " + d.explanation if d.explanation else "")
