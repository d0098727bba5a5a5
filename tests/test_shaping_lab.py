"""The shaping lab's tasks and the entropy-keeping shift: traces are checked for validity, the
shift only re-divides the teacher's plausible mass, and a tiny lab run produces every condition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.errors import BadInputError
from distillguard.shaping import lab
from distillguard.shaping import task as T
from distillguard.shaping.processors import (AntidistillationProcessor, _entropy, heldout_gradient, match_entropy,
                                             tilt_within)


def test_addition_task_keeps_its_format():
    a = T.ADDITION
    assert a.prompt([47, 85]) == "47+85="
    assert a.trace([47, 85]) == "[7+5=12,4+8+1=13]132\n"
    assert a.answer_of("[7+5=12,4+8+1=13]132\n") == 132
    assert a.answer_of("[7+5=12]1320\n") is None          # too many digits for a 2-digit sum


def test_multisum_traces_are_valid_in_every_order_and_errors_are_caught():
    m = T.MULTISUM
    rng = np.random.default_rng(3)
    rows = m.problems(200, rng)
    orders = set()
    for row in rows:
        text = m.trace(row, rng)
        assert m.valid_trace(row, text) and m.answer_of(text) == m.solution(row)
        assert len(m.prompt(row) + text) <= m.max_len
        orders.add("".join(step[0] for step in text[1:].split("]")[0].split(",")))
    assert len(orders) > 60                                # many of the 120 orders occur
    row = [3, 7, 5, 2, 9]
    assert m.prompt(row) == "a3+b7+c5+d2+e9="
    assert m.trace(row) == "[a3=3,b7=10,c5=15,d2=17,e9=26]26\n"
    assert m.valid_trace(row, "[e9=9,a3=12,c5=17,d2=19,b7=26]26\n")
    assert not m.valid_trace(row, "[e9=9,a3=12,c5=17,d2=19,e9=28]28\n")     # an operand used twice
    assert not m.valid_trace(row, "[e9=9,a3=12,c5=17,d2=19,b7=25]25\n")     # a wrong running total
    assert not m.valid_trace(row, "[e9=9,a4=13,c5=18,d2=20,b7=27]27\n")     # an operand copied wrong
    assert not m.valid_trace(row, "[e9=9,a3=12,c5=17,d2=19]19\n")           # one left out
    assert not m.valid_trace(row, "[e9=9,a3=12,c5=17,d2=19,b7=26]27\n")     # answer not the total


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_task_parsers_take_any_text(text):
    for task in (T.ADDITION, T.MULTISUM):
        answer = task.answer_of(text)
        assert answer is None or answer >= 0
    assert T.MULTISUM.valid_trace([1, 2, 3, 4, 5], text) in (True, False)


def test_unknown_task_is_refused():
    with pytest.raises(BadInputError):
        T.get("multiplication")


def _plausible(scores, share):
    logp = torch.log_softmax(scores, -1)
    return logp >= logp.max(-1, keepdim=True).values + math.log(share)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.3, 1.5), st.floats(0.0, 20.0))
def test_tilt_keeps_implausible_mass_and_the_plausible_entropy(seed, temperature, strength):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 12, generator=g) * 3
    shift = strength * torch.randn(4, 12, generator=g)
    keep = _plausible(scores, 0.1)
    out = tilt_within(scores, shift, keep, temperature)
    before, after = torch.softmax(scores / temperature, -1), torch.softmax(out / temperature, -1)
    assert torch.allclose(before[~keep], after[~keep], atol=1e-6)            # implausible tokens: unchanged
    inside = lambda p: torch.where(keep, p, torch.zeros_like(p)) / (p * keep).sum(-1, keepdim=True)  # noqa: E731
    h = lambda q: -(torch.where(q > 0, q * q.clamp_min(1e-30).log(), torch.zeros_like(q))).sum(-1)  # noqa: E731
    assert torch.allclose(h(inside(before)), h(inside(after)), atol=1e-3)     # same randomness among plausible


def test_tilt_moves_mass_towards_the_shift_and_zero_shift_is_identity():
    scores = torch.tensor([[2.0, 2.0, 2.0, -5.0]])
    keep = _plausible(scores, 0.2)
    same = tilt_within(scores, torch.zeros_like(scores), keep, 0.7)
    assert torch.allclose(torch.softmax(same / 0.7, -1), torch.softmax(scores / 0.7, -1), atol=1e-6)
    peaked = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    tilted = torch.softmax(tilt_within(peaked, torch.tensor([[0.0, 0.0, 4.0, 0.0]]), _plausible(peaked, 0.05), 0.7)
                           / 0.7, -1)
    assert int(tilted[0, :3].argmax()) == 2                                  # the favoured token leads now
    m = match_entropy(peaked, peaked + torch.tensor([[0.0, 0.0, 9.0, 0.0]]), 0.7)
    assert abs(float(_entropy(m / 0.7) - _entropy(peaked / 0.7))) < 1e-3


@pytest.fixture(scope="module")
def multisum_proxy():
    task = T.MULTISUM
    proxy = T.make_model(task, n_layer=1, n_embd=32, seed=1).eval()
    rng = np.random.default_rng(0)
    held = [task.prompt(r) + task.trace(r, rng) for r in task.problems(16, rng)]
    return task, proxy, heldout_gradient(proxy, [T.batch_tensors(task, held)])


def test_entropy_keeping_processor_only_redivides_plausible_mass(multisum_proxy):
    task, proxy, direction = multisum_proxy
    shaper = AntidistillationProcessor(proxy, strength=5.0, direction=direction, plausible=0.2, keep_entropy_at=0.7)
    ids = torch.tensor([task.encode("a3+b7+c5+d2+e9=["), task.encode("a1+b1+c4+d8+e0=[")])
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, task.vocab, generator=g)
    scores[:, task.ids["a"]:task.ids["e"] + 1] += 6.0                       # five valid first steps
    out = shaper(ids, scores)
    keep = _plausible(scores, 0.2)
    before, after = torch.softmax(scores / 0.7, -1), torch.softmax(out / 0.7, -1)
    assert torch.allclose(before[~keep], after[~keep], atol=1e-6)
    assert (before - after).abs().max() > 1e-3                               # it does move something
    with pytest.raises(BadInputError):
        AntidistillationProcessor(proxy, strength=1.0, direction=direction, keep_entropy_at=0.0)


@pytest.mark.slow
def test_tiny_lab_run_on_multisum_gives_every_condition(tmp_path):
    result = lab.run(task=T.MULTISUM, seeds=1, n_traces=24, student_steps=3, teacher_steps=3, proxy_steps=3,
                     strengths=(0.0, 1.0), temperatures=(1.0,), keep_entropy=True, test_problems=16,
                     modes=("temperature", "antidistillation", "antidistillation-flipped", "summary"),
                     teacher_dir=str(tmp_path / "teacher"))
    assert result["task"] == "multisum" and result["keep_entropy"] is True
    modes = {(r["mode"], r["level"]) for r in result["rows"]}
    assert modes == {("unshaped", 0.0), ("temperature", 1.0), ("antidistillation", 1.0),
                     ("antidistillation-flipped", 1.0), ("summary", 1.0)}
    for r in result["rows"]:
        assert len(r["completions"]) == 24 and 0.0 <= r["student_accuracy"] <= 1.0
    summary = lab.summarize(result)
    assert {s["mode"] for s in summary} >= {"unshaped", "antidistillation-flipped"}
    assert "antidistillation-flipped" in lab.format_table(summary)
    # the saved teacher is for multisum: loading it for the addition task is refused
    with pytest.raises(BadInputError):
        lab.teacher_from(str(tmp_path / "teacher"), task=T.ADDITION)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789+=,[]\nabcde", max_size=50))
def test_summary_of_any_completion_keeps_its_answer(text):
    out = lab.summary_of(text)
    head, _, rest = text.partition("[")
    if "]" in rest:
        assert out == head + "[]" + rest.split("]", 1)[1]     # the scratchpad emptied, the answer kept
    else:
        assert out == text


def test_sequence_delta_is_the_sum_of_the_per_token_deltas(multisum_proxy):
    task, proxy, direction = multisum_proxy
    texts = ["a3+b7+c5+d2+e9=[e9=9,a3=12,c5=17,d2=19,b7=26]26\n", "a3+b7+c5+d2+e9=[a3=3,b7=10]10\n"]
    got = lab.sequence_delta(task, proxy, direction, texts)
    shaper = AntidistillationProcessor(proxy, strength=1.0, direction=direction)
    for text, value in zip(texts, got):
        ids = task.encode(text)
        total = 0.0
        for i in range(task.prompt_len, len(ids)):
            shaper.reset()
            total += float(shaper.delta(torch.tensor([ids[:i]]))[0, ids[i]])
        assert abs(total - float(value)) < 1e-3 * max(1.0, abs(total))


def test_selection_returns_the_sample_the_direction_rates_highest(multisum_proxy):
    task, proxy, direction = multisum_proxy
    teacher = T.make_model(task, n_layer=1, n_embd=32, seed=5).eval()
    rows = task.problems(6, np.random.default_rng(1))
    picked = {sign: lab.select_by_proxy(task, teacher, proxy, direction, sign, rows, k=3, seed=0) for sign in (1, -1)}
    samples = [T.generate(task, teacher, rows, temperature=lab.BASE_TEMPERATURE, seed=10_000 + j) for j in range(3)]
    for i, row in enumerate(rows):
        options = [s[i] for s in samples]
        scores = lab.sequence_delta(task, proxy, direction, [task.prompt(row) + c for c in options])
        assert picked[1][i] == options[int(np.argmax(scores))]
        assert picked[-1][i] == options[int(np.argmin(scores))]


@pytest.mark.slow
def test_tiny_lab_run_with_decoupled_reasoning_keeps_the_unshaped_answers(tmp_path):
    from distillguard.shaping import lab_decoupled

    result = lab.run(task=T.MULTISUM, seeds=1, first_seed=3, n_traces=24, student_steps=3, teacher_steps=3,
                     proxy_steps=3, strengths=(0.0,), temperatures=(), test_problems=16, modes=("decoupled",),
                     anchor_counts=(0, 2), anchor_temperature=2.0, teacher_dir=str(tmp_path / "teacher"))
    rows = {(r["mode"], r["level"]): r for r in result["rows"]}
    assert set(rows) == {("unshaped", 0.0), ("decoupled", 0.0), ("decoupled", 2.0)}
    assert all(r["seed"] == 3 for r in rows.values())
    base = rows[("unshaped", 0.0)]
    assert rows[("decoupled", 0.0)]["completions"] == base["completions"]        # strength 0: identity
    shaped = rows[("decoupled", 2.0)]
    pairs = T.MULTISUM.problems(24, np.random.default_rng(3))
    for a, b in zip(shaped["completions"], base["completions"]):
        if "]" in b and b.startswith("["):
            assert a.split("]", 1)[1] == b.split("]", 1)[1]                   # the unshaped answer
    assert shaped["teacher_accuracy"] == base["teacher_accuracy"]
    assert shaped["invalid"] == lab_decoupled.invalid(T.MULTISUM, pairs, shaped["completions"])
    assert 1.0 <= shaped["decoded_vs_unshaped"] <= 2.0
    summary = {s["mode"] + str(s["level"]): s for s in lab.summarize(result)}
    assert summary["decoupled2.0"]["verify_auc"] is not None and "check AUC" in lab.format_table(list(summary.values()))
