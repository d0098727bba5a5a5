"""Output shaping as ``transformers`` logits processors: answers that serve a reader but teach a copier less.

* ``AntidistillationProcessor`` — antidistillation sampling (Savani et al., 2025, arXiv 2504.13146).
  A small *proxy student* stands in for whoever trains on our answers. ``g`` is the gradient of the
  proxy's loss on a held-out task set, computed once (one backward pass) and kept as a unit
  direction. A student that trains on a sampled token ``x`` moves its weights along
  ``grad log p(x | context)``; to first order that raises its held-out loss by
  ``<g, grad log p(x | context)>``, which a centred finite difference gives without any backward
  pass per token: ``Δ(x) = (log p_{θ+εg}(x) − log p_{θ−εg}(x)) / 2ε``. The processor adds
  ``strength · Δ`` to the teacher's next-token scores, so tokens that would teach the proxy
  *less* (or mislead it) become likelier. Cost per generated token: two forward passes of the proxy
  (each with its own key/value cache).
* ``AnchorPerturbationProcessor`` — sparse shaping in the spirit of TraceGuard (arXiv 2604.23238):
  only the few reasoning steps that matter most are perturbed. Steps are separated by delimiter
  tokens; at the first token of each step the processor measures how far the antidistillation
  shift would move the teacher's distribution (total variation: the step's *importance*, a step at
  a decision point moves it most) and, when that is above ``threshold`` and the sequence has
  anchors left (``max_anchors``), perturbs the whole step. Other steps are left exactly as the
  teacher wrote them, and the proxy is run only where needed.
* ``summarize_reasoning`` — a response post-processor: where a model emits its reasoning
  separately (``<think>…</think>``, or an API's ``reasoning_content``), return a summary of it
  (its first and last steps and how many were left out) instead of the raw trace.

Every processor works on any Hugging Face causal LM whose tokenizer the proxy shares (same token
ids; the proxy's vocabulary may be padded differently) and composes with the watermark
processors in one ``LogitsProcessorList``: put shaping first, the watermark after it, and the
watermark's green-list bias still lands on the final scores (tests/test_shaping.py checks that the
watermark still detects). Left-padded batches (batched ``generate``) work when the processor is
told the prompt's attention mask with ``begin(attention_mask)`` before generating (``generate`` does
not pass the mask to logits processors): the proxy then masks the padding and numbers each row's
positions from its first real token, as ``generate`` does for the teacher.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from typing import Any, Iterable, Sequence

import torch

from distillguard.errors import BadInputError


def heldout_gradient(proxy: Any, batches: Iterable[Any]) -> list[torch.Tensor]:
    """The unit-norm gradient of the proxy's mean next-token loss on held-out task sequences.
    ``batches``: LongTensors of shape (batch, length), or ``(ids, labels)`` pairs whose labels are
    -100 where the loss should not count (prompt, padding). One backward pass per batch."""
    proxy.zero_grad(set_to_none=True)
    params = [p for p in proxy.parameters() if p.requires_grad]
    was_training = proxy.training
    proxy.eval()
    n = 0
    with torch.enable_grad():
        for item in batches:
            ids, labels = item if isinstance(item, (tuple, list)) else (item, item)
            ids, labels = torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
            if ids.dim() != 2 or ids.shape[1] < 2 or labels.shape != ids.shape:
                raise BadInputError("held-out batches must be (batch, length >= 2) token ids", field="heldout")
            proxy(input_ids=ids, labels=labels).loss.backward()
            n += 1
    if n == 0:
        raise BadInputError("no held-out sequences to take the proxy's gradient on", field="heldout")
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    proxy.zero_grad(set_to_none=True)
    proxy.train(was_training)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    if not norm > 0:
        raise BadInputError("the proxy's held-out gradient is zero (nothing to shape against)", field="heldout")
    return [g / norm for g in grads]


class _Perturbed:
    """One copy of the proxy with weights ``θ + sign·ε·g``, and a key/value cache over the
    sequences it has read (extended when the next call's ids extend the previous ones)."""

    def __init__(self, proxy: Any, direction: list[torch.Tensor], step: float) -> None:
        self.model = copy.deepcopy(proxy).eval()
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.no_grad():
            for p, g in zip(params, direction):
                p.add_(g.to(p.dtype), alpha=step)
        self.positions = int(getattr(self.model.config, "n_positions", None)
                             or getattr(self.model.config, "max_position_embeddings", 1024))
        # newer transformers name the key/value cache ``cache``, older ones ``past_key_values``
        self._cache_arg = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                           else "past_key_values")
        self.reset()

    def reset(self) -> None:
        self._ids: torch.Tensor | None = None
        self._past = None

    def next_logprobs(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities of the next token after each row; ``mask`` (same shape as
        ``input_ids``, 0 on padding) masks left padding and sets each row's positions."""
        prev = self._ids
        kwargs: dict[str, Any] = {}
        if (prev is not None and self._past is not None and input_ids.shape[0] == prev.shape[0]
                and prev.shape[1] < input_ids.shape[1] <= self.positions and torch.equal(input_ids[:, :prev.shape[1]], prev)):
            if mask is not None:
                kwargs = {"attention_mask": mask, "position_ids": _positions(mask)[:, prev.shape[1]:]}
            out = self.model(input_ids=input_ids[:, prev.shape[1]:], use_cache=True, **{self._cache_arg: self._past},
                             **kwargs)
        else:
            ids = input_ids[:, -self.positions:]
            if mask is not None:
                window = mask[:, -self.positions:]
                kwargs = {"attention_mask": window, "position_ids": _positions(window)}
            out = self.model(input_ids=ids, use_cache=ids.shape[1] == input_ids.shape[1], **kwargs)
        self._ids, self._past = input_ids.clone(), getattr(out, self._cache_arg, None)
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: counted from each row's first real token (what
    ``generate`` gives the teacher)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class AntidistillationProcessor:
    """``scores + strength · Δ`` (see the module notes). ``direction`` is the proxy's held-out
    gradient (``heldout_gradient``; computed here from ``heldout`` when not given)."""

    def __init__(self, proxy: Any, *, strength: float, heldout: Iterable[torch.Tensor] | None = None,
                 direction: list[torch.Tensor] | None = None, epsilon: float = 1e-2, plausible: float = 0.0,
                 keep_entropy_at: float | None = None) -> None:
        if not strength >= 0 or strength != strength:
            raise BadInputError(f"strength must be >= 0, got {strength}", field="strength")
        if not epsilon > 0:
            raise BadInputError(f"epsilon must be > 0, got {epsilon}", field="epsilon")
        if direction is None:
            if heldout is None:
                raise BadInputError("give the proxy's held-out task data or its gradient direction", field="heldout")
            direction = heldout_gradient(proxy, heldout)
        if not 0.0 <= plausible < 1.0:
            raise BadInputError(f"plausible must be in [0, 1), got {plausible}", field="plausible")
        if keep_entropy_at is not None and not keep_entropy_at > 0:
            raise BadInputError(f"keep_entropy_at is a sampling temperature > 0, got {keep_entropy_at}",
                                field="keep_entropy_at")
        self.strength = float(strength)
        self.keep_entropy_at = keep_entropy_at
        self.epsilon = float(epsilon)
        self.plausible = float(plausible)
        self.direction = direction
        self.plus = _Perturbed(proxy, direction, +epsilon)
        self.minus = _Perturbed(proxy, direction, -epsilon)
        self.proxy_calls = 0
        self._prompt_mask: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the key/value caches and the prompt mask (a new generation starts anyway when
        the ids do not extend)."""
        self.plus.reset()
        self.minus.reset()
        self._prompt_mask = None

    def begin(self, attention_mask: torch.Tensor | None) -> None:
        """Start a generation whose prompt has this attention mask (batch, prompt length; 0 on
        left padding). Tokens generated after the prompt are all attended."""
        self.reset()
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask, dtype=torch.long)
            if mask.dim() != 2:
                raise BadInputError("the attention mask must be (batch, prompt length)", field="attention_mask")
            self._prompt_mask = None if bool(mask.all()) else mask

    def _mask_for(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        prompt = self._prompt_mask
        if prompt is None or prompt.shape[0] != input_ids.shape[0] or prompt.shape[1] > input_ids.shape[1]:
            return None
        done = input_ids.shape[1] - prompt.shape[1]
        return torch.cat([prompt, prompt.new_ones(prompt.shape[0], done)], 1) if done else prompt

    def delta(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Δ for every token of the proxy's vocabulary, at the last position of each row."""
        with torch.no_grad():
            self.proxy_calls += 1
            mask = self._mask_for(input_ids)
            return (self.plus.next_logprobs(input_ids, mask)
                    - self.minus.next_logprobs(input_ids, mask)) / (2 * self.epsilon)

    def shift(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``strength · Δ`` laid over the teacher's vocabulary (zero past the proxy's). With
        ``plausible`` > 0 (a guard for utility: the shift re-ranks what the teacher finds plausible
        instead of inventing tokens), a token the teacher gives less than that fraction of its top
        token's probability gains nothing relative to any plausible token: its shift is at most
        the lowest shift of the plausible tokens, and never above zero."""
        d = self.delta(input_ids)
        out = torch.zeros_like(scores)
        v = min(out.shape[-1], d.shape[-1])
        out[:, :v] = self.strength * d[:, :v].to(scores.dtype)
        if self.plausible > 0:
            keep = self._plausible(scores)
            floor = torch.where(keep, out, torch.full_like(out, math.inf)).min(-1, keepdim=True).values.clamp(max=0)
            out = torch.where(keep, out, torch.minimum(out, floor))
        return out

    def _plausible(self, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), -1)
        return logp >= logp.max(-1, keepdim=True).values + math.log(self.plausible)

    def shaped(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The shaped scores: ``scores + shift``; with ``keep_entropy_at = T`` the shift moves
        probability between continuations without making the answer more or less random (a
        sharper distribution is itself easier to learn from, whichever way it leans):

        * with the plausibility guard, sampling at ``T`` gives every implausible token exactly the
          probability the teacher gives it, and the plausible tokens their total; only how that
          total is divided among them changes, in proportion to ``exp(c · (score + shift) / T)``
          with ``c`` chosen so the division has the teacher's entropy (``tilt_within``);
        * without it, the shifted scores are rescaled to the teacher's entropy (``match_entropy``)."""
        shift = self.shift(input_ids, scores)
        if self.keep_entropy_at is None:
            return scores + shift
        if self.plausible > 0:
            return tilt_within(scores, shift, self._plausible(scores), self.keep_entropy_at)
        return match_entropy(scores, scores + shift, self.keep_entropy_at)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.strength == 0:
            return scores
        return self.shaped(input_ids, scores)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def _entropy_scale(reference: torch.Tensor, z: torch.Tensor, iterations: int = 40) -> torch.Tensor:
    """Per row the ``c > 0`` with entropy(softmax(c · z)) = entropy(softmax(reference)) (bisection on
    ``log c`` in [-8, 8]; the entropy of a softmax falls as its logits are scaled up, so the root is
    unique when it is in range, and the nearer end is taken when it is not)."""
    target = _entropy(reference)
    lo = torch.full(target.shape, -8.0)
    hi = torch.full(target.shape, 8.0)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        too_flat = _entropy(z * mid.exp()[:, None]) > target
        lo = torch.where(too_flat, mid, lo)
        hi = torch.where(too_flat, hi, mid)
    return ((lo + hi) / 2).exp()[:, None]


