"""An OpenAI-compatible model server over a Hugging Face causal LM, watermarking every completion.

Each request is generated with the watermark key of the requesting account's cohort:
``transformers``' KGW ``WatermarkLogitsProcessor`` with the key set's per-cohort hashing key, or
its ``SynthIDTextWatermarkLogitsProcessor`` with the cohort's tournament keys (scheme ``synthid``). The gateway
names the account in ``x-distillguard-account``; without it the request counts as the account
``anonymous``. When the gateway routes a distrusted account to a named cohort of the key set
(``x-distillguard-cohort: watch``), that cohort's key is used instead; other values of the header
(e.g. the gateway's default ``cohort-N``) are ignored: account cohorts come from the key set's
keyed hash, which outsiders cannot predict. Generation runs in a worker thread, one request at a time (a CPU model has no
batch to share). Streaming requests get the completion in SSE chunks once it is generated.
With a ``Shaper`` (distillguard.shaping), ``x-distillguard-shape: <mode>`` from the gateway shapes
the request's answer (antidistillation sampling ahead of the watermark, or a reasoning summary).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import BadInputError
from distillguard.serve.fixed import _send, not_http, read_body
from distillguard.watermark.keys import KeySet

DEFAULT_MAX_TOKENS = 128


def from_local_dir(path: str | Path, what: str, load):
    """Run ``load(directory)`` on a local Hugging Face directory (offline); every failure becomes one
    clear error naming the directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"expected a local {what} directory (Hugging Face layout)", source=str(path))
    try:
        return load(str(path))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot load a {what} from it ({str(exc).splitlines()[0][:200]})",
                            source=str(path)) from None


