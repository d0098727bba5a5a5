"""Login for the dashboard: one analyst password, server-side sessions in signed cookies, and a
limit on failed logins per client address.

The password is never kept in memory in clear: only a salted scrypt hash, compared in constant
time. Session cookies carry a random session id and an HMAC of it under a secret drawn at start
(restarting the server logs everyone out, on purpose).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.errors import BadInputError, UsageError

PASSWORD_ENV = "DISTILLGUARD_WEB_PASSWORD"
COOKIE = "dg_session"
SESSION_TTL_S = 8 * 3600.0
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


def read_secret(path: Path | None, env: str, what: str, missing: str) -> str:
    """A secret from the first line of a file, or else from the environment variable ``env``;
    ``what`` names it in errors, ``missing`` is the error when neither gives one."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInputError(f"no such {what} file", source=str(path)) from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read the {what} file ({type(exc).__name__})", source=str(path)) from None
        secret = text.splitlines()[0].strip() if text.strip() else ""
        if not secret:
            raise BadInputError(f"the {what} file is empty", source=str(path))
        return secret
    secret = os.environ.get(env, "")
    if not secret:
        raise UsageError(missing)
    return secret


def read_password(password_file: Path | None) -> str:
    """The analyst password from ``--password-file`` (first line) or the environment."""
    password = read_secret(password_file, PASSWORD_ENV, "password",
                           f"the dashboard needs a password: --password-file FILE or {PASSWORD_ENV}")
    if len(password) < 8:
        raise UsageError("the dashboard password must be at least 8 characters")
    return password


class PasswordCheck:
    """A salted scrypt hash of the one password; ``verify`` compares in constant time."""

    def __init__(self, password: str) -> None:
        self._salt = secrets.token_bytes(16)
        self._hash = self._derive(password)

    def _derive(self, password: str) -> bytes:
        return hashlib.scrypt(password.encode("utf-8"), salt=self._salt, **_SCRYPT)

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(self._derive(password), self._hash)


@dataclass
class Session:
    sid: str
    user: str
    csrf: str
    expires: float


@dataclass
class SessionStore:
    """Server-side sessions; the cookie is ``sid.hmac(secret, sid)``."""

    ttl_s: float = SESSION_TTL_S
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _sign(self, sid: str) -> str:
        return hmac.new(self.secret, sid.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def create(self, user: str) -> tuple[Session, str]:
        sid = secrets.token_urlsafe(24)
        session = Session(sid=sid, user=user, csrf=secrets.token_urlsafe(24), expires=time.time() + self.ttl_s)
        with self._lock:
            now = time.time()
            for stale in [k for k, v in self._sessions.items() if v.expires < now]:
                del self._sessions[stale]
            self._sessions[sid] = session
        return session, f"{sid}.{self._sign(sid)}"

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        sid, _, mac = cookie.rpartition(".")
        # bytes: a cookie may carry any text, and compare_digest raises on non-ASCII str
        if not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), self._sign(sid).encode()):
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                session = None
        return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)


@dataclass
class LoginLimiter:
    """At most ``max_failures`` failed logins per client within ``window_s``; then refuse until the
    oldest failure leaves the window (a correct password is refused too while locked)."""

    max_failures: int = 5
    window_s: float = 300.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, client: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        self._failures[client] = kept
        return kept

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when allowed now."""
        now = time.monotonic()
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) < self.max_failures:
                return 0.0
            return max(1.0, self.window_s - (now - recent[0]))

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
