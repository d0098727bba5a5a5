"""Appeals: a blocked or throttled API user asks for a human review; an analyst upholds or lifts.

The book is durable: every change appends the appeal's whole new record as one JSON line to
``<log dir>/appeals.jsonl`` and fsyncs before the caller is answered; at start the file is
replayed (the last record of each id wins; a torn last line from a crash is skipped, since its
caller never got an answer). Appeals are rare, so one line per change costs nothing worth saving.

Rules, checked here so the HTTP layer stays thin:

* a message of 1 to ``MAX_MESSAGE_CHARS`` characters;
* one open appeal per account (a second is refused with the open one's id);
* only an account the gateway has refused, or holds a manual block/throttle or a live flag
  against, has anything to appeal;
* after an upheld appeal the account waits ``COOLDOWN_S`` before appealing again, so the queue
  can't be flooded by one account.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

MAX_MESSAGE_CHARS = 2000
MAX_NOTE_CHARS = 2000
COOLDOWN_S = 24 * 3600.0
STATUSES = ("open", "upheld", "lifted")
DECISIONS = {"uphold": "upheld", "lift": "lifted"}
APPEAL_PATH = "/v1/appeals"


class AppealError(Exception):
    """A refused filing or decision: HTTP status, OpenAI-style error code, one sentence."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 retry_after: float | None = None, appeal: "Appeal | None" = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.retry_after, self.appeal = retry_after, appeal


@dataclass
class Appeal:
    id: str
    account: str
    key_id: str
    message: str
    created_at: float
    standing: dict[str, Any] = field(default_factory=dict)   # what the gateway held against the account
    status: str = "open"                                      # open | upheld | lifted
    decided_at: float | None = None
    note: str = ""                                            # the analyst's answer, shown to the user
    analyst: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What the user who filed it sees (no analyst name, no detection internals)."""
        return {"object": "appeal", "id": self.id, "status": self.status, "message": self.message,
                "created_at": int(self.created_at), "decided_at": None if self.decided_at is None
                else int(self.decided_at), "note": self.note}


def check_message(value: Any, *, name: str = "message", limit: int = MAX_MESSAGE_CHARS,
                  required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise AppealError(400, "invalid_request", f"{name} must be a string", param=name)
    text = value.strip()
    if required and not text:
        raise AppealError(400, "invalid_request", f"{name} must not be empty", param=name)
    if len(text) > limit:
        raise AppealError(400, "invalid_request", f"{name} must be at most {limit:,} characters "
                                                  f"(got {len(text):,})", param=name)
    return text


class AppealBook:
    """All appeals, in memory and in an append-only JSON Lines file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._appeals: dict[str, Appeal] = {}
        self.torn = 0
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        names = set(Appeal.__dataclass_fields__)
        for line in lines:
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
                appeal = Appeal(**{k: v for k, v in data.items() if k in names})
            except (orjson.JSONDecodeError, TypeError):
                self.torn += 1           # a torn last line: its caller was never answered
                continue
            self._appeals[appeal.id] = appeal

    def _append(self, appeal: Appeal) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, orjson.dumps(appeal.to_dict()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------
    def get(self, appeal_id: str) -> Appeal | None:
        return self._appeals.get(appeal_id)

    def of_account(self, account: str) -> list[Appeal]:
        return sorted((a for a in list(self._appeals.values()) if a.account == account),
                      key=lambda a: -a.created_at)

    def open_for(self, account: str) -> Appeal | None:
        return next((a for a in self.of_account(account) if a.status == "open"), None)

    def queue(self, status: str | None = None, account: str | None = None) -> list[Appeal]:
        """Open appeals first, oldest first (a queue); then decided ones, newest decision first."""
        rows = [a for a in list(self._appeals.values())
                if (status is None or a.status == status) and (account is None or a.account == account)]
        return sorted(rows, key=lambda a: (a.status != "open",
                                           a.created_at if a.status == "open" else -(a.decided_at or 0.0)))

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for a in list(self._appeals.values()):
            out[a.status] = out.get(a.status, 0) + 1
        return out

    # -- changing ---------------------------------------------------------------------------
    def file(self, account: str, key_id: str, message: Any, standing: dict[str, Any],
             now: float | None = None) -> Appeal:
        text = check_message(message)
        now = time.time() if now is None else now
        with self._lock:
            mine = self.of_account(account)
            current = next((a for a in mine if a.status == "open"), None)
            if current is not None:
                raise AppealError(409, "appeal_exists", f"this account already has an open appeal ({current.id}); "
                                                        f"wait for its decision (GET {APPEAL_PATH})", appeal=current)
            if not standing.get("appealable"):
                raise AppealError(409, "nothing_to_appeal", "this account is not blocked or throttled: there is "
                                                            "nothing to appeal")
            upheld = [a for a in mine if a.status == "upheld" and a.decided_at is not None]
            if upheld and now - upheld[0].decided_at < COOLDOWN_S:
                wait = COOLDOWN_S - (now - upheld[0].decided_at)
                raise AppealError(429, "appeal_cooldown", f"appeal {upheld[0].id} was upheld; a new appeal can be "
                                                          f"filed in {wait / 3600:.1f} h", retry_after=wait)
            appeal = Appeal(id="ap-" + secrets.token_hex(6), account=account, key_id=key_id, message=text,
                            created_at=now, standing={k: v for k, v in standing.items() if k != "appealable"})
            self._append(appeal)
            self._appeals[appeal.id] = appeal
        return appeal

    def decide(self, appeal_id: str, decision: Any, note: Any = None, analyst: Any = None,
               now: float | None = None) -> Appeal:
        if not isinstance(decision, str) or decision not in DECISIONS:
            raise AppealError(400, "invalid_request", "decision must be uphold or lift", param="decision")
        note_text = check_message(note, name="note", limit=MAX_NOTE_CHARS, required=False)
        who = check_message(analyst, name="analyst", limit=64, required=False) or None
        with self._lock:
            appeal = self._appeals.get(appeal_id)
            if appeal is None:
                raise AppealError(404, "not_found", f"no appeal {appeal_id!r}")
            if appeal.status != "open":
                raise AppealError(409, "appeal_decided", f"appeal {appeal_id} was already decided ({appeal.status})",
                                  appeal=appeal)
            decided = Appeal(**{**appeal.to_dict(), "status": DECISIONS[decision], "note": note_text,
                                "analyst": who, "decided_at": time.time() if now is None else now})
            self._append(decided)
            self._appeals[appeal_id] = decided
        return decided

    def merge(self, record: dict[str, Any]) -> Appeal | None:
        """Take another replica's version of an appeal (the fleet's shared state); kept when it
        is new here or further along (open -> decided). Returns it when it changed the book."""
        names = set(Appeal.__dataclass_fields__)
        appeal = Appeal(**{k: v for k, v in record.items() if k in names})
        with self._lock:
            held = self._appeals.get(appeal.id)
            if held is not None and (held == appeal or (held.status != "open" and appeal.status == "open")):
                return None
            self._append(appeal)
            self._appeals[appeal.id] = appeal
        return appeal
