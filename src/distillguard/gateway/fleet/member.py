"""A gateway as one replica of a fleet: its hooks into the shared state.

:class:`FleetMember` is what the request path and the admin API call when the gateway runs with
``--state redis://...``; without it (the default) nothing here runs and nothing needs Redis.

* :meth:`decide`: the policy's decision with the shared token buckets, the request's
  observation published in the same round trip; Redis away: the local decision (``fail =
  "open"``) or a retryable refusal (``fail = "closed"``, code ``shared_state_unavailable``).
* :meth:`answered`: an answer's output tokens to the other replicas, its tokens to the shared
  token buckets (in the background: the client is not kept waiting).
* :meth:`share`: an operator change (manual action, allowlist, API key, appeal, refusal) to every
  replica; :meth:`_apply` is the receiving end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distillguard.gateway.fleet.buckets import FleetPolicy
from distillguard.gateway.fleet.observation import Observation, fold
from distillguard.gateway.fleet.state import SharedState
from distillguard.gateway.policy import Decision, Limits, ManualAction

log = logging.getLogger("distillguard.gateway.fleet")
REFUSAL_SHARE_S = 3600.0      # a refusal is re-shared when it changes, or after this long


class FleetMember:
    def __init__(self, gw: Any, url: str, *, replica: str, prefix: str = "dg") -> None:
        self.gw = gw
        self.state = SharedState(url, replica=replica, prefix=prefix)
        policy = FleetPolicy(gw.config.policy, allowlist=gw.allowlist)
        policy.manual = gw.policy.manual
        gw.policy = policy
        self.policy = policy
        self.state.on_observation = self._fold
        self.state.on_admin = self._apply
        self.state.on_mode = self._mode
        self._tasks: set[asyncio.Task] = set()
        self._shared_refusals: dict[str, tuple[str, float]] = {}

    async def start(self) -> None:
        await self.state.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
        await self.state.stop()

    def _mode(self, shared: bool) -> None:
        self.policy.shared = shared

    def _fold(self, obs: Observation) -> None:
        fold(self.gw.scorer, obs)

    # -- per request -------------------------------------------------------------------------------
    async def decide(self, assessment: Any, clock: float | None, obs: Observation | None) -> Decision:
        policy = self.policy
        if not policy.shared:
            await self.state.admit([], True, obs)          # buffered for the others
            if self.gw.config.policy.fail == "closed":
                return Decision(action="throttle", codes=["shared_state_unavailable"], retry_after=1.0,
                                explanation="the gateway's shared state is unavailable; retry shortly")
            return policy.decide(assessment, now=clock)
        d = policy.decide(assessment, now=clock)
        result = await self.state.admit(policy.requests(d), d.enforced, obs, now=clock)
        if result is None:                                   # Redis went away during the call
            if self.gw.config.policy.fail == "closed":
                return Decision(action="throttle", codes=["shared_state_unavailable"], retry_after=1.0,
                                explanation="the gateway's shared state is unavailable; retry shortly")
            return policy.decide(assessment, now=clock)
        return policy.settle(d, result[1], assessment.account)

    def answered(self, account: str, assessment: Any, tokens: int, total_tokens: float,
                 clock: float | None) -> None:
        if assessment is not None:
            self.state.publish(Observation("o", account, time.time(), completion_tokens=max(0, tokens),
                                           repeat=assessment.repeat, end_user_key=assessment.end_user_key,
                                           end_user_repeat=assessment.end_user_repeat,
                                           prompt_chars=assessment.prompt_chars, probe=assessment.probe,
                                           elicited=assessment.elicited))
        if self.policy.shared and total_tokens > 0 and self._has_token_limits():
            keys = self.policy.token_keys(account, assessment.cluster if assessment else None)
            self._background(self.state.charge(keys, total_tokens, now=clock))

    def _has_token_limits(self) -> bool:
        c = self.gw.config.policy
        return (c.limits.tokens_per_minute is not None or c.cluster_limits.tokens_per_minute is not None
                or any(r.limits.tokens_per_minute is not None for r in c.rules)
                or any(m.limits.tokens_per_minute is not None for m in self.policy.manual.values()))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- operator state ------------------------------------------------------------------------------
    def share(self, kind: str, name: str, value: Any) -> None:
        """Send an operator change (already applied here) to every replica, in the background."""
        self._background(self.state.set_admin(kind, name, value))

    def refused(self, account: str, refusal: dict[str, Any]) -> None:
        """Share a refusal (the grounds of an appeal) when it is new or changed, not per request."""
        sig = f"{refusal['action']}:{','.join(refusal['codes'])}"
        held = self._shared_refusals.get(account)
        if held is not None and held[0] == sig and refusal["at"] - held[1] < REFUSAL_SHARE_S:
            return
        self._shared_refusals[account] = (sig, refusal["at"])
        self.share("refusal", account, refusal)

    def _apply(self, kind: str, name: str, value: Any) -> None:
        gw = self.gw
        if kind == "manual":
            if value is None:
                gw.policy.manual.pop(name, None)
            else:
                gw.policy.manual[name] = ManualAction(
                    action=value["action"], reason=value.get("reason", ""),
                    limits=Limits(**(value.get("limits") or {})), set_at=float(value.get("set_at", 0.0)),
                    expires_at=value.get("expires_at"))
            gw.refusals.pop(name, None)
        elif kind == "allow":
            if value:
                gw.allowlist.add(name)
            else:
                gw.allowlist.discard(name)
            state = gw.scorer.accounts.get(name)
            if state is not None:
                state.verdict, state.scored_at = None, 0.0
        elif kind == "key":
            if value is None:
                gw.keys._by_hash.pop(name, None)
            else:
                info = gw.keys.add_hashed(name, value["account"], value.get("identity"))
                if gw.intel is not None:
                    gw.intel.add_keys([info])
        elif kind == "refusal":
            if value is None:
                gw.refusals.pop(name, None)
            else:
                gw.refusals[name] = value
        elif kind == "appeal":
            if value is not None:
                gw.appeals.merge(value)
        else:
            raise ValueError(f"unknown shared state kind {kind!r}")
        if kind in ("manual", "allow"):
            gw.save_admin_state()

    def status(self) -> dict[str, Any]:
        return self.state.status()