def load_model(path: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(directory: str):
        return (AutoTokenizer.from_pretrained(directory, local_files_only=True),
                AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval())
    tokenizer, model = from_local_dir(path, "causal language model", load)
    return tokenizer, model


def chat_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The model's chat template when it has one; else the lab format (``User: …\\nAssistant:``)."""
    from distillguard.events.schema import content_text

    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = []
    for m in messages:
        role = {"user": "User", "assistant": "Assistant", "system": "System", "developer": "System"}.get(
            m.get("role"), "User")
        lines.append(f"{role}: {content_text(m.get('content'))}")
    return "\n".join(lines) + "\nAssistant:"


class HFModelServer:
    def __init__(self, model_dir: str | Path, *, keys: KeySet | None, model_name: str | None = None,
                 shaper: Any = None) -> None:
        self.tokenizer, self.model = load_model(model_dir)
        self.shaper = shaper
        self.keys = keys
        self.model_name = model_name or Path(model_dir).name
        self.max_positions = int(getattr(self.model.config, "n_positions", None)
                                 or getattr(self.model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()
        self._processors: dict[int, Any] = {}
        self.requests = 0

    def watermark_config(self, cohort: int):
        """A ``WatermarkingConfig`` for one cohort that hands ``generate`` one reused processor.

        A plain ``WatermarkingConfig`` makes ``generate`` build a new ``WatermarkLogitsProcessor`` per
        request, and that constructor draws a permutation of 1,000,003 entries (a table only the
        ``selfhash`` scheme uses): ~35 ms per request, 13 % of a 100-token completion on the default
        model. The processor keeps no state between calls that changes its output (it re-seeds from
        the context at every step; ours caches each context's green list, see
        ``_green_bias_processor``), and ``generate`` still places it itself, after temperature and
        top-p, so the tokens are the library's (``tests/test_serve_hf.py`` checks it)."""
        if cohort not in self._processors:
            self._processors[cohort] = _reusing_config(self.keys.watermarking_config(cohort),
                                                       self.model.config.vocab_size, self.model.device)
        return self._processors[cohort]

    def cohort_for(self, account: str, cohort_name: str | None = None) -> int | None:
        """The cohort whose key watermarks this request: a named cohort the gateway routed the
        account to, else the account's own cohort (None without keys)."""
        if self.keys is None:
            return None
        named = self.keys.cohort_index(cohort_name) if cohort_name else None
        return named if named is not None else self.keys.cohort_of(account)

    def _watermark_kwargs(self, cohort: int | None) -> dict[str, Any]:
        if cohort is None:
            return {}
        if self.keys.scheme == "synthid":
            # SynthID's processor keeps per-generation state (its context history): a fresh one per
            # request, which is cheap (a 65,536-entry table).
            from transformers import SynthIDTextWatermarkingConfig

            return {"watermarking_config": SynthIDTextWatermarkingConfig(**self.keys.synthid_config(cohort))}
        return {"watermarking_config": self.watermark_config(cohort)}

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 account: str, cohort_name: str | None = None,
                 shape: str | None = None) -> tuple[str, int, int, int | None]:
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        room = self.max_positions - ids.shape[1]
        if room < 1:
            ids = ids[:, -(self.max_positions - max(1, min(max_tokens, self.max_positions // 2))):]
            room = self.max_positions - ids.shape[1]
        new_tokens = max(1, min(max_tokens, room))
        kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "pad_token_id": self.tokenizer.eos_token_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        cohort = self.cohort_for(account, cohort_name)
        shaping = self.shaper is not None and bool(shape)
        with self._lock, torch.no_grad():
            if shaping and self.shaper.two_pass(shape):     # decoupled reasoning: two passes
                completion = torch.tensor(self.shaper.generate(self.model, ids, None, {
                    **kwargs, **self._watermark_kwargs(cohort)})[0], dtype=torch.long)
            else:
                if shaping and (processors := self.shaper.processors(shape)):
                    from transformers import LogitsProcessorList

                    kwargs["logits_processor"] = LogitsProcessorList(processors)   # placed before the watermark
                out = self.model.generate(ids, **kwargs, **self._watermark_kwargs(cohort))
                completion = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(completion, skip_special_tokens=True)
        if shaping:
            text = self.shaper.postprocess(shape, text)
        return text, int(ids.shape[1]), int(completion.numel()), cohort

    def generate_batch(self, prompts: list[str], *, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                       account: str, shape: str | None = None) -> list[str]:
        """Completions of many prompts for one account in one batched ``generate`` (left padding);
        the lab uses it to collect a teacher's answers quickly. Prompts are cut to fit the context.
        ``shape`` applies a shaping mode as the ``x-distillguard-shape`` header would."""
        import torch

        if not prompts:
            return []
        budget = max(1, self.max_positions - max_tokens)
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"][-budget:] for p in prompts]
        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            if e:
                ids[i, width - len(e):] = torch.tensor(e)
                mask[i, width - len(e):] = 1
        kwargs: dict[str, Any] = {"max_new_tokens": max(1, min(max_tokens, self.max_positions - width)),
                                  "pad_token_id": pad, "attention_mask": mask}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        cohort = self.keys.cohort_of(account) if self.keys is not None else None
        shaping = self.shaper is not None and bool(shape)
        with self._lock, torch.no_grad():
            if shaping and self.shaper.two_pass(shape):     # decoupled reasoning: two passes
                kwargs.pop("attention_mask")
                rows = self.shaper.generate(self.model, ids, mask, {**kwargs, **self._watermark_kwargs(cohort)})
            else:
                if shaping and (processors := self.shaper.processors(shape, attention_mask=mask)):
                    from transformers import LogitsProcessorList

                    kwargs["logits_processor"] = LogitsProcessorList(processors)   # placed before the watermark
                rows = self.model.generate(ids, **kwargs, **self._watermark_kwargs(cohort))[:, width:].tolist()
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]
        return [self.shaper.postprocess(shape, t) for t in texts] if shaping else texts

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            return await not_http(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            return await _send(send, 200, orjson.dumps({"object": "list", "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "distillguard"}]}))
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await _error(send, 404, "not found", "not_found")
        try:
            request = orjson.loads(await read_body(receive))
            assert isinstance(request, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return await _error(send, 400, "request body must be a JSON object", "invalid_json")
        chat = path == "/v1/chat/completions"
        if chat:
            messages = request.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                return await _error(send, 400, "'messages' must be an array of objects", "invalid_request")
            prompt = chat_prompt(self.tokenizer, messages)
        else:
            prompt = request.get("prompt")
            if not isinstance(prompt, str):
                return await _error(send, 400, "'prompt' must be a string", "invalid_request")
        try:
            max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
            temperature = float(request.get("temperature", 1.0))
            top_p = float(request.get("top_p", 1.0))
        except (TypeError, ValueError):
            return await _error(send, 400, "max_tokens, temperature and top_p must be numbers", "invalid_request")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        account = headers.get("x-distillguard-account") or "anonymous"
        self.requests += 1
        text, n_prompt, n_completion, _ = await asyncio.to_thread(
            self.generate, prompt, max_tokens=max(1, max_tokens), temperature=max(0.0, temperature),
            top_p=min(1.0, max(0.01, top_p)), account=account, cohort_name=headers.get("x-distillguard-cohort"),
            shape=headers.get("x-distillguard-shape"))
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}
        cid, created = f"cmpl-{self.requests}", int(time.time())
        if request.get("stream") is True:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            pieces = [text[i:i + 32] for i in range(0, len(text), 32)] or [""]
            for i, piece in enumerate(pieces):
                choice = ({"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece})
                choice["finish_reason"] = "length" if i == len(pieces) - 1 else None
                chunk = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": created, "model": self.model_name, "choices": [choice]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "finish_reason": "length"})
        await _send(send, 200, orjson.dumps({"id": cid, "object": "chat.completion" if chat else "text_completion",
                                             "created": created, "model": self.model_name, "choices": [choice],
                                             "usage": usage}))


def _reusing_config(settings: dict[str, Any], vocab_size: int, device: Any):
    from transformers import WatermarkingConfig

    class ReusedWatermarkingConfig(WatermarkingConfig):
        def construct_processor(self, vocab_size: int, device: Any):       # noqa: ARG002 (built once below)
            return processor

        def __deepcopy__(self, memo: dict) -> "ReusedWatermarkingConfig":   # generate() copies its config
            return self

    config = ReusedWatermarkingConfig(**settings)
    processor = _green_bias_processor(WatermarkingConfig.construct_processor(config, vocab_size, device))
    return config


def _green_bias_processor(library_processor):
    """transformers' lefthash KGW processor with its per-context work cached.

    The library draws the green list (seed + ``randperm`` over the vocabulary) and adds the bias by
    fancy indexing at every step: ~0.2 ms per token, 8 % of the default model's generation. Here
    each context token's green list is drawn once, by the library's own ``_get_greenlist_ids``, and
    kept as a boolean row (an LRU bounded to 32 MB per cohort: every context of a 4,096-token
    vocabulary, 1,024 of a 32k one); a step is then one row lookup and one ``where``. ``x + bias``
    on green tokens and ``x`` elsewhere are the library's values exactly, so the tokens are
    identical (tests/test_serve_hf.py)."""
    from collections import OrderedDict

    import torch

    cls = type(library_processor)
    if library_processor.seeding_scheme != "lefthash" or library_processor.context_width != 1:
        return library_processor

    class CachedGreenBias(cls):
        CACHE_BYTES = 32 * 2**20

        def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[-1] < 1:
                return super().__call__(input_ids, scores)
            rows = [self._row(int(prev)) for prev in input_ids[:, -1].tolist()]
            green = rows[0] if len(rows) == 1 else torch.stack(rows)
            return torch.where(green, scores + self.bias, scores)

        def _row(self, prev: int) -> torch.Tensor:
            cache = self.__dict__.setdefault("_rows", OrderedDict())
            row = cache.get(prev)
            if row is None:
                row = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.rng.device)
                row[self._get_greenlist_ids(torch.tensor([prev], device=self.rng.device))] = True
                cache[prev] = row
                if len(cache) > max(64, self.CACHE_BYTES // self.vocab_size):
                    cache.popitem(last=False)
            else:
                cache.move_to_end(prev)
            return row

    library_processor.__class__ = CachedGreenBias
    return library_processor


async def _error(send, status: int, message: str, code: str) -> None:
    await _send(send, status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                      "code": code, "param": None}}))
