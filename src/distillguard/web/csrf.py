"""Cross-site request forgery: every POST carries the session's token in a form field.

Signed-in forms use the session's token. The login form, which has no session yet, uses a
double-submit token: a random value in a SameSite=Strict cookie that the form must repeat.
"""

from __future__ import annotations

import hmac
import secrets

FIELD = "csrf"
LOGIN_COOKIE = "dg_login_csrf"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def valid(expected: str | None, given: object) -> bool:
    """Constant-time comparison; a missing or non-text value never matches. Compared as UTF-8
    bytes: ``compare_digest`` raises on non-ASCII text, and a form field is whatever was sent."""
    return (bool(expected) and isinstance(given, str) and bool(given)
            and hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")))
