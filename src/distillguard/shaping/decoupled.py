"""Decoupled reasoning: the answer from the teacher's unshaped pass, the reasoning perturbed at a few anchor steps.

In the spirit of TraceGuard (arXiv 2604.23238: perturb only the few reasoning steps that matter,
keep the answer). A model that emits its reasoning and then its answer (``<think>…</think>answer``)
answers in two passes:

1. **The unshaped pass**: ``generate`` as for any request (with the watermark and any other
   processors). Its *answer*, everything after the reasoning's closing marker, is what the user
   gets: the answer's accuracy is the unshaped model's, by construction.
2. **The reasoning pass**: ``anchors`` of the reasoning's steps (steps end at delimiter tokens:
   line breaks, sentence ends; in the lab a comma) are drawn at random. Generation restarts from
   the unshaped pass's own tokens up to the first anchor step (that prefix is only re-read, one
   forward pass, never decoded again); inside an anchor step every token is sampled at a high
   ``temperature`` (never end of text: an anchor step cannot end the answer), between and after anchor steps the model continues as in the first pass, so it
   carries what the perturbed step wrote into the steps that follow it (what a step teaches lies
   in what follows it). The reasoning pass stops at the closing marker (or when it has decoded as
   many tokens as the unshaped pass had left after the prefix: the whole costs at most twice the
   unshaped decoding, plus one prefill).

The returned text is the perturbed reasoning, the closing marker and the unshaped answer. The
strength is ``anchors``, the number of steps perturbed per answer (0: the unshaped text). What it
costs a legitimate user: the reasoning shown can be wrong at the anchor steps and after them (the
answer is not); what it does not protect: the answer itself, and any reasoning an extractor can
check (arithmetic, code with tests) and drop.

Rows whose unshaped pass has no closed reasoning (no closing marker, or no step in it) are
returned unchanged. Rows of one batch are regenerated in groups that share the prefix length, so a
left-padded batch needs no new padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from transformers import StoppingCriteria

from distillguard.errors import BadInputError


def step_delimiters(tokenizer: Any) -> list[int]:
    """Token ids that end a reasoning step for a tokenizer: those whose text holds a line break or
    ends a sentence."""
    out = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if "\n" in text or text.rstrip().endswith((".", "!", "?", ";")):
            out.append(token_id)
    return out


@dataclass(frozen=True)
class ReasoningFormat:
    """Where the reasoning is, in token ids: ``close`` ends it (required), ``open`` starts it (the
    reasoning starts after its first occurrence in the generated text, or at the first generated
    token when it is absent, as for chat templates that put ``<think>`` in the prompt),
    ``delimiters`` end a step, ``never`` are tokens an anchor step may not sample (end of text)."""

    close: tuple[int, ...]
    delimiters: frozenset[int]
    open: tuple[int, ...] = ()
    never: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.close:
            raise BadInputError("decoupled reasoning needs a closing marker for the reasoning", field="close")
        if not self.delimiters:
            raise BadInputError("decoupled reasoning needs at least one step delimiter token", field="delimiters")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, open_marker: str = "<think>", close_marker: str = "</think>",
                       delimiters: Sequence[int] | None = None) -> "ReasoningFormat":
        """Markers as the tokenizer writes them (a reasoning model's ``<think>`` tags are single
        special tokens); step delimiters: tokens whose text holds a line break or ends a sentence."""
        enc = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()  # noqa: E731
        never = {t for t in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None))
                 if t is not None}
        close = enc(close_marker)
        delims = set(delimiters if delimiters is not None else step_delimiters(tokenizer)) - set(close[:1]) - never
        return cls(close=close, delimiters=frozenset(delims), open=enc(open_marker), never=frozenset(never))

    def spans(self, tokens: Sequence[int]) -> tuple[int, int, list[int]] | None:
        """``(start, end, step_starts)`` of the reasoning in generated ``tokens``: it runs from
        ``start`` to ``end`` (where the closing marker begins); a step starts at ``start`` and after
        every delimiter before ``end``. None without a closed, non-empty reasoning."""
        tokens = list(tokens)
        start = 0
        if self.open:
            at = _find(tokens, self.open, 0)
            start = at + len(self.open) if at >= 0 else 0
        end = _find(tokens, self.close, start)
        if end <= start:
            return None
        steps = [start] + [i + 1 for i in range(start, end - 1) if tokens[i] in self.delimiters]
        return start, end, steps


def _find(tokens: list[int], pattern: Sequence[int], start: int) -> int:
    n = len(pattern)
    first = pattern[0]
    for i in range(start, len(tokens) - n + 1):
        if tokens[i] == first and tuple(tokens[i:i + n]) == tuple(pattern):
            return i
    return -1


class AnchorStepSampler:
    """A logits processor for the reasoning pass: rows start at the first anchor step (relative step
    0); each delimiter the row writes moves it to the next step. Inside a row's anchor steps
    (``anchors[row]``, relative step numbers) the next token is drawn from ``softmax(logits / T)``
    without the ``never`` tokens (end of text), with its own generator,
    and forced (every other score −inf), so the draw holds under greedy decoding and under the
    request's own temperature; an anchor step is cut after ``step_cap`` tokens."""

    def __init__(self, fmt: ReasoningFormat, anchors: list[list[int]], *, temperature: float, start: int,
                 generator: torch.Generator, step_cap: int = 64) -> None:
        self.anchors = [set(a) for a in anchors]
        self.temperature = float(temperature)
        self.start = start
        self.generator = generator
        self.step_cap = step_cap
        self.delimiters = torch.tensor(sorted(fmt.delimiters), dtype=torch.long)
        self.banned = sorted(fmt.never)
        self.step = torch.zeros(len(anchors), dtype=torch.long)
        self.in_step = torch.zeros(len(anchors), dtype=torch.long)
        self.perturbed_tokens = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.start:
            ended = torch.isin(input_ids[:, -1], self.delimiters)
            self.step = self.step + ended.long()
            self.in_step = torch.where(ended, torch.zeros_like(self.in_step), self.in_step + 1)
        active = torch.tensor([int(s) in a for s, a in zip(self.step.tolist(), self.anchors)]) & (
            self.in_step < self.step_cap)
        if not bool(active.any()):
            return scores
        logits = scores.float() / self.temperature
        banned = [b for b in self.banned if b < logits.shape[-1]]
        logits[:, banned] = -float("inf")
        drawn = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator)
        forced = torch.full_like(scores, -float("inf")).scatter(1, drawn, 0.0)
        self.perturbed_tokens += int(active.sum())
        return torch.where(active[:, None], forced, scores)


