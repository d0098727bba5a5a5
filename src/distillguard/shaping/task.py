"""The shaping lab's tasks: arithmetic with a scratchpad, and the tiny models that learn them.

Two tasks share one interface (``Task``) and the training, generation and scoring helpers below:

* ``ADDITION`` (``addition``): 2-digit addition. ``47+85=`` is answered with a trace of column sums,
  least significant first, then the sum, most significant first: ``[7+5=12,8+4+1=13]132`` and a
  newline. Inside a column the two digits may come in either order (the teacher learns both), the
  trace's only freedom. Writing the sum most-significant-first needs the carries, so the skill
  lives in the trace.
* ``MULTISUM`` (``multisum``): five one-digit operands, named ``a``-``e``, summed *in any order*.
  ``a3+b7+c5+d2+e9=`` is answered with running totals, one operand per step,
  ``[e9=9,a3=12,c5=17,d2=19,b7=26]26``: every step chooses an operand not yet used (5! = 120 valid
  traces per problem), copies it, and adds it; the totals and the answer follow from the choices. A model needs the running totals to get the sum
  right, and a trace has many equally correct continuations, as real reasoning does: the setting
  antidistillation sampling was designed for.

Models are Hugging Face GPT-2s of 15k-110k parameters over a 17- or 22-token character vocabulary; a
teacher trains in a minute or two on two CPU cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

CHARS = "0123456789+=,[]\n"
NAMES = "abcde"               # the multisum task's operand names


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts '²' and other digits ``int`` refuses)."""
    return bool(text) and all("0" <= c <= "9" for c in text)


class Task:
    """A scratchpad arithmetic task: problems are integer rows, a completion is ``[trace]answer\\n``."""

    name = ""
    teacher_steps = 800          # what the lab teacher trains for (fresh problems every step)
    operands = 2
    digits = 1
    max_len = 32
    chars = CHARS

    def __init__(self) -> None:
        self.vocab = len(self.chars) + 1
        self.pad = len(self.chars)             # padding / label -100 in training; never generated
        self.eos = self.chars.index("\n")
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.step_delimiters = tuple(self.ids[c] for c in ",[]")

    @property
    def prompt_len(self) -> int:
        return self.operands * (self.digits + 1)

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < len(self.chars))

    def problems(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 10 ** self.digits, size=(n, self.operands))

    def prompt(self, row) -> str:
        return "+".join(f"{int(x):0{self.digits}d}" for x in row) + "="

    def solution(self, row) -> int:
        return int(sum(int(x) for x in row))

    def trace(self, row, rng: np.random.Generator | None = None) -> str:
        """A correct completion (its free choices drawn from ``rng``; fixed without it)."""
        raise NotImplementedError

    def answer_of(self, completion: str) -> int | None:
        """The final answer written after the scratchpad (None when the trace is malformed)."""
        tail = completion.split("]", 1)[1] if "]" in completion else completion
        tail = tail.split("\n", 1)[0]
        width = len(str(self.operands * (10 ** self.digits - 1)))
        return int(tail) if _digits(tail) and len(tail) <= width else None


