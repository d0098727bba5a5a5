"""The dashboard's link to a running gateway's admin API (``distillguard web --gateway URL``).

Analysts' actions are pushed as the gateway's own admin calls, and the appeals queue is read
and decided there (the gateway holds the appeals: it is where a blocked user files one). Every
failure becomes one :class:`GatewayError` sentence that a page can show; nothing here raises
anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from distillguard.errors import UsageError
from distillguard.web.auth import read_secret

ADMIN_TOKEN_ENV = "DISTILLGUARD_ADMIN_TOKEN"
# What a dashboard throttle asks the gateway for (the default policy's flagged_coverage limits).
THROTTLE_REQUESTS_PER_MINUTE = 10
THROTTLE_TOKENS_PER_MINUTE = 5000


class GatewayError(Exception):
    """The gateway could not be reached or refused the call; ``status`` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def read_admin_token(token_file: Path | None) -> str:
    """The gateway's admin token from ``--gateway-token-file`` (first line) or the environment."""
    return read_secret(token_file, ADMIN_TOKEN_ENV, "gateway token",
                       f"--gateway needs the gateway's admin token: --gateway-token-file FILE or {ADMIN_TOKEN_ENV}")


def check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise UsageError(f"--gateway must be the gateway's base URL such as http://127.0.0.1:8080, got {url!r}")
    return url.rstrip("/")


def action_calls(action: str, account: str, reason: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The gateway admin calls that carry one dashboard action on one account.

    * ``block`` / ``throttle``: an operator action (throttle at the default flagged limits);
    * ``allowlist``: on the gateway's allowlist, any operator action cleared (a manual block
      would otherwise still win over the allowlist);
    * ``false_positive``: an operator ``allow``: exempt from the automatic rules, which would
      otherwise keep acting on the same live verdict;
    * ``clear``: no operator action and off the allowlist.
    """
    path = f"/admin/accounts/{quote(account, safe='')}/action"
    allow_path = f"/admin/allowlist/{quote(account, safe='')}"
    if action == "block":
        return [("POST", path, {"action": "block", "reason": reason})]
    if action == "throttle":
        return [("POST", path, {"action": "throttle", "reason": reason,
                                "requests_per_minute": THROTTLE_REQUESTS_PER_MINUTE,
                                "tokens_per_minute": THROTTLE_TOKENS_PER_MINUTE})]
    if action == "allowlist":
        return [("POST", path, {"action": "clear", "reason": reason}), ("PUT", allow_path, None)]
    if action == "false_positive":
        return [("POST", path, {"action": "allow", "reason": reason})]
    if action == "clear":
        return [("POST", path, {"action": "clear", "reason": reason}), ("DELETE", allow_path, None)]
    raise ValueError(f"unknown action {action!r}")


@dataclass(frozen=True)
class GatewayLink:
    url: str
    token: str
    timeout_s: float = 5.0

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s,
                                         headers={"authorization": f"Bearer {self.token}"}) as client:
                reply = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway {self.url} unreachable ({type(exc).__name__}: {exc})".replace("()", ""))
        try:
            data = reply.json()
        except ValueError:
            data = None
        if reply.status_code >= 400:
            message = data.get("error", {}).get("message") if isinstance(data, dict) and isinstance(
                data.get("error"), dict) else reply.text[:200]
            raise GatewayError(f"gateway answered {reply.status_code}: {message}", status=reply.status_code)
        return data

    async def push(self, action: str, account: str, reason: str) -> None:
        for method, path, body in action_calls(action, account, reason):
            await self.call(method, path, body)

    async def appeals(self, limit: int = 500) -> dict[str, Any]:
        return await self.call("GET", f"/admin/appeals?limit={int(limit)}")

    async def appeal(self, appeal_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/admin/appeals/{quote(appeal_id, safe='')}")

    async def decide(self, appeal_id: str, decision: str, note: str, analyst: str) -> dict[str, Any]:
        return await self.call("POST", f"/admin/appeals/{quote(appeal_id, safe='')}/decision",
                               {"decision": decision, "note": note, "analyst": analyst})
