"""Shaping processors: they change the logits as specified, are deterministic, and keep the watermark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList, WatermarkLogitsProcessor

from distillguard.errors import BadInputError
from distillguard.shaping.processors import (AnchorPerturbationProcessor, AntidistillationProcessor,
                                             heldout_gradient, summarize_reasoning, summarize_steps)
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import KGWDetector

VOCAB = 300


def tiny(seed: int, *, n_embd: int = 32, n_layer: int = 1, vocab: int = VOCAB) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).eval()


@pytest.fixture(scope="module")
def proxy_and_held():
    proxy = tiny(1)
    g = torch.Generator().manual_seed(7)
    held = [torch.randint(1, VOCAB, (4, 16), generator=g) for _ in range(2)]
    return proxy, held


def test_delta_is_the_directional_derivative_of_the_proxy_log_probability(proxy_and_held):
    """Δ(x) equals <g, ∇θ log p(x | ctx)> computed by autograd, g the unit held-out gradient."""
    proxy, held = proxy_and_held
    direction = heldout_gradient(proxy, held)
    assert abs(sum(float((d.double() ** 2).sum()) for d in direction) - 1.0) < 1e-6
    shaper = AntidistillationProcessor(proxy, strength=1.0, direction=direction, epsilon=1e-2)
    ctx = torch.tensor([[5, 17, 42, 9, 100]])
    delta = shaper.delta(ctx)[0]
    params = [p for p in proxy.parameters() if p.requires_grad]
    for token in (3, 77, 250):
        proxy.zero_grad()
        with torch.enable_grad():
            torch.log_softmax(proxy(input_ids=ctx).logits[0, -1], -1)[token].backward()
        exact = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))
        assert delta[token].item() == pytest.approx(exact, rel=0.05, abs=1e-4)
    proxy.zero_grad()
    # the held-out gradient points where the held-out loss rises: a step along it raises the loss
    with torch.no_grad():
        before = float(proxy(input_ids=held[0], labels=held[0]).loss)
        assert float(shaper.plus.model(input_ids=held[0], labels=held[0]).loss) > before


def test_processor_adds_strength_times_delta_and_zero_strength_is_identity(proxy_and_held):
    proxy, held = proxy_and_held
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    scores = torch.randn(2, VOCAB + 4)          # a teacher vocabulary padded past the proxy's
    weak = AntidistillationProcessor(proxy, strength=0.5, heldout=held)
    strong = AntidistillationProcessor(proxy, strength=2.0, direction=weak.direction)
    d = weak.delta(ids)
    out_weak, out_strong = weak(ids, scores.clone()), strong(ids, scores.clone())
    assert torch.allclose(out_weak[:, :VOCAB], scores[:, :VOCAB] + 0.5 * d, atol=1e-5)
    assert torch.allclose(out_strong[:, :VOCAB] - scores[:, :VOCAB], 4 * (out_weak[:, :VOCAB] - scores[:, :VOCAB]),
                          atol=1e-4)
    assert torch.equal(out_weak[:, VOCAB:], scores[:, VOCAB:])
    assert not torch.allclose(out_weak, scores)
    off = AntidistillationProcessor(proxy, strength=0.0, direction=weak.direction)
    assert torch.equal(off(ids, scores), scores)
    scores[0, 7] = -float("inf")                 # masked tokens stay masked
    assert weak(ids, scores)[0, 7] == -float("inf")


def test_cached_incremental_delta_equals_a_fresh_forward(proxy_and_held):
    proxy, held = proxy_and_held
    cached = AntidistillationProcessor(proxy, strength=1.0, heldout=held)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    first = cached.delta(ids)
    longer = torch.cat([ids, torch.tensor([[9, 2]])], 1)         # two tokens later (anchor mode skips steps)
    incremental = cached.delta(longer)
    fresh = AntidistillationProcessor(proxy, strength=1.0, direction=cached.direction).delta(longer)
    assert torch.allclose(incremental, fresh, atol=1e-4)
    assert not torch.allclose(first, incremental)
    other = torch.tensor([[8, 8, 8, 8, 8, 8, 8]])                 # not an extension: recomputed from scratch
    assert torch.allclose(cached.delta(other),
                          AntidistillationProcessor(proxy, strength=1.0, direction=cached.direction).delta(other),
                          atol=1e-4)


def _generate(model, processors, seed: int, n: int = 40, prompt=(11, 12, 13)):
    torch.manual_seed(seed)
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, max_new_tokens=n,
                             min_new_tokens=n, logits_processor=LogitsProcessorList(processors), pad_token_id=0)
    return out[0, ids.shape[1]:].numpy()


def test_shaped_generation_is_deterministic_under_seed_and_differs_from_unshaped(proxy_and_held):
    proxy, held = proxy_and_held
    teacher = tiny(2, n_embd=48, n_layer=2)
    shaper = AntidistillationProcessor(proxy, strength=20.0, heldout=held)
    a, b = _generate(teacher, [shaper], 3), _generate(teacher, [shaper], 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _generate(teacher, [], 3))


def test_shaping_composes_with_the_kgw_watermark(proxy_and_held):
    """Shaping first, transformers' KGW processor after it: the cohort's key still detects, others do not."""
    proxy, held = proxy_and_held
    teacher = tiny(3, n_embd=48, n_layer=2)
    keys = KeySet(secret=b"s" * 32, cohorts=4)
    cohort = 2
    shaper = AntidistillationProcessor(proxy, strength=5.0, heldout=held)
    texts = []
    for seed in range(4):
        wm = WatermarkLogitsProcessor(vocab_size=VOCAB, device="cpu", **keys.watermarking_config(cohort))
        shaper.reset()
        texts.append(_generate(teacher, [shaper, wm], seed, n=50, prompt=(20 + seed, 30, 40)))
    detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], VOCAB, keys.greenlist_ratio)
    scores = [detector.score_pooled(texts, c) for c in range(keys.total)]
    assert scores[cohort].p_value < 1e-6
    assert all(s.p_value > 1e-3 for c, s in enumerate(scores) if c != cohort)
    assert shaper.proxy_calls >= 4 * 50


def test_anchor_processor_perturbs_only_a_bounded_number_of_steps(proxy_and_held):
    proxy, held = proxy_and_held
    shaper = AntidistillationProcessor(proxy, strength=50.0, heldout=held)
    delim = 10
    anchor = AnchorPerturbationProcessor(shaper, [delim], threshold=0.0, max_anchors=1)
    prompt = [1, 2, 3]
    ids = torch.tensor([prompt])
    scores = torch.zeros(1, VOCAB)
    changed = []
    # step 1: tokens 4,5 then a delimiter; step 2: 6,7, delimiter; step 3: 8
    for nxt in [None, 4, 5, delim, 6, 7, delim, 8]:
        if nxt is not None:
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        changed.append(not torch.equal(anchor(ids, scores.clone()), scores))
    # the first step is the anchor (threshold 0), perturbed until its delimiter; nothing after
    assert changed == [True, True, True, False, False, False, False, False]
    assert anchor.anchors == 1 and anchor.perturbed_tokens == 3
    none = AnchorPerturbationProcessor(shaper, [delim], threshold=1.0, max_anchors=3)
    assert torch.equal(none(torch.tensor([prompt]), scores.clone()), scores)
    with pytest.raises(BadInputError):
        AnchorPerturbationProcessor(shaper, [])


def test_bad_parameters_are_refused(proxy_and_held):
    proxy, held = proxy_and_held
    with pytest.raises(BadInputError):
        AntidistillationProcessor(proxy, strength=-1.0, heldout=held)
    with pytest.raises(BadInputError):
        AntidistillationProcessor(proxy, strength=1.0)
    with pytest.raises(BadInputError):
        heldout_gradient(proxy, [])


def test_summary_post_processor():
    text = "<think>First add the units. Then carry the one.\nThen the tens. Finally the hundreds.</think>632"
    out = summarize_reasoning(text)
    assert out.startswith("<think>First add the units.") and out.endswith("Finally the hundreds.</think>632")
    assert "2 steps summarised" in out and "carry the one" not in out
    msg = {"role": "assistant", "content": "632", "reasoning_content": "a. b. c. d. e."}
    assert summarize_reasoning(msg)["reasoning_content"] == "a. … (3 steps summarised) … e."
    assert summarize_reasoning(msg)["content"] == "632"
    assert summarize_steps("7+5=12,8+4+1=13,2+3+1=6", separator=",", marker=",") == "7+5=12,2+3+1=6"
    assert summarize_reasoning(42) == 42


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.text(max_size=200))
def test_summary_keeps_text_outside_reasoning(outside, inside):
    inside = inside.replace("</think>", "")
    outside = outside.replace("<think>", "").replace("</think>", "")
    out = summarize_reasoning(f"{outside}<think>{inside}</think>{outside}")
    assert out.startswith(outside + "<think>") and out.endswith("</think>" + outside)
    assert len(out) <= len(outside) * 2 + len(inside) + 60


def test_left_padded_batch_gets_the_same_delta_as_each_row_alone(proxy_and_held):
    """A batch left-padded to a common width (as batched ``generate`` builds it), with the prompt's
    attention mask given by ``begin``: every row's Δ, on the prompt and on later (cached) steps,
    equals that row's Δ computed alone without padding."""
    proxy, held = proxy_and_held
    batched = AntidistillationProcessor(proxy, strength=1.0, heldout=held)
    alone = AntidistillationProcessor(proxy, strength=1.0, direction=batched.direction)
    rows = [[5, 17, 42, 9, 100], [7, 3], [250, 1, 2, 3]]
    pad = 0
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batched.begin(mask)
    steps = [ids]
    for extra in ([[11], [12], [13]], [[21], [22], [23]], [[31], [32], [33]]):
        steps.append(torch.cat([steps[-1], torch.tensor(extra)], 1))
    for step in steps:
        got = batched.delta(step)
        for i, r in enumerate(rows):
            alone.reset()
            want = alone.delta(step[i:i + 1, width - len(r):])[0]
            assert torch.allclose(got[i], want, atol=1e-4), (i, step.shape)
    unmasked = AntidistillationProcessor(proxy, strength=1.0, direction=batched.direction)
    assert not torch.allclose(unmasked.delta(steps[-1])[1], got[1], atol=1e-4)   # padding matters without the mask
    with pytest.raises(BadInputError):
        batched.begin(torch.ones(3))


def test_plausibility_guard_never_lets_an_implausible_token_gain_on_a_plausible_one(proxy_and_held):
    """With the guard, the shift may reorder the tokens the teacher finds plausible, but a token
    below the threshold never gains relative to any plausible token, even when the shift pushes
    the plausible ones down."""
    proxy, held = proxy_and_held
    guarded = AntidistillationProcessor(proxy, strength=40.0, heldout=held, plausible=0.2)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, VOCAB, generator=g) * 3
    out = guarded(ids, scores.clone())
    change = out - scores
    logp = torch.log_softmax(scores, -1)
    keep = logp >= logp.max(-1, keepdim=True).values + np.log(0.2)
    for row in range(3):
        plausible, other = change[row][keep[row]], change[row][~keep[row]]
        assert plausible.numel() >= 1 and other.numel() > 0
        assert float(other.max()) <= min(0.0, float(plausible.min())) + 1e-5
    assert not torch.allclose(change[keep], torch.zeros_like(change[keep]))      # plausible tokens are reordered
