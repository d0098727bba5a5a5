"""Shaping in the model server: the gateway names a mode per request, the server applies it.

The gateway's policy action ``shape`` sends ``x-distillguard-shape: <mode>`` with the requests
of flagged or ``watch`` accounts (never allowlisted ones); ``HFModelServer`` then generates with
``Shaper.processors(mode)`` ahead of the watermark processor, and passes the text through
``Shaper.postprocess(mode, text)``. Modes:

* ``antidistillation``: ``AntidistillationProcessor`` at the configured strength;
* ``anchor``: the same shift, only inside anchor steps (``AnchorPerturbationProcessor``);
* ``summary``: generation unchanged, ``<think>`` reasoning returned as a summary;
* ``decoupled``: two passes (``decoupled.py``): the answer after ``</think>`` from the unshaped
  pass, the reasoning regenerated with ``anchors`` of its steps sampled hot; the server calls
  ``Shaper.generate`` instead of ``generate`` when ``two_pass(mode)``.

An unknown mode, or a server without a proxy, leaves the answer unshaped (summary and decoupled
need no proxy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillguard.errors import BadInputError
from distillguard.shaping import MODES
from distillguard.shaping.decoupled import DecoupledStats, ReasoningFormat, decoupled_generate, step_delimiters
from distillguard.shaping.processors import (AnchorPerturbationProcessor, AntidistillationProcessor,
                                             summarize_reasoning)

HEADER = "x-distillguard-shape"


class Shaper:
    """A proxy student with its cached held-out gradient, shared by every shaped request."""

    def __init__(self, proxy: Any | None, tokenizer: Any, *, strength: float = 0.3, heldout: list[str] | None = None,
                 plausible: float = 0.05, anchor_threshold: float = 0.02, max_anchors: int = 2,
                 anchors: int = 1, anchor_temperature: float = 1.5, reasoning_open: str = "<think>",
                 reasoning_close: str = "</think>", step_texts: list[str] | None = None,
                 seed: int | None = None) -> None:
        import numpy as np
        import torch

        self.tokenizer = tokenizer
        self.shaper: AntidistillationProcessor | None = None
        if proxy is not None:
            room = int(getattr(proxy.config, "n_positions", None)
                       or getattr(proxy.config, "max_position_embeddings", 1024))
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:room] for t in heldout or []]   # fit the proxy
            batches = [torch.tensor([i]) for i in ids if len(i) >= 2]
            if not batches:
                raise BadInputError("shaping needs held-out task texts of at least 2 tokens", field="heldout")
            self.shaper = AntidistillationProcessor(proxy, strength=strength, heldout=batches, plausible=plausible)
            self.delimiters = step_delimiters(tokenizer)
        self.anchor_threshold = anchor_threshold
        self.max_anchors = max_anchors
        if anchors < 0 or not anchor_temperature > 0:
            raise BadInputError("anchors must be >= 0 and the anchor temperature > 0", field="anchors")
        self.anchors = anchors
        self.anchor_temperature = anchor_temperature
        self.markers = (reasoning_open, reasoning_close)
        self.step_texts = step_texts          # texts of the tokens that end a step (default: line and sentence ends)
        self._format = None
        self._rng = np.random.default_rng(seed)
        self.decoupled = DecoupledStats()
        self.shaped: dict[str, int] = {}

    @classmethod
    def from_dirs(cls, proxy_dir: str | Path, heldout_file: str | Path, **params: Any) -> "Shaper":
        """A proxy from a local Hugging Face directory and held-out texts (one per line, or JSONL
        with a ``text`` field)."""
        import orjson

        from distillguard.serve.hf import load_model

        tokenizer, proxy = load_model(proxy_dir)
        path = Path(heldout_file)
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise BadInputError(f"cannot read held-out texts ({exc.strerror})", source=str(path)) from None
        texts = []
        for line in lines:
            try:
                row = orjson.loads(line)
                texts.append(row["text"] if isinstance(row, dict) and isinstance(row.get("text"), str) else line)
            except orjson.JSONDecodeError:
                texts.append(line)
        return cls(proxy, tokenizer, heldout=texts, **params)

    def processors(self, mode: str | None, attention_mask: Any = None) -> list:
        """Logits processors for one request (or one left-padded batch, with its prompt's
        ``attention_mask``) in ``mode``; empty when the mode shapes no logits."""
        if mode not in ("antidistillation", "anchor") or self.shaper is None:
            return []
        self.shaper.begin(attention_mask)
        if mode == "antidistillation":
            return [self.shaper]
        return [AnchorPerturbationProcessor(self.shaper, self.delimiters, threshold=self.anchor_threshold,
                                            max_anchors=self.max_anchors)]

    def applies(self, mode: str | None) -> bool:
        return mode in ("summary", "decoupled") or (mode in MODES and self.shaper is not None)

    def two_pass(self, mode: str | None) -> bool:
        """Whether ``mode`` is generated by ``generate`` (two passes) instead of one ``generate``."""
        return mode == "decoupled"

    def reasoning_format(self) -> ReasoningFormat:
        if self._format is None:
            delims = None if self.step_texts is None else [
                t for text in self.step_texts for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
            self._format = ReasoningFormat.from_tokenizer(self.tokenizer, open_marker=self.markers[0],
                                                          close_marker=self.markers[1], delimiters=delims)
        return self._format

    def generate(self, model: Any, input_ids: Any, attention_mask: Any, gen_kwargs: dict[str, Any],
                 processors: list | None = None) -> list[list[int]]:
        """Decoupled reasoning for one request or one left-padded batch: each row's new tokens (the
        unshaped pass's answer after a reasoning perturbed at ``anchors`` steps). ``gen_kwargs``:
        the request's ``generate`` options, watermark included (both passes are watermarked)."""
        tok = self.tokenizer
        ends = [t for t in (getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)) if t is not None]
        rows, stats = decoupled_generate(model, input_ids, attention_mask, self.reasoning_format(),
                                         anchors=self.anchors, temperature=self.anchor_temperature,
                                         seed=int(self._rng.integers(2 ** 62)), gen_kwargs=gen_kwargs,
                                         processors=processors or [], end_tokens=ends)
        for key, value in stats.to_dict().items():
            setattr(self.decoupled, key, getattr(self.decoupled, key) + value)
        return rows

    def postprocess(self, mode: str | None, text: str) -> str:
        if self.applies(mode):
            self.shaped[mode] = self.shaped.get(mode, 0) + 1
        return summarize_reasoning(text) if mode == "summary" else text
