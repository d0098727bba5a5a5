"""The rest of the OpenAI API surface for the fixed upstream: Responses, embeddings, one model,
files and batches. Enough of each for the gateway's tests and demos to drive them with the
official SDK; answers are fixed text (or a deterministic embedding), so a test measures the
gateway, never the upstream.

Batches complete at once: creating one reads its input file, answers every line as the chat or
completions endpoint would, and stores the output file.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import numpy as np
import orjson

from distillguard.events.multipart import parse_multipart

EMBEDDING_DIM = 64


def not_found(what: str) -> tuple[int, bytes]:
    return 404, orjson.dumps({"error": {"message": f"{what} not found", "type": "invalid_request_error",
                                        "code": "not_found", "param": None}})


def bad_request(message: str) -> tuple[int, bytes]:
    return 400, orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_request",
                                        "param": None}})


def response_object(rid: str, model: str, text: str, request: dict[str, Any], *, status: str = "completed",
                    input_tokens: int = 0) -> dict[str, Any]:
    """A Responses API object with one assistant message (and a reasoning item when asked)."""
    output: list[dict[str, Any]] = []
    if isinstance(request.get("reasoning"), dict):
        output.append({"type": "reasoning", "id": f"rs_{rid[5:]}", "status": "completed",
                       "summary": [{"type": "summary_text", "text": "Worked through the steps."}]})
    output.append({"type": "message", "id": f"msg_{rid[5:]}", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]})
    words = len(text.split()) if status == "completed" else 0
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
            "output": output if status == "completed" else [], "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "metadata": request.get("metadata") or {},
            "parallel_tool_calls": True, "temperature": request.get("temperature"), "tool_choice": "auto",
            "tools": request.get("tools") or [], "top_p": request.get("top_p"),
            "previous_response_id": request.get("previous_response_id"),
            "max_output_tokens": request.get("max_output_tokens"),
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": words, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": input_tokens + words}}


def response_stream(rid: str, model: str, text: str, request: dict[str, Any], chunks: int,
                    input_tokens: int) -> list[bytes]:
    """The Responses API's typed SSE events for one answer, in order."""
    events: list[tuple[str, dict[str, Any]]] = []
    pending = response_object(rid, model, text, request, status="in_progress", input_tokens=input_tokens)
    events.append(("response.created", {"response": pending}))
    item = {"type": "message", "id": f"msg_{rid[5:]}", "status": "in_progress", "role": "assistant", "content": []}
    events.append(("response.output_item.added", {"output_index": 0, "item": item}))
    part = {"type": "output_text", "text": "", "annotations": []}
    events.append(("response.content_part.added", {"item_id": item["id"], "output_index": 0, "content_index": 0,
                                                   "part": part}))
    step = max(1, len(text) // max(1, chunks))
    for i in range(0, len(text), step):
        events.append(("response.output_text.delta", {"item_id": item["id"], "output_index": 0, "content_index": 0,
                                                      "delta": text[i:i + step]}))
    events.append(("response.output_text.done", {"item_id": item["id"], "output_index": 0, "content_index": 0,
                                                  "text": text}))
    done = response_object(rid, model, text, request, input_tokens=input_tokens)
    events.append(("response.output_item.done", {"output_index": 0, "item": done["output"][-1]}))
    events.append(("response.completed", {"response": done}))
    return [f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, "sequence_number": n, **data})
            + b"\n\n" for n, (kind, data) in enumerate(events)]


def embedding(text: str, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """A deterministic unit vector per text (hash-seeded), so equal inputs embed alike."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def embeddings_answer(request: dict[str, Any], model: str) -> tuple[int, bytes]:
    raw = request.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(x, (int, list)) for x in raw):
        texts = [orjson.dumps(x).decode() for x in raw]          # token ids: embedded by their JSON text
    else:
        return bad_request("'input' must be a string, a list of strings or token ids")
    dim = request.get("dimensions") if isinstance(request.get("dimensions"), int) else EMBEDDING_DIM
    dim = max(1, min(dim, 4096))
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        v = embedding(text, dim)
        data.append({"object": "embedding", "index": i,
                     "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()})
    tokens = sum(len(t.split()) for t in texts)
    return 200, orjson.dumps({"object": "list", "data": data, "model": request.get("model") or model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class FilesAndBatches:
    """In-memory files and batches (answered at once) for the fixed upstream."""

    def __init__(self, answer) -> None:
        self.answer = answer            # (endpoint, body dict) -> response body dict
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{hashlib.sha256(f'{prefix}{self._n}{time.time()}'.encode()).hexdigest()[:20]}"

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = self._id("file")
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": filename,
                "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}
        self.files[fid] = (meta, data)
        return meta

    def upload(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        try:
            fields, data, name = parse_multipart(body, content_type)
        except ValueError as exc:
            return bad_request(str(exc))
        if data is None:
            return bad_request("no file in the upload")
        return 200, orjson.dumps(self.add_file(data, name, fields.get("purpose", "batch")))

    def create_batch(self, request: dict[str, Any]) -> tuple[int, bytes]:
        fid = request.get("input_file_id")
        if fid not in self.files:
            return not_found(f"file {fid!r}")
        endpoint = request.get("endpoint") or "/v1/chat/completions"
        lines = [ln for ln in self.files[fid][1].splitlines() if ln.strip()]
        out, failed = [], 0
        bid = self._id("batch").replace("-", "_")
        for n, line in enumerate(lines):
            try:
                item = orjson.loads(line)
                body = self.answer(item.get("url") or endpoint, item["body"])
                out.append({"id": f"batch_req_{n}", "custom_id": item.get("custom_id"), "error": None,
                            "response": {"status_code": 200, "request_id": f"req_{bid}_{n}", "body": body}})
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                failed += 1
        output = self.add_file(b"".join(orjson.dumps(o) + b"\n" for o in out), "batch_output.jsonl",
                               "batch_output")
        now = int(time.time())
        batch = {"id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": fid,
                 "completion_window": request.get("completion_window") or "24h", "status": "completed",
                 "output_file_id": output["id"], "error_file_id": None, "created_at": now, "in_progress_at": now,
                 "expires_at": now + 86400, "finalizing_at": now, "completed_at": now, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": len(lines), "completed": len(out), "failed": failed},
                 "metadata": request.get("metadata")}
        self.batches[bid] = batch
        return 200, orjson.dumps(batch)

    def get(self, path: str) -> tuple[int, bytes] | None:
        """GET /v1/batches/{id}, /v1/files/{id}, /v1/files/{id}/content (None: not ours)."""
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1] in ("batches", "files"):
            items = self.batches.values() if parts[1] == "batches" else (meta for meta, _ in self.files.values())
            return 200, orjson.dumps({"object": "list", "data": list(items), "has_more": False})
        if len(parts) == 3 and parts[1] == "batches":
            batch = self.batches.get(parts[2])
            return (200, orjson.dumps(batch)) if batch else not_found(f"batch {parts[2]!r}")
        if len(parts) in (3, 4) and parts[1] == "files":
            entry = self.files.get(parts[2])
            if entry is None:
                return not_found(f"file {parts[2]!r}")
            if len(parts) == 4 and parts[3] == "content":
                return 200, entry[1]
            if len(parts) == 3:
                return 200, orjson.dumps(entry[0])
        return None
