"""Decoupled reasoning on the shaping lab (``decoupled.py``): the scratchpad ``[…]`` is the reasoning,
a comma ends a step, the answer after ``]`` comes from the teacher's unshaped pass."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from distillguard.shaping import task as T
from distillguard.shaping.decoupled import DecoupledStats, ReasoningFormat, perturb_reasoning


def lab_format(task: T.Task) -> ReasoningFormat:
    return ReasoningFormat(close=(task.ids["]"],), delimiters=frozenset({task.ids[","]}), open=(task.ids["["],),
                           never=frozenset({task.eos}))


def completions(task: T.Task, teacher, rows: np.ndarray, unshaped: list[str], *, anchors: int,
                temperature: float, seed: int, temperature_base: float) -> tuple[list[str], DecoupledStats, float]:
    """The reasoning pass over the unshaped pass's completions ``unshaped`` (same problems ``rows``):
    the completions the user would get, the counts, and the seconds the reasoning pass took."""
    prompts = torch.tensor([task.encode(task.prompt(r)) for r in rows], dtype=torch.long)
    generated = [task.encode(c) for c in unshaped]
    kwargs: dict[str, Any] = {"eos_token_id": task.eos, "pad_token_id": task.eos}
    kwargs.update(do_sample=True, temperature=temperature_base, top_k=0) if temperature_base > 0 else kwargs.update(
        do_sample=False)
    torch.manual_seed(seed)
    start = time.perf_counter()
    out, stats = perturb_reasoning(teacher, prompts, None, generated, lab_format(task), anchors=anchors,
                                   temperature=temperature, seed=seed, gen_kwargs=kwargs, end_tokens=[task.eos])
    seconds = time.perf_counter() - start
    return [task.decode(r).split("\n", 1)[0] + "\n" for r in out], stats, seconds


def invalid(task: T.Task, rows: np.ndarray, texts: list[str]) -> list[int] | None:
    """1 where a checker that re-does the reasoning finds it wrong (a trace that does not add up, or
    whose answer is not its last total); None for a task without a checker."""
    check = getattr(task, "valid_trace", None)
    return None if check is None else [int(not check(r, c)) for r, c in zip(rows, texts)]


def verify_auc(shaped: list[int], unshaped: list[int]) -> float:
    """AUC of the checker's verdict (1: the reasoning does not add up) telling shaped answers from
    unshaped ones."""
    from sklearn.metrics import roc_auc_score

    y = np.array([1] * len(shaped) + [0] * len(unshaped))
    return float(roc_auc_score(y, np.array(shaped + unshaped, dtype=float)))


def serving_cost(task: T.Task, teacher, *, anchors: int, temperature: float, n: int = 40, repeats: int = 5,
                 temperature_base: float = 0.7) -> dict[str, float]:
    """Milliseconds per returned token as the model server answers (one request at a time): the
    unshaped ``generate`` vs both passes of decoupled reasoning, on the same ``n`` problems. The two
    are interleaved request by request and each request's fastest of ``repeats`` is kept (robust on
    a shared machine). Also the decoded-token ratio (both passes' decoded tokens over the unshaped
    pass's, first repeat)."""
    from distillguard.shaping.decoupled import decoupled_generate

    rows = task.problems(n, np.random.default_rng(7))
    fmt = lab_format(task)
    kwargs: dict[str, Any] = {"eos_token_id": task.eos, "pad_token_id": task.eos, "do_sample": True,
                              "temperature": temperature_base, "top_k": 0,
                              "max_new_tokens": task.max_len - task.prompt_len}
    best = {"unshaped": np.full(n, np.inf), "decoupled": np.full(n, np.inf)}
    decoded = [0, 0]
    for rep in range(repeats):
        for i, row in enumerate(rows):
            ids = torch.tensor([task.encode(task.prompt(row))])
            for name in best:
                torch.manual_seed(1000 * rep + i)
                start = time.perf_counter()
                if name == "unshaped":
                    with torch.no_grad():
                        tokens = int(teacher.generate(ids, attention_mask=torch.ones_like(ids), **kwargs).shape[1]
                                     - ids.shape[1])
                else:
                    out, stats = decoupled_generate(teacher, ids, None, fmt, anchors=anchors, temperature=temperature,
                                                    seed=1000 * rep + i, gen_kwargs=kwargs, end_tokens=[task.eos])
                    tokens = len(out[0])
                    if rep == 0:
                        decoded[0] += stats.first_pass_tokens
                        decoded[1] += stats.first_pass_tokens + stats.second_pass_tokens
                best[name][i] = min(best[name][i], 1000 * (time.perf_counter() - start) / max(1, tokens))
    un, dc = float(best["unshaped"].mean()), float(best["decoupled"].mean())
    return {"unshaped_ms_per_token": round(un, 4), "decoupled_ms_per_token": round(dc, 4),
            "decoupled_vs_unshaped": round(dc / un, 2),
            "decoded_tokens_vs_unshaped": round(decoded[1] / max(1, decoded[0]), 2)}
