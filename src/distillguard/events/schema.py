"""The event record: one API exchange, the one schema that flows through everything.

See shared/docs/DESIGN.md ("The event record"). Validation is hand-written rather than done
through a schema library because it sits on the hot path of a million-event ingest and must
name the exact field that is wrong (``request.messages[3].content``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from distillguard.errors import FieldError
from distillguard.events.openai_shapes import EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT, as_chat, responses_output_text

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"

# Fields of the record with their own slot; anything else is kept verbatim in ``extra``.
KNOWN_FIELDS = frozenset({
    "ts", "account", "request", "response", "id", "key", "endpoint", "model", "ip",
    "user_agent", "identity", "usage", "status",
})
_OPTIONAL_STRINGS = ("key", "model", "ip", "user_agent")
# Epoch seconds accepted: 1990-01-01 .. 2200-01-01. Anything outside is almost surely
# milliseconds or garbage, and silently accepting it would put events decades off.
_MIN_EPOCH, _MAX_EPOCH = 631152000.0, 7258118400.0
_MAX_INT64 = 2**63 - 1
# How deep a request or response body may nest (the body itself is level 1). orjson parses 1,024
# levels but serialises only 254, so a deeper body could be parsed and answered yet never logged
# or stored; 64 is far above any real OpenAI body (tool schemas run to about 10) and leaves the
# event record (the body one level down) well inside what every writer and reader handles.
MAX_JSON_DEPTH = 64


@dataclass(slots=True)
class Event:
    """One API exchange. ``ts`` is UTC epoch seconds; ``extra`` holds unknown fields."""

    ts: float
    account: str
    request: dict[str, Any]
    response: dict[str, Any] | str | None = None
    id: str = ""
    key: str | None = None
    endpoint: str = CHAT_ENDPOINT
    model: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    identity: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record: RFC 3339 ``ts``, optional fields only when set, extras kept."""
        out: dict[str, Any] = {"id": self.id, "ts": format_ts(self.ts), "account": self.account,
                               "endpoint": self.endpoint, "request": self.request}
        for name in ("response", "key", "model", "ip", "user_agent", "identity", "usage", "status"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name, value in self.extra.items():
            out.setdefault(name, value)
        return out


@dataclass(frozen=True, slots=True)
class PromptView:
    """What the detectors read from a request body, for chat and completions alike."""

    prompt_text: str          # the newest user turn (chat; with none, the newest system/developer/tool text)
    system_prompt: str | None
    n_turns: int              # user turns in the request, this one included
    n_messages: int
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int | None
    has_tools: bool
    temperature: float | None = None
    end_user: str | None = None  # the API caller's own end user (``safety_identifier``/``user``), if it says


# Where callers name their own end user: OpenAI's ``safety_identifier`` (and the older ``user``),
# Anthropic-style ``metadata.user_id``. Resellers and platforms pass one per customer.
END_USER_FIELDS = ("safety_identifier", "user")
END_USER_MAX_CHARS = 256


def end_user_of(request: dict[str, Any]) -> str | None:
    """The end-user id a request carries, or None (non-string and empty values are ignored)."""
    for name in END_USER_FIELDS:
        value = request.get(name)
        if isinstance(value, str) and value.strip():
            return value[:END_USER_MAX_CHARS]
    metadata = request.get("metadata")
    if isinstance(metadata, dict):
        value = metadata.get("user_id")
        if isinstance(value, str) and value.strip():
            return value[:END_USER_MAX_CHARS]
    return None


def format_ts(ts: float) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z`` suffix."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_ts(value: Any) -> float:
    """Accept RFC 3339 strings (``Z`` or offset; naive means UTC) or epoch seconds."""
    if isinstance(value, bool):
        raise FieldError("ts", "expected an RFC 3339 string or epoch seconds, got a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
        if not (_MIN_EPOCH <= ts <= _MAX_EPOCH):
            raise FieldError("ts", f"epoch seconds {value!r} out of range (milliseconds?)")
        return ts
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise FieldError("ts", f"not an RFC 3339 timestamp: {value[:40]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ts = dt.timestamp()
        if not (_MIN_EPOCH <= ts <= _MAX_EPOCH):
            raise FieldError("ts", f"timestamp {value[:40]!r} outside 1990..2200")
        return ts
    raise FieldError("ts", f"expected an RFC 3339 string or epoch seconds, got {_type(value)}")


def _type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def derive_id(ts: float, account: str, request: Any, response: Any) -> str:
    """A stable content id, so the same exchange ingested twice is stored once."""
    blob = orjson.dumps([round(ts, 6), account, request, response], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def nesting_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` (decoded JSON) nests deeper than ``limit`` levels; a scalar is level 0."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def shallow_text(raw: bytes) -> bool:
    """True when JSON text ``raw`` cannot nest deeper than the limit (it has fewer brackets): the
    parsed value then needs no walk (most event lines, at a fraction of the walk's cost)."""
    return raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH


def _check_depth(value: Any, name: str) -> None:
    if nesting_exceeds(value):
        raise FieldError(name, f"nested deeper than {MAX_JSON_DEPTH} levels")


def event_from_obj(obj: Any, *, shallow: bool = False) -> Event:
    """Validate one decoded JSON record and build an :class:`Event`.

    Raises :class:`FieldError` naming the first offending field. ``shallow``: the caller knows the
    record cannot nest past :data:`MAX_JSON_DEPTH` (:func:`shallow_text` of its line).
    """
    if not isinstance(obj, dict):
        raise FieldError("<record>", f"expected a JSON object, got {_type(obj)}")
    if "ts" not in obj:
        raise FieldError("ts", "missing required field")
    ts = parse_ts(obj["ts"])
    account = obj.get("account")
    if account is None:
        raise FieldError("account", "missing required field")
    if not isinstance(account, str) or not account:
        raise FieldError("account", f"expected a non-empty string, got {_type(account)}")
    request = obj.get("request")
    if request is None:
        raise FieldError("request", "missing required field")
    if not isinstance(request, dict):
        raise FieldError("request", f"expected an object, got {_type(request)}")
    endpoint = obj.get("endpoint")
    if endpoint is None:
        endpoint = COMPLETIONS_ENDPOINT if ("prompt" in request and "messages" not in request) else CHAT_ENDPOINT
    elif not isinstance(endpoint, str):
        raise FieldError("endpoint", f"expected a string, got {_type(endpoint)}")
    _check_request(request, endpoint, shallow=shallow)
    response = obj.get("response")
    if response is not None and not isinstance(response, (dict, str)):
        raise FieldError("response", f"expected an object or a string, got {_type(response)}")
    if not shallow:
        _check_depth(response, "response")
    for name in _OPTIONAL_STRINGS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise FieldError(name, f"expected a string, got {_type(value)}")
    for name in ("identity", "usage"):
        value = obj.get(name)
        if value is not None and not isinstance(value, dict):
            raise FieldError(name, f"expected an object, got {_type(value)}")
    usage = obj.get("usage")
    if usage:
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value <= _MAX_INT64):
                raise FieldError(f"usage.{name}", f"expected a non-negative integer, got {str(value)[:40]}")
    status = obj.get("status")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
        raise FieldError("status", f"expected an integer, got {_type(status)}")
    if status is not None and not 0 <= status <= 999:
        raise FieldError("status", f"expected an HTTP status code, got {str(status)[:40]}")
    event_id = obj.get("id")
    if event_id is None or event_id == "":
        event_id = derive_id(ts, account, request, response)
    elif not isinstance(event_id, str):
        raise FieldError("id", f"expected a string, got {_type(event_id)}")
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS} if len(obj) > 3 else {}
    if not shallow:
        for name, value in (("identity", obj.get("identity")), ("usage", usage), *extra.items()):
            _check_depth(value, name)
    return Event(ts=ts, account=account, request=request, response=response, id=event_id,
                 key=obj.get("key"), endpoint=endpoint, model=obj.get("model"), ip=obj.get("ip"),
                 user_agent=obj.get("user_agent"), identity=obj.get("identity"), usage=usage,
                 status=status, extra=extra)


def _check_request(request: dict[str, Any], endpoint: str, *, shallow: bool = False) -> None:
    if not shallow:
        _check_depth(request, "request")
    messages = request.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise FieldError("request.messages", f"expected an array, got {_type(messages)}")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise FieldError(f"request.messages[{i}]", f"expected an object, got {_type(message)}")
            role = message.get("role")
            if not isinstance(role, str):
                raise FieldError(f"request.messages[{i}].role", f"expected a string, got {_type(role)}")
            content = message.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise FieldError(f"request.messages[{i}].content",
                                 f"expected a string or an array of parts, got {_type(content)}")
    elif endpoint == CHAT_ENDPOINT:
        raise FieldError("request.messages", "a chat request needs 'messages'")
    elif endpoint in (RESPONSES_ENDPOINT, EMBEDDINGS_ENDPOINT):
        raw = request.get("input")
        if not isinstance(raw, (str, list)):
            raise FieldError("request.input", f"expected a string or an array, got {_type(raw)}")
    prompt = request.get("prompt")
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise FieldError("request.prompt", f"expected a string or an array, got {_type(prompt)}")
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise FieldError(f"request.{name}", f"expected an integer, got {_type(value)}")
        if value is not None and not 0 <= value <= _MAX_INT64:
            raise FieldError(f"request.{name}", f"out of range: {str(value)[:40]}")


def content_text(content: Any) -> str:
    """Text of a chat message ``content``: a string, or an array of parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def prompt_view(request: dict[str, Any]) -> PromptView:
    """Read prompt text, system prompt, turn count and sampling options from a request body
    (Responses and embeddings bodies through their chat-shaped view)."""
    request = as_chat(request)
    messages = request.get("messages")
    system_prompt = None
    prompt_text = ""
    n_turns = 0
    n_messages = 0
    if isinstance(messages, list):
        # (a checked body has only objects here; an unchecked one read for a view must not raise)
        messages = [m for m in messages if isinstance(m, dict)]
        n_messages = len(messages)
        for message in messages:
            role = message.get("role")
            if role == "user":
                n_turns += 1
            elif role in ("system", "developer") and system_prompt is None:
                system_prompt = content_text(message.get("content"))
        for message in reversed(messages):
            # A blank user turn (" ", "\n") carries no prompt: the request's text is elsewhere.
            if message.get("role") == "user" and content_text(message.get("content")).strip():
                prompt_text = content_text(message.get("content"))
                break
        else:
            # No user turn: the request's instructions are in the other roles (a synthetic-data
            # tool may send its whole prompt as one system message). The newest system,
            # developer or tool message with text is the prompt, not an empty one.
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") in ("system", "developer", "tool"):
                    text = content_text(message.get("content"))
                    if text.strip():
                        prompt_text = text
                        break
    else:
        prompt = request.get("prompt")
        if isinstance(prompt, str):
            prompt_text = prompt
        elif isinstance(prompt, list):
            prompt_text = "\n".join(p for p in prompt if isinstance(p, str))
        n_turns = 1 if prompt is not None else 0
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        max_tokens = request.get("max_completion_tokens")
    logprobs_value = request.get("logprobs")
    top_logprobs = request.get("top_logprobs")
    if isinstance(logprobs_value, int) and not isinstance(logprobs_value, bool):
        # Completions API: `logprobs: 5` asks for the top 5.
        top_logprobs = top_logprobs or logprobs_value
    # Only JSON true or a positive count asks for logprobs ("false" as a string does not).
    logprobs = (logprobs_value is True or (isinstance(logprobs_value, int) and logprobs_value > 0)
                or (isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool) and top_logprobs > 0))
    return PromptView(
        prompt_text=prompt_text,
        system_prompt=system_prompt,
        n_turns=n_turns,
        n_messages=n_messages,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        logprobs=logprobs,
        top_logprobs=top_logprobs if isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool) else None,
        has_tools=bool(request.get("tools") or request.get("functions")),
        temperature=_number(request.get("temperature")),
        end_user=end_user_of(request),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def response_text(response: Any) -> str:
    """Output text from an OpenAI chat/completions response body, or the string itself."""
    if isinstance(response, str):
        return response
    if not isinstance(response, dict):
        return ""
    output = responses_output_text(response)
    if output is not None:
        return output
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        choice = choices[0]
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict):
                return content_text(message.get("content"))
            text = choice.get("text")
            if isinstance(text, str):
                return text
    text = response.get("text")
    return text if isinstance(text, str) else ""
