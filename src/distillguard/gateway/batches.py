"""The Batch API through the gateway: ``/v1/files`` and ``/v1/batches``.

Bulk extraction at half price is the cheapest way to harvest a model, so a batch is judged like
live traffic:

* **Upload** (``POST /v1/files``, purpose ``batch``): every request line is read and checked
  like a live request body (one bad line refuses the file, naming the line) and folded into the
  account's live state; then the policy decides once for the batch on what the account looks
  like *with* it. A block or a throttle refuses the upload with its reason (and the appeal route
  when it is a judgement about the account); a modification (token cap, no logprobs, no
  reasoning) is applied to every line before the file goes upstream. The forwarded file is kept,
  owner-only and fsynced, beside the log: it is the record of what was submitted.
* **Create / retrieve / cancel / list** (``/v1/batches``): only the account's own batches and
  files are visible (the gateway fronts one upstream key for every account, so the upstream
  cannot tell them apart); creating a batch re-checks that no operator blocked the account
  since the upload.
* **Output** (``GET /v1/files/{id}/content`` of a batch's output file): each answer line is
  logged as one event, joined to its request line by ``custom_id`` (event ids derived from the
  output file and ``custom_id``, so fetching twice stores nothing twice), and its output tokens
  are charged to the account like a live answer.

Ownership is kept in a JSON Lines book (``batches/book.jsonl`` under the log root, shared by the
workers of ``--workers N``; on several machines the log root must be shared storage, as for the
fleet's loader). Appends are single ``O_APPEND`` writes; a replica that does not know an id re-reads
what the others appended before answering 404.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from distillguard.errors import FieldError
from distillguard.events.multipart import build_multipart, parse_multipart
from distillguard.events.openai_shapes import EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT
from distillguard.events.schema import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, _check_request, prompt_view
from distillguard.gateway.auth import authenticate, client_ip, read_body
from distillguard.gateway.decide import decide, decision_headers, forward_body, refuse, refuses
from distillguard.gateway.forward import kept_headers
from distillguard.gateway.online import read_request
from distillguard.gateway.openai_errors import JSON, openai_error
from distillguard.gateway.proxy import no_key
from distillguard.gateway.record import charge_answer, count, log_unavailable, new_event, record
from distillguard.gateway.upstream import UpstreamError
from distillguard.gateway.wal import LogWriteError
from distillguard.private import open_private, private_dir, write_private

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway

BATCH_ENDPOINTS = (CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, RESPONSES_ENDPOINT, EMBEDDINGS_ENDPOINT)


class BatchBook:
    """Who owns which upstream file and batch, durable as JSON Lines (owner-only)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._path = directory / "book.jsonl"
        self._offset = 0
        self.refresh()

    def refresh(self) -> None:
        """Apply what was appended since the last read (by this process or another replica)."""
        try:
            with open(self._path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1           # a line still being written is read next time
        self._offset += end
        for line in data[:end].splitlines():
            try:
                self._apply(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue                        # a torn line after a crash: the rest still holds

    def _apply(self, rec: dict[str, Any]) -> None:
        table = self.files if rec["kind"] == "file" else self.batches
        table[rec["id"]] = {**table.get(rec["id"], {}), **rec}

    def add(self, **rec: Any) -> None:
        private_dir(self.dir)
        with os.fdopen(open_private(self._path), "ab") as fh:   # a buffered write: no short write
            fh.write(orjson.dumps(rec) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._apply(rec)

    def spool(self, file_id: str, data: bytes) -> Path:
        path = private_dir(self.dir) / f"{hashlib.sha256(file_id.encode()).hexdigest()[:32]}.jsonl"
        write_private(path, data, sync=True)
        return path

    def owner(self, kind: str, oid: str) -> str | None:
        table = self.files if kind == "file" else self.batches
        if oid not in table:
            self.refresh()
        return table.get(oid, {}).get("account")


def book(gw: Gateway) -> BatchBook:
    existing = getattr(gw, "batch_book", None)
    if existing is None:
        root = gw.config.log.shared_dir or gw.config.log.dir
        existing = gw.batch_book = BatchBook(Path(root) / "batches")
    return existing


def _not_found(what: str, request_id: str) -> Response:
    return openai_error(404, f"No such {what}.", "not_found", headers={"x-request-id": request_id,
                                                                       "x-distillguard-action": "allow"})


def read_batch_lines(data: bytes) -> list[dict[str, Any]]:
    """The request lines of a batch input file, each checked like a live body (FieldError names the line)."""
    lines = []
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FieldError(f"line {n}", f"not valid JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            raise FieldError(f"line {n}.body", "each line needs a 'body' object")
        url = item.get("url")
        if url not in BATCH_ENDPOINTS:
            raise FieldError(f"line {n}.url", f"expected one of {', '.join(BATCH_ENDPOINTS)}, got {str(url)[:60]!r}")
        if not isinstance(item.get("custom_id"), str) or not item["custom_id"]:
            raise FieldError(f"line {n}.custom_id", "each line needs a 'custom_id' string")
        try:
            _check_request(item["body"], url)
        except FieldError as exc:
            raise FieldError(f"line {n}.{exc.field}", exc.message) from None
        lines.append(item)
    if not lines:
        raise FieldError("file", "a batch input file needs at least one request line")
    return lines


async def upload_file(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    t0, ts = time.perf_counter(), time.time()
    endpoint = "/v1/files"
    info = authenticate(gw, request)
    if info is None:
        return no_key(gw, endpoint)
    if gw.log.failing():                # fail closed: nothing is judged or sent that cannot be logged
        return log_unavailable(gw, endpoint)
    raw = await read_body(gw, request)
    request_id = uuid.uuid4().hex
    if raw is None:
        count(gw, endpoint, 400, None)
        return openai_error(400, f"upload larger than {gw.config.max_body_bytes:,} bytes", "request_too_large",
                            headers={"x-request-id": request_id})
    content_type = request.headers.get("content-type", "")
    try:
        fields, data, filename = parse_multipart(raw, content_type)
    except ValueError as exc:
        count(gw, endpoint, 400, None)
        return openai_error(400, f"not a multipart/form-data upload: {exc}", "invalid_request",
                            headers={"x-request-id": request_id})
    if data is None:
        count(gw, endpoint, 400, None)
        return openai_error(400, "no file in the upload (a 'file' part is required)", "invalid_request",
                            param="file", headers={"x-request-id": request_id})
    purpose = fields.get("purpose", "")
    decision = None
    headers = {"x-request-id": request_id, "x-distillguard-action": "allow"}
    if purpose == "batch":
        try:
            lines = read_batch_lines(data)
        except FieldError as exc:
            count(gw, endpoint, 400, None)
            return openai_error(400, f"batch input file {filename!r}: {exc.field}: {exc.message}", "invalid_batch_file",
                                param=exc.field, headers=headers)
        ip, user_agent = client_ip(gw, request), request.headers.get("user-agent")
        event = new_event(ts, info, endpoint, {"purpose": "batch", "filename": filename, "lines": len(lines)}, ip,
                          user_agent)
        event["id"] = request_id
        for item in lines[:-1]:                  # every line folds into the account's live state ...
            view = prompt_view(item["body"])
            gw.scorer.observe(info.account, read_request(view, gw.scorer.max_tokens_cap), ts, ip=ip,
                              user_agent=user_agent, identity=info.identity, prompt=view.prompt_text)
        # ... and the last one with the decision on the account as it looks with the whole batch
        decision, _ = await decide(gw, info, prompt_view(lines[-1]["body"]), ts, None, ip, user_agent, event)
        headers = decision_headers(decision, request_id)
        if refuses(decision):
            decision.explanation = (f"batch of {len(lines):,} requests refused: " + (decision.explanation or "")).strip()
            return await refuse(gw, info, event, decision, headers, t0, ts)
        shaped = [{**item, "body": forward_body(item["body"], decision, item["url"])} for item in lines]
        data = b"".join(orjson.dumps(item) + b"\n" for item in shaped)
    body, upstream_type = build_multipart(fields, data, filename)
    try:
        resp = await gw.upstream_client.send("POST", endpoint, body, _up_headers(gw, info, upstream_type))
        content = await resp.read()
    except UpstreamError as exc:
        return _unreachable(exc, headers)
    count(gw, endpoint, resp.status_code, decision)
    answer = _json(content)
    if resp.status_code == 200 and isinstance(answer, dict) and isinstance(answer.get("id"), str):
        rec: dict[str, Any] = {"kind": "file", "id": answer["id"], "account": info.account, "purpose": purpose}
        if purpose == "batch":
            rec["spool"] = str(book(gw).spool(answer["id"], data))
        book(gw).add(**rec)
    return Response(content, status_code=resp.status_code, media_type=JSON, headers=headers | kept_headers(resp))


async def create_batch(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    endpoint = "/v1/batches"
    info = authenticate(gw, request)
    if info is None:
        return no_key(gw, endpoint)
    request_id = uuid.uuid4().hex
    raw = await read_body(gw, request)
    body = _json(raw or b"")
    if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
        count(gw, endpoint, 400, None)
        return openai_error(400, "a batch needs 'input_file_id' (the id of an uploaded batch file)", "invalid_request",
                            param="input_file_id", headers={"x-request-id": request_id})
    if book(gw).owner("file", body["input_file_id"]) != info.account:
        return _not_found("file", request_id)
    headers = {"x-request-id": request_id, "x-distillguard-action": "allow"}
    manual = gw.policy.manual.get(info.account)
    if manual is not None and manual.action == "block":       # blocked by an operator since the upload
        count(gw, endpoint, 403, None)
        return openai_error(403, f"account {info.account!r} is blocked by an operator: {manual.reason}",
                            "manual_block", kind="permission_denied", headers=headers | {"x-distillguard-action": "block"})
    decision = None
    try:
        resp = await gw.upstream_client.send("POST", endpoint, orjson.dumps(body), _up_headers(gw, info, JSON))
        content = await resp.read()
    except UpstreamError as exc:
        return _unreachable(exc, headers)
    count(gw, endpoint, resp.status_code, decision)
    _note_batch(gw, info.account, _json(content))
    return Response(content, status_code=resp.status_code, media_type=JSON, headers=headers | kept_headers(resp))


async def get_owned(request: Request) -> Response:
    """GET /v1/batches/{id}, /v1/files/{id} and /v1/files/{id}/content; POST /v1/batches/{id}/cancel;
    DELETE /v1/files/{id}: the account's own objects only."""
    gw: Gateway = request.app.state.gateway
    path = request.url.path
    info = authenticate(gw, request)
    if info is None:
        return no_key(gw, path)
    request_id = uuid.uuid4().hex
    parts = path.strip("/").split("/")
    kind = "batch" if parts[1] == "batches" else "file"
    oid = request.path_params.get("oid", "")
    if book(gw).owner(kind, oid) != info.account:
        return _not_found(kind, request_id)
    try:
        resp = await gw.upstream_client.send(request.method, path, b"", _up_headers(gw, info, None))
        content = await resp.read()
    except UpstreamError as exc:
        return _unreachable(exc, {"x-request-id": request_id})
    count(gw, path.rsplit("/", 1)[0] if kind == "batch" else "/v1/files", resp.status_code, None)
    if resp.status_code == 200 and kind == "batch":
        _note_batch(gw, info.account, _json(content))
    if resp.status_code == 200 and kind == "file" and parts[-1] == "content":
        try:
            await _log_output(gw, info, oid, content, request)
        except LogWriteError:       # the answers could not be logged: they are not handed out
            return log_unavailable(gw, "/v1/files")
    headers = {"x-request-id": request_id, "x-distillguard-action": "allow"} | kept_headers(resp)
    return Response(content, status_code=resp.status_code,
                    media_type=resp.headers.get("content-type", JSON), headers=headers)


async def list_owned(request: Request) -> Response:
    """GET /v1/batches and /v1/files: the upstream's list, keeping only the account's own."""
    gw: Gateway = request.app.state.gateway
    path = request.url.path
    info = authenticate(gw, request)
    if info is None:
        return no_key(gw, path)
    kind = "batch" if path.endswith("batches") else "file"
    query = f"?{request.url.query}" if request.url.query else ""
    try:
        resp = await gw.upstream_client.send("GET", path + query, b"", _up_headers(gw, info, None))
        content = await resp.read()
    except UpstreamError as exc:
        return _unreachable(exc, None)
    answer = _json(content)
    if resp.status_code == 200 and isinstance(answer, dict) and isinstance(answer.get("data"), list):
        answer["data"] = [x for x in answer["data"] if isinstance(x, dict)
                          and book(gw).owner(kind, str(x.get("id"))) == info.account]
        content = orjson.dumps(answer)
    count(gw, path, resp.status_code, None)
    return Response(content, status_code=resp.status_code, media_type=JSON,
                    headers={"x-request-id": uuid.uuid4().hex, "x-distillguard-action": "allow"} | kept_headers(resp))


def _note_batch(gw: Gateway, account: str, batch: Any) -> None:
    """Remember a batch and the files it names (its output and error files are the account's)."""
    if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
        return
    b = book(gw)
    known = b.batches.get(batch["id"], {})
    rec = {"input_file": batch.get("input_file_id"), "output_file": batch.get("output_file_id"),
           "error_file": batch.get("error_file_id")}
    if known.get("account") != account or any(known.get(k) != v for k, v in rec.items() if v):
        b.add(kind="batch", id=batch["id"], account=account, **{k: v for k, v in rec.items() if v})
    for key in ("output_file", "error_file"):
        fid = rec[key]
        if isinstance(fid, str) and b.owner("file", fid) is None:
            b.add(kind="file", id=fid, account=account, purpose="batch_output", batch=batch["id"],
                  input_file=rec["input_file"], noted=time.time())


async def _log_output(gw: Gateway, info, file_id: str, content: bytes, request: Request) -> None:
    """Each answer line of a batch output file becomes one event, joined to its request line."""
    b = book(gw)
    meta = b.files.get(file_id, {})
    spool = b.files.get(str(meta.get("input_file")), {}).get("spool")
    if meta.get("purpose") != "batch_output" or not spool or not Path(spool).exists():
        return
    requests = {}
    for raw in Path(spool).read_bytes().splitlines():
        item = _json(raw)
        if isinstance(item, dict):
            requests[item.get("custom_id")] = item
    # One time for every fetch of this file (when the gateway first saw it): an event's id and ts
    # must repeat together, since the store's duplicate check only looks at rows from a batch's
    # earliest ts on (a second fetch at a later ts stored the lines twice).
    noted = meta.get("noted")
    ts = float(noted) if isinstance(noted, (int, float)) and not isinstance(noted, bool) else time.time()
    ip, user_agent = client_ip(gw, request), request.headers.get("user-agent")
    for raw in content.splitlines():
        line = _json(raw)
        if not isinstance(line, dict) or line.get("custom_id") not in requests:
            continue
        item = requests[line["custom_id"]]
        answer = line.get("response") if isinstance(line.get("response"), dict) else {}
        event = new_event(ts, info, item["url"], item["body"], ip, user_agent)
        event["id"] = hashlib.sha256(f"{file_id}\x00{line['custom_id']}".encode()).hexdigest()[:32]
        event["status"] = answer.get("status_code") if isinstance(answer.get("status_code"), int) else 200
        body = answer.get("body")
        if body is not None:
            event["response"] = body
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            event["usage"] = {k: v for k, v in usage.items() if isinstance(v, int)}
        event["batch"] = {"batch": meta.get("batch"), "custom_id": line["custom_id"], "output_file": file_id}
        await record(gw, event)
        charge_answer(gw, info.account, None, event)
        gw.scorer.add_output(info.account, int((event.get("usage") or {}).get("completion_tokens") or 0), False)


def _up_headers(gw: Gateway, info, content_type: str | None) -> dict[str, str]:
    headers = {"x-distillguard-account": info.account}
    if content_type:
        headers["content-type"] = content_type
    if gw.config.upstream_api_key:
        headers["authorization"] = f"Bearer {gw.config.upstream_api_key}"
    return headers


def _unreachable(exc: UpstreamError, headers: dict[str, str] | None) -> Response:
    return openai_error(502, f"the model server failed: {exc}", "upstream_unavailable", kind="upstream_error",
                        headers=headers)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