class AdditionTask(Task):
    name, operands, digits, max_len = "addition", 2, 2, 32

    def trace(self, row, rng: np.random.Generator | None = None) -> str:
        a, b = int(row[0]), int(row[1])
        cols, carry = [], 0
        for i in range(self.digits):
            x, y = (a // 10**i) % 10, (b // 10**i) % 10
            if rng is not None and rng.random() < 0.5:
                x, y = y, x
            s = x + y + carry
            cols.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
            carry = s // 10
        return "[" + ",".join(cols) + "]" + str(a + b) + "\n"


class MultiSumTask(Task):
    name, operands, digits, max_len = "multisum", 5, 1, 48
    teacher_steps = 1500
    chars = CHARS + NAMES

    @property
    def prompt_len(self) -> int:
        return self.operands * 3

    def prompt(self, row) -> str:
        return "+".join(f"{NAMES[i]}{int(x)}" for i, x in enumerate(row)) + "="

    def trace(self, row, rng: np.random.Generator | None = None) -> str:
        order = list(range(len(row)))
        if rng is not None:
            order = [int(i) for i in rng.permutation(len(row))]
        steps, total = [], 0
        for i in order:
            total += int(row[i])
            steps.append(f"{NAMES[i]}{int(row[i])}={total}")
        return "[" + ",".join(steps) + "]" + str(total) + "\n"

    def valid_trace(self, row, completion: str) -> bool:
        """Every operand used exactly once and copied right, every running total right, the answer
        their sum."""
        if not completion.startswith("[") or "]" not in completion:
            return False
        inner = completion[1:].split("]", 1)[0]
        used, total = [], 0
        for step in inner.split(","):
            if len(step) < 4 or step[0] not in NAMES or step[2] != "=" or not _digits(step[1:2]) \
                    or not _digits(step[3:]):
                return False
            i = NAMES.index(step[0])
            if i >= len(row) or int(step[1]) != int(row[i]) or int(step[3:]) != total + int(step[1]):
                return False
            total = int(step[3:])
            used.append(i)
        return sorted(used) == list(range(len(row))) and self.answer_of(completion) == total


ADDITION = AdditionTask()
MULTISUM = MultiSumTask()
TASKS = {t.name: t for t in (ADDITION, MULTISUM)}


def get(name: str) -> Task:
    from distillguard.errors import BadInputError

    if name not in TASKS:
        raise BadInputError(f"unknown shaping lab task {name!r} (known: {', '.join(TASKS)})", field="task")
    return TASKS[name]


def make_model(task: Task, *, n_layer: int, n_embd: int, n_head: int = 4, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=task.vocab, n_positions=task.max_len, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=task.eos, eos_token_id=task.eos, pad_token_id=task.pad,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def batch_tensors(task: Task, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (prompt and padding masked out of the loss)."""
    width = min(task.max_len, max(len(t) for t in texts))
    ids = torch.full((len(texts), width), task.pad, dtype=torch.long)
    labels = torch.full((len(texts), width), -100, dtype=torch.long)
    for i, t in enumerate(texts):
        e = task.encode(t)[:width]
        ids[i, :len(e)] = torch.tensor(e)
        labels[i, task.prompt_len:len(e)] = torch.tensor(e[task.prompt_len:])
    return ids, labels


def train(task: Task, model, texts: list[str] | Callable[[int], list[str]], *, steps: int, batch: int = 64,
          lr: float = 3e-3, seed: int = 0, deadline: float | None = None) -> dict[str, Any]:
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
        ids, labels = batch_tensors(task, chunk)
        loss = model(input_ids=ids, attention_mask=(ids != task.pad).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": len(losses), "seconds": round(time.monotonic() - start, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}


def fresh_traces(task: Task, rng: np.random.Generator) -> Callable[[int], list[str]]:
    def draw(n: int) -> list[str]:
        return [task.prompt(row) + task.trace(row, rng) for row in task.problems(n, rng)]
    return draw


def generate(task: Task, model, rows: np.ndarray, *, processors: list | None = None, temperature: float = 0.0,
             seed: int = 0, batch: int = 256) -> list[str]:
    """Completions (trace + answer) for problems ``rows``; greedy at temperature 0, else sampled.
    All prompts of a task have the same length, so batches need no padding."""
    from transformers import LogitsProcessorList

    out: list[str] = []
    torch.manual_seed(seed)
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        ids = torch.tensor([task.encode(task.prompt(row)) for row in chunk], dtype=torch.long)
        kwargs: dict[str, Any] = {"max_new_tokens": task.max_len - task.prompt_len, "eos_token_id": task.eos,
                                  "pad_token_id": task.eos, "attention_mask": torch.ones_like(ids)}
        kwargs.update(do_sample=True, temperature=temperature, top_k=0) if temperature > 0 else kwargs.update(
            do_sample=False)
        if processors:
            for p in processors:
                if hasattr(p, "reset"):
                    p.reset()
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        with torch.no_grad():
            gen = model.generate(ids, **kwargs)
        for row in gen[:, task.prompt_len:].tolist():
            text = task.decode(row)
            out.append(text.split("\n", 1)[0] + "\n")
    return out


def accuracy(task: Task, rows: np.ndarray, completions: list[str]) -> float:
    ok = [task.answer_of(c) == task.solution(row) for row, c in zip(rows, completions)]
    return float(np.mean(ok)) if ok else 0.0


def evaluate(task: Task, model, rows: np.ndarray) -> float:
    """Greedy task accuracy (final answer correct)."""
    return accuracy(task, rows, generate(task, model, rows))


@dataclass
class Tokenizer:
    """The character tokenizer behind the Hugging Face call convention the watermark code uses."""

    task: Task = ADDITION

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:   # noqa: ARG002
        return {"input_ids": [self.task.ids[c] for c in text if c in self.task.ids]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:                        # noqa: ARG002
        return self.task.decode(ids)
