"""The shaping lab's task: 2-digit addition with a scratchpad, and the tiny models that learn it.

A problem ``47+85=`` is answered with a trace of column sums, least significant first, and then
the sum, most significant first: ``[7+5=12,8+4+1=13]132`` then a newline. Inside a column
the two digits may come in either order (the teacher learns both), so a trace has legitimate
freedom, as real reasoning does. Writing the sum most-significant-first needs the carries: a model
that skips the scratchpad has to resolve them in its head, so the skill lives in the trace and a
student distilled from traces learns it from them.

Models are Hugging Face GPT-2s of 15k-110k parameters over a 17-token character vocabulary; a
teacher trains in about a minute on two CPU cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

CHARS = "0123456789+=,[]\n"
PAD = len(CHARS)             # padding / label -100 in training; never generated
VOCAB = len(CHARS) + 1
EOS = CHARS.index("\n")
ID = {c: i for i, c in enumerate(CHARS)}
DIGITS = 2
PROMPT_LEN = 2 * DIGITS + 2   # "dd+dd="
MAX_LEN = 32
STEP_DELIMITERS = (ID[","], ID["["], ID["]"])


def encode(text: str) -> list[int]:
    return [ID[c] for c in text]


def decode(ids) -> str:
    return "".join(CHARS[i] for i in ids if 0 <= i < len(CHARS))


def problems(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 10**DIGITS, size=(n, 2))


def prompt(a: int, b: int) -> str:
    return f"{a:0{DIGITS}d}+{b:0{DIGITS}d}="


def trace(a: int, b: int, rng: np.random.Generator | None = None) -> str:
    """The reference trace (digit order within a column drawn from ``rng``; fixed without it)."""
    cols, carry = [], 0
    for i in range(DIGITS):
        x, y = (a // 10**i) % 10, (b // 10**i) % 10
        if rng is not None and rng.random() < 0.5:
            x, y = y, x
        s = x + y + carry
        cols.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
        carry = s // 10
    return "[" + ",".join(cols) + "]" + str(a + b) + "\n"


def answer_of(completion: str) -> int | None:
    """The final answer written after the scratchpad (None when the trace is malformed)."""
    tail = completion.split("]", 1)[1] if "]" in completion else completion
    tail = tail.split("\n", 1)[0]
    return int(tail) if tail.isdigit() and len(tail) <= DIGITS + 1 else None


def make_model(*, n_layer: int, n_embd: int, n_head: int = 4, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def batch_tensors(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (prompt and padding masked out of the loss)."""
    width = min(MAX_LEN, max(len(t) for t in texts))
    ids = torch.full((len(texts), width), PAD, dtype=torch.long)
    labels = torch.full((len(texts), width), -100, dtype=torch.long)
    for i, t in enumerate(texts):
        e = encode(t)[:width]
        ids[i, :len(e)] = torch.tensor(e)
        labels[i, PROMPT_LEN:len(e)] = torch.tensor(e[PROMPT_LEN:])
    return ids, labels


def train(model, texts: list[str] | Callable[[int], list[str]], *, steps: int, batch: int = 64, lr: float = 3e-3,
          seed: int = 0, deadline: float | None = None) -> dict[str, Any]:
    """Train on ``texts`` (a fixed set, sampled in batches) or on fresh ones from a generator
    ``texts(batch)``, for ``steps`` steps (or until ``deadline``, a ``time.monotonic`` value)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / steps))
    model.train()
    losses, start = [], time.monotonic()
    for step in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        chunk = texts(batch) if callable(texts) else [texts[i] for i in rng.integers(0, len(texts), size=batch)]
        ids, labels = batch_tensors(chunk)
        loss = model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
    model.eval()
    return {"steps": len(losses), "seconds": round(time.monotonic() - start, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}


def fresh_traces(rng: np.random.Generator) -> Callable[[int], list[str]]:
    def draw(n: int) -> list[str]:
        return [prompt(a, b) + trace(int(a), int(b), rng) for a, b in problems(n, rng)]
    return draw


def generate(model, pairs: np.ndarray, *, processors: list | None = None, temperature: float = 0.0,
             seed: int = 0, batch: int = 256) -> list[str]:
    """Completions (trace + answer) for problems ``pairs``; greedy at temperature 0, else sampled.
    All prompts have the same length, so batches need no padding."""
    from transformers import LogitsProcessorList

    out: list[str] = []
    torch.manual_seed(seed)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        ids = torch.tensor([encode(prompt(int(a), int(b))) for a, b in chunk], dtype=torch.long)
        kwargs: dict[str, Any] = {"max_new_tokens": MAX_LEN - PROMPT_LEN, "eos_token_id": EOS, "pad_token_id": EOS,
                                  "attention_mask": torch.ones_like(ids)}
        kwargs.update(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else kwargs.update(
            do_sample=False)
        if processors:
            for p in processors:
                if hasattr(p, "reset"):
                    p.reset()
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        with torch.no_grad():
            gen = model.generate(ids, **kwargs)
        for row in gen[:, PROMPT_LEN:].tolist():
            text = decode(row)
            out.append(text.split("\n", 1)[0] + "\n")
    return out


def accuracy(pairs: np.ndarray, completions: list[str]) -> float:
    ok = [answer_of(c) == int(a) + int(b) for (a, b), c in zip(pairs, completions)]
    return float(np.mean(ok)) if ok else 0.0


def evaluate(model, pairs: np.ndarray) -> float:
    """Greedy task accuracy (final answer correct)."""
    return accuracy(pairs, generate(model, pairs))


@dataclass
class Tokenizer:
    """The character tokenizer behind the Hugging Face call convention the watermark code uses."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:   # noqa: ARG002
        return {"input_ids": [ID[c] for c in text if c in ID]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:                        # noqa: ARG002
        return decode(ids)
