"""The models being compared, behind one narrow boundary: prompts in, sampled completions out.

A model is an OpenAI-compatible endpoint (``http://…``; asked over ``/v1/chat/completions``) or a
local Hugging Face checkpoint directory (``default`` is the embedded tiny model). Local models
are *open weights*: they can also score a text's likelihood, which the likelihood and
radioactivity tests need.

Likelihoods are reported in nats per UTF-8 byte of the completion, each model reading the text
with its own tokenizer, so models with different tokenizers can be compared (re-tokenisation).
That only works when a tokenizer reproduces the text exactly; one that does not (an ``[UNK]``
token, lost whitespace) is refused with a clear error rather than scored on a different text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import BadInputError


class LocalModel:
    """A Hugging Face causal LM directory, sampled with batched ``generate``."""

    open_weights = True

    def __init__(self, directory: str | Path, label: str) -> None:
        from distillguard.serve.hf import HFModelServer

        self.location = str(directory)
        self.label = label
        self.server = HFModelServer(directory, keys=None)
        self.tokenizer, self.model = self.server.tokenizer, self.server.model
        self.name = self.server.model_name

    def formatted(self, prompt: str) -> str:
        from distillguard.serve.hf import chat_prompt

        return chat_prompt(self.tokenizer, [{"role": "user", "content": prompt}])

    def sample(self, prompts: list[str], n: int, *, max_tokens: int, temperature: float, seed: int,
               batch: int = 48) -> list[list[str]]:
        """``n`` completions of each prompt (prompt-major), reproducible under ``seed``."""
        import torch

        torch.manual_seed(seed)
        flat = [self.formatted(p) for p in prompts for _ in range(n)]
        texts: list[str] = []
        for start in range(0, len(flat), batch):
            texts += self.server.generate_batch(flat[start:start + batch], max_tokens=max_tokens,
                                                temperature=temperature, account="distillguard-compare")
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def check_round_trip(self, texts: list[str]) -> None:
        """Refuse a tokenizer that does not reproduce the texts: it would score other texts."""
        bad = [t for t in texts if t and self.tokenizer.decode(self.tokenizer(t, add_special_tokens=False)
                                                                ["input_ids"]) != t]
        if len(bad) > 0.05 * max(1, len(texts)):
            raise BadInputError(f"tokenizer mismatch: this model's tokenizer changes {len(bad)} of {len(texts)} texts "
                                f"on a round trip (e.g. {bad[0][:60]!r}), so it cannot score their likelihood; the "
                                "likelihood test needs lossless (byte-level) tokenizers", source=self.location)

    def log_likelihood(self, prompts: list[str], completions: list[str], batch: int = 16) -> np.ndarray:
        """Log-likelihood of each completion after its (chat-formatted) prompt, in nats per byte of
        the completion; NaN for an empty completion."""
        import torch

        tok, model = self.tokenizer, self.model
        limit = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
        vocab = int(model.config.vocab_size)
        rows: list[tuple[list[int], int, int]] = []            # ids, completion start, completion bytes
        for prompt, completion in zip(prompts, completions):
            done = tok(completion, add_special_tokens=False)["input_ids"]
            head = tok(self.formatted(prompt), add_special_tokens=False)["input_ids"]
            done = done[:limit - 1]
            head = head[-(limit - len(done)):] if head else []
            if not head:                                       # something to condition the first token on
                head = [tok.eos_token_id if tok.eos_token_id is not None else 0]
                done = done[:limit - 1]
            rows.append((head + done, len(head), len(completion.encode("utf-8"))))
        out = np.full(len(rows), np.nan)
        model.eval()
        order = np.argsort([len(r[0]) for r in rows])          # similar lengths share a batch (less padding)
        with torch.no_grad():
            for start in range(0, len(order), batch):
                chunk = [rows[i] for i in order[start:start + batch]]
                width = max(len(r[0]) for r in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, (seq, _, _) in enumerate(chunk):
                    ids[j, :len(seq)] = torch.tensor(seq)
                    mask[j, :len(seq)] = 1
                if int(ids.max()) >= vocab:
                    raise BadInputError("tokenizer mismatch: token ids beyond the model's vocabulary",
                                        source=self.location)
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
                token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
                for j, (seq, head, n_bytes) in enumerate(chunk):
                    if len(seq) > head and n_bytes > 0:
                        out[order[start + j]] = float(token_logp[j, head - 1:len(seq) - 1].sum()) / n_bytes
        return out


class EndpointModel:
    """An OpenAI-compatible chat endpoint, sampled one request per completion (most servers
    ignore ``n``), a few requests in flight at a time."""

    open_weights = False

    def __init__(self, url: str, label: str, *, api_key: str | None = None, model: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0) -> None:
        base = url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self.location = url
        self.label = label
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.name = model or self._served_name()

    @property
    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _served_name(self) -> str:
        """The model id from ``/v1/models`` (also checks the endpoint answers at all)."""
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/v1/models", headers=self._headers, timeout=min(self.timeout, 15.0))
        except httpx.HTTPError as exc:
            raise BadInputError(f"cannot reach the {self.label} endpoint ({type(exc).__name__}: {exc})",
                                source=self.location) from None
        try:
            return str(r.json()["data"][0]["id"]) if r.status_code == 200 else "default"
        except (ValueError, KeyError, IndexError, TypeError):
            return "default"

    def sample(self, prompts: list[str], n: int, *, max_tokens: int, temperature: float, seed: int) -> list[list[str]]:
        flat = [p for p in prompts for _ in range(n)]
        texts = asyncio.run(self._ask_all(flat, max_tokens=max_tokens, temperature=temperature, seed=seed))
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    async def _ask_all(self, prompts: list[str], *, max_tokens: int, temperature: float, seed: int) -> list[str]:
        import httpx

        semaphore = asyncio.Semaphore(self.concurrency)

        async def ask(client: httpx.AsyncClient, i: int, prompt: str) -> str:
            async with semaphore:
                r = await client.post("/v1/chat/completions", headers=self._headers, json={
                    "model": self.name, "max_tokens": max_tokens, "temperature": temperature, "seed": seed + i,
                    "messages": [{"role": "user", "content": prompt}]})
            if r.status_code != 200:
                raise BadInputError(f"the {self.label} endpoint answered HTTP {r.status_code}: "
                                    f"{r.text[:200].strip()}", source=self.location)
            try:
                return r.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise BadInputError(f"the {self.label} endpoint's answer is not an OpenAI chat completion",
                                    source=self.location) from None

        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout) as client:
                return list(await asyncio.gather(*(ask(client, i, p) for i, p in enumerate(prompts))))
        except httpx.HTTPError as exc:
            raise BadInputError(f"cannot reach the {self.label} endpoint ({type(exc).__name__}: {exc})",
                                source=self.location) from None


Model = LocalModel | EndpointModel


def open_model(spec: str, label: str, *, api_key: str | None = None) -> Model:
    """``http(s)://…`` → an endpoint; ``default`` → the embedded tiny model; else a local directory."""
    if spec.startswith(("http://", "https://")):
        return EndpointModel(spec, label, api_key=api_key)
    if spec == "default":
        from distillguard.lab.tinylm import default_model_dir

        directory = default_model_dir()
        if not directory.exists():
            raise BadInputError("the embedded default model is not built yet: run 'distillguard lab build-model'",
                                source=label)
        return LocalModel(directory, label)
    if not Path(spec).exists():
        raise BadInputError("no such model directory (give a local Hugging Face directory, 'default', or an "
                            "http(s):// endpoint URL)", source=spec)
    return LocalModel(spec, label)


def same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()