class _Closed(StoppingCriteria):
    """Stop a row once its new tokens end with the closing marker."""

    def __init__(self, close: tuple[int, ...], start: int) -> None:
        self.close = torch.tensor(close, dtype=torch.long)
        self.start = start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        n = len(self.close)
        if input_ids.shape[1] - self.start < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)
        return (input_ids[:, -n:] == self.close).all(-1)


@dataclass
class DecoupledStats:
    rows: int = 0
    shaped_rows: int = 0
    anchors: int = 0
    perturbed_tokens: int = 0
    first_pass_tokens: int = 0
    second_pass_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def perturb_reasoning(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None,
                      generated: list[list[int]], fmt: ReasoningFormat, *, anchors: int, temperature: float = 2.0,
                      seed: int | None = None, gen_kwargs: dict[str, Any] | None = None, processors: Sequence = (),
                      end_tokens: Sequence[int] = ()) -> tuple[list[list[int]], DecoupledStats]:
    """The reasoning pass for rows the unshaped pass wrote (``generated[i]``: its new tokens after
    ``prompt_ids[i]``; ``end_tokens`` end a row's text, e.g. end of text and padding). Returns each
    row's new tokens (perturbed reasoning, closing marker, the unshaped pass's answer) and counts.
    ``gen_kwargs`` are the request's ``generate`` options (sampling, temperature, watermark);
    ``processors`` its logits processors."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if anchors < 0 or not temperature > 0:
        raise BadInputError("anchors must be >= 0 and the anchor temperature > 0", field="anchors")
    stats = DecoupledStats(rows=len(generated))
    ends = set(int(t) for t in end_tokens)
    lengths = [next((i for i, t in enumerate(row) if t in ends), len(row)) for row in generated]
    stats.first_pass_tokens = sum(lengths)
    out = [list(row) for row in generated]
    if anchors == 0:
        return out, stats
    rng = np.random.default_rng(seed)
    plans: dict[int, list[tuple[int, list[int], int]]] = {}      # prefix length -> (row, relative anchors, end)
    for i, row in enumerate(generated):
        spans = fmt.spans(row[:lengths[i]])
        if spans is None:
            continue
        _, end, steps = spans
        chosen = sorted(int(s) for s in rng.choice(len(steps), size=min(anchors, len(steps)), replace=False))
        plans.setdefault(steps[chosen[0]], []).append((i, [c - chosen[0] for c in chosen], end))
    kwargs = {k: v for k, v in (gen_kwargs or {}).items() if k not in ("max_new_tokens", "attention_mask",
                                                                     "logits_processor", "stopping_criteria")}
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    for prefix, group in sorted(plans.items()):
        idx = [g[0] for g in group]
        pre = torch.tensor([generated[i][:prefix] for i in idx], dtype=torch.long).reshape(len(idx), prefix)
        ids = torch.cat([prompt_ids[idx], pre], 1)
        mask = torch.ones_like(ids)
        if prompt_mask is not None:
            mask[:, :prompt_ids.shape[1]] = prompt_mask[idx]
        budget = max(1, max(lengths[i] for i in idx) - prefix)
        sampler = AnchorStepSampler(fmt, [g[1] for g in group], temperature=temperature, start=ids.shape[1],
                                    generator=generator)
        for p in processors:
            if hasattr(p, "begin"):
                p.begin(mask)
        with torch.no_grad():
            new = model.generate(ids, attention_mask=mask, max_new_tokens=budget,
                                 logits_processor=LogitsProcessorList([sampler, *processors]),
                                 stopping_criteria=StoppingCriteriaList([_Closed(fmt.close, ids.shape[1])]),
                                 **kwargs)[:, ids.shape[1]:].tolist()
        stats.perturbed_tokens += sampler.perturbed_tokens
        for (i, rel, end), tokens in zip(group, new):
            at = _find(tokens, fmt.close, 0)
            if at >= 0:
                reasoning = tokens[:at]
                stats.second_pass_tokens += at + len(fmt.close)
            else:
                cut = next((j for j, t in enumerate(tokens) if t in ends), len(tokens))
                reasoning = tokens[:cut]
                stats.second_pass_tokens += cut
            out[i] = generated[i][:prefix] + reasoning + list(fmt.close) + generated[i][end + len(fmt.close):]
            stats.shaped_rows += 1
            stats.anchors += len(rel)
    return out, stats


def decoupled_generate(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None,
                       fmt: ReasoningFormat, *, anchors: int, temperature: float = 2.0, seed: int | None = None,
                       gen_kwargs: dict[str, Any] | None = None, processors: Sequence = (),
                       end_tokens: Sequence[int] = ()) -> tuple[list[list[int]], DecoupledStats]:
    """Both passes: the unshaped ``generate`` (its answer is what the user gets), then
    ``perturb_reasoning``. Returns each row's new tokens and counts."""
    from transformers import LogitsProcessorList

    kwargs = dict(gen_kwargs or {})
    if prompt_mask is not None:
        kwargs["attention_mask"] = prompt_mask
    for p in processors:
        if hasattr(p, "begin"):
            p.begin(prompt_mask)
    with torch.no_grad():
        first = model.generate(prompt_ids, logits_processor=LogitsProcessorList(list(processors)), **kwargs)
    generated = first[:, prompt_ids.shape[1]:].tolist()
    return perturb_reasoning(model, prompt_ids, prompt_mask, generated, fmt, anchors=anchors,
                             temperature=temperature, seed=seed, gen_kwargs=gen_kwargs, processors=processors,
                             end_tokens=end_tokens)
