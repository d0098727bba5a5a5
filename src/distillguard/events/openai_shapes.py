"""The other OpenAI request shapes, read as the one schema reads a chat request.

The Responses API (``/v1/responses``: ``instructions`` and ``input``, a string or a list of
items) and embeddings (``/v1/embeddings``: ``input``, a string or a list) carry prompts too: an
extractor that moves to them must be read the same way. :func:`as_chat` gives the chat-shaped
view the detectors read (``messages``, ``max_tokens``, ``logprobs``, ``tools``, the end user);
the stored request body stays as it was sent.
"""

from __future__ import annotations

from typing import Any

RESPONSES_ENDPOINT = "/v1/responses"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"

_ROLES = ("user", "assistant", "system", "developer", "tool")


def _item_message(item: Any) -> dict[str, Any] | None:
    """One Responses input item as a chat message (None: an item with no text for a model)."""
    if isinstance(item, str):
        return {"role": "user", "content": item}
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind in (None, "message") and item.get("role") in _ROLES:
        return {"role": item["role"], "content": item.get("content")}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "content": output if isinstance(output, (str, list)) else None}
    if kind == "function_call":
        return {"role": "assistant", "content": None, "tool_calls": [item]}
    if kind == "reasoning":
        return {"role": "assistant", "content": None}
    return None


def as_chat(request: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped view of a Responses or embeddings request; any other request as it is."""
    if "messages" in request or "prompt" in request or "input" not in request:
        return request
    raw = request.get("input")
    if "instructions" not in request and not _looks_like_responses(request) and (
            isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(x, (str, int, list)) for x in raw))):
        # embeddings: a text, a list of texts (or token ids): one prompt
        texts = [raw] if isinstance(raw, str) else [x for x in raw if isinstance(x, str)]
        return {"prompt": "\n".join(texts), "model": request.get("model"), "user": request.get("user")}
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(request.get("previous_response_id"), str):
        # a continuation: the earlier turns live upstream; count them as one earlier exchange
        messages += [{"role": "user", "content": None}, {"role": "assistant", "content": None}]
    items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    messages += [m for m in map(_item_message, items) if m is not None]
    view: dict[str, Any] = {"messages": messages}
    for name in ("model", "tools", "temperature", "top_p", "user", "safety_identifier", "metadata", "stream",
                 "top_logprobs"):
        if name in request:
            view[name] = request[name]
    if "max_output_tokens" in request:
        view["max_tokens"] = request["max_output_tokens"]
    include = request.get("include")
    if isinstance(include, list) and any(isinstance(x, str) and "logprobs" in x for x in include):
        view["logprobs"] = True
    return view


def _looks_like_responses(request: dict[str, Any]) -> bool:
    return any(k in request for k in ("previous_response_id", "max_output_tokens", "reasoning", "tools", "include",
                                      "store", "text", "tool_choice"))


def responses_output_text(response: dict[str, Any]) -> str | None:
    """The assistant text of a Responses API object (None: not one)."""
    if response.get("object") != "response":
        return None
    texts = []
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "".join(texts)