def match_entropy(reference: torch.Tensor, shifted: torch.Tensor, temperature: float) -> torch.Tensor:
    """``c · shifted`` with ``c > 0`` per row such that ``softmax(c · shifted / T)`` has the entropy of
    ``softmax(reference / T)``."""
    c = _entropy_scale(reference.float() / temperature, shifted.float() / temperature)
    return (shifted.float() * c).to(shifted.dtype)


def tilt_within(scores: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scores that, divided by ``T`` and softmaxed, give each token outside ``keep`` the probability
    ``softmax(scores / T)`` gives it, and divide the remaining mass among the ``keep`` tokens in
    proportion to ``exp(c · (scores + shift) / T)``, ``c`` chosen so that this division has the
    entropy the teacher's own division of it has."""
    t = float(temperature)
    s = scores.float()
    logp = torch.log_softmax(s / t, -1)
    ninf = torch.full_like(s, -math.inf)
    z = torch.where(keep, (s + shift.float()) / t, ninf)
    c = _entropy_scale(torch.where(keep, s / t, ninf), z)
    mass = torch.logsumexp(torch.where(keep, logp, ninf), -1, keepdim=True)
    inside = mass + torch.log_softmax(z * c, -1)
    return (t * torch.where(keep, inside, logp)).to(scores.dtype)


def _total_variation(scores: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.softmax(scores.float(), -1) - torch.softmax(shifted.float(), -1)).abs().sum(-1)


class AnchorPerturbationProcessor:
    """Antidistillation applied only inside the few *anchor* steps of a reasoning trace.

    ``delimiters`` are the token ids that end a step (e.g. newline, ``.``, ``,``); the prompt's
    length is taken from the first call. ``threshold`` is the minimum importance (total variation
    the shift causes at the step's first token) for a step to be perturbed, ``max_anchors`` the
    most steps perturbed per sequence."""

    def __init__(self, shaper: AntidistillationProcessor, delimiters: Sequence[int], *, threshold: float = 0.05,
                 max_anchors: int = 2) -> None:
        if not delimiters:
            raise BadInputError("anchor shaping needs at least one step delimiter token", field="delimiters")
        if not 0 <= threshold <= 1 or max_anchors < 0:
            raise BadInputError("threshold must be in [0, 1] and max_anchors >= 0", field="threshold")
        self.shaper = shaper
        self.delimiters = torch.tensor(sorted(set(int(d) for d in delimiters)), dtype=torch.long)
        self.threshold = float(threshold)
        self.max_anchors = int(max_anchors)
        self._start: int | None = None
        self._in_anchor: torch.Tensor | None = None
        self._used: torch.Tensor | None = None
        self.perturbed_tokens = 0
        self.anchors = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        if self._start is None or self._in_anchor is None or self._in_anchor.shape[0] != rows \
                or input_ids.shape[1] <= self._start:
            self._start = input_ids.shape[1]
            self._in_anchor = torch.zeros(rows, dtype=torch.bool)
            self._used = torch.zeros(rows, dtype=torch.long)
        generated = input_ids.shape[1] - self._start
        step_start = (torch.ones(rows, dtype=torch.bool) if generated == 0
                      else torch.isin(input_ids[:, -1], self.delimiters))
        self._in_anchor = self._in_anchor & ~step_start            # a delimiter ends an anchor step
        candidates = step_start & (self._used < self.max_anchors)
        if not bool(candidates.any() or self._in_anchor.any()) or self.shaper.strength == 0:
            return scores
        shifted = self.shaper.shaped(input_ids, scores)
        importance = _total_variation(scores, shifted)
        new = candidates & (importance >= self.threshold)
        self._used = self._used + new.long()
        self.anchors += int(new.sum())
        self._in_anchor = self._in_anchor | new
        self.perturbed_tokens += int(self._in_anchor.sum())
        return torch.where(self._in_anchor[:, None], shifted, scores)


_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_STEP = re.compile(r"(?<=[.!?])\s+|\n+")


def summarize_steps(reasoning: str, *, keep: int = 1, separator: str | None = None,
                    marker: str | None = None) -> str:
    """A summary of a reasoning trace: its first and last ``keep`` steps, with ``marker`` (default:
    how many steps were left out) between them; with ``keep=0`` only the marker (default: nothing). Steps are split on ``separator`` (default:
    sentence ends and line breaks)."""
    parts = reasoning.split(separator) if separator else _STEP.split(reasoning)
    steps = [s.strip() for s in parts if s and s.strip()]
    joiner = separator or " "
    if keep == 0:
        return "" if marker is None else marker
    if len(steps) <= 2 * keep:
        return joiner.join(steps)
    omitted = len(steps) - 2 * keep
    if marker is None:
        marker = f" … ({omitted} step{'s' if omitted != 1 else ''} summarised) … "
    return joiner.join(steps[:keep]) + marker + joiner.join(steps[-keep:])


def summarize_reasoning(response: Any, *, keep: int = 1) -> Any:
    """Reasoning returned as a summary: in a string, every ``<think>…</think>`` block is replaced by
    its summary; in an OpenAI chat message (a dict), ``reasoning_content`` / ``reasoning`` is
    summarised and ``<think>`` blocks in ``content`` too. Anything else is returned unchanged."""
    if isinstance(response, str):
        return _THINK.sub(lambda m: f"<think>{summarize_steps(m.group(1), keep=keep)}</think>", response)
    if isinstance(response, dict):
        out = dict(response)
        for field in ("reasoning_content", "reasoning"):
            if isinstance(out.get(field), str):
                out[field] = summarize_steps(out[field], keep=keep)
        if isinstance(out.get("content"), str):
            out["content"] = summarize_reasoning(out["content"], keep=keep)
        return out
    return response
