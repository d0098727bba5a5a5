"""The policy's token buckets on Redis: one limit, however many replicas a client spreads over.

:class:`FleetPolicy` is the policy with its buckets replaced, while the shared state is up, by
probes: deciding records which buckets a request is checked against (and what it would take)
without refusing; :meth:`FleetPolicy.settle` then checks and charges them all in one Redis
script (:meth:`SharedState.admit`) and turns any wait into the throttle the local policy would
have made. While Redis is away the policy's own (per-process) buckets answer.
"""

from __future__ import annotations

from typing import Any

from distillguard.gateway.policy import Decision, Policy


class _Probe:
    """Stands in for a :class:`TokenBucket` during one decision: records, never refuses."""

    __slots__ = ("scope", "name", "what", "per_minute", "cost", "taken")

    def __init__(self, scope: str, name: str, what: str, per_minute: float) -> None:
        self.scope, self.name, self.what, self.per_minute = scope, name, what, per_minute
        self.cost = 0.0
        self.taken = 0.0

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.name}:{self.what}"

    def wait(self, cost: float, now: float) -> float:
        self.cost = max(self.cost, cost)
        return 0.0

    def take(self, cost: float, now: float) -> None:
        self.taken += cost


class FleetPolicy(Policy):
    shared = False            # set by the shared state: True while Redis answers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._probes: list[_Probe] | None = None

    def decide(self, a, *, now: float | None = None, tokens_wanted: float = 0.0) -> Decision:
        if not self.shared:
            return super().decide(a, now=now, tokens_wanted=tokens_wanted)
        self._probes = []
        try:
            d = super().decide(a, now=now, tokens_wanted=tokens_wanted)
        finally:
            probes, self._probes = self._probes, None
        d._probes = probes        # type: ignore[attr-defined]
        return d

    def _bucket(self, scope: str, name: str, what: str, per_minute: float, now: float):
        if self._probes is None:
            return super()._bucket(scope, name, what, per_minute, now)
        probe = _Probe(scope, name, what, per_minute)
        self._probes.append(probe)
        return probe

    @staticmethod
    def requests(d: Decision) -> list[tuple[str, float, float, float]]:
        """The shared buckets a decision was checked against: (key, per_minute, cost, take)."""
        return [(p.key, p.per_minute, p.cost if p.what == "tokens" else 1.0, p.taken)
                for p in getattr(d, "_probes", None) or ()]

    def settle(self, d: Decision, waits: list[float], account: str) -> Decision:
        """Apply the shared buckets' waits to a decision made with probes (as ``_check_limits``
        would have: throttle, a rate-limit code per bucket, the longest wait)."""
        probes = getattr(d, "_probes", None) or ()
        throttled = False
        for probe, wait in zip(probes, waits):
            if wait <= 0:
                continue
            throttled = True
            d.escalate("throttle")
            code = f"rate_limit_{probe.scope}_{probe.what}"
            if code not in d.codes:
                d.codes.append(code)
            d.retry_after = max(d.retry_after or 0.0, wait)
            why = (f"{probe.scope} {probe.name!r} is limited to {probe.per_minute:g} {probe.what} per minute; "
                   f"retry in {wait:.1f} s")
            d.explanation = f"{d.explanation}; {why}" if d.explanation else why
        manual = self.manual.get(account)
        if throttled and manual is not None and manual.action == "throttle" and d.action == "throttle":
            if "manual_throttle" not in d.codes:
                d.codes.insert(0, "manual_throttle")
            d.rule = "manual"
        return d

    def token_keys(self, account: str, cluster: str | None) -> list[str]:
        """The shared token buckets an answer's tokens are charged to (those a limit names)."""
        return [f"{scope}:{name}:tokens" for scope, name in (("account", account), ("cluster", cluster))
                if name is not None]
