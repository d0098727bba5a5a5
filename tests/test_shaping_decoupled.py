"""Decoupled reasoning (shaping/decoupled.py): the answer after ``</think>`` is the unshaped pass's,
only the reasoning is regenerated, from the first anchor step on, on a real Hugging Face causal LM
with a real tokenizer (a tiny GPT-2 trained here to write ``<think>`` running totals ``</think>``
then the sum), directly and through the model server with ``x-distillguard-shape: decoupled``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.errors import BadInputError
from distillguard.shaping.decoupled import ReasoningFormat, decoupled_generate, perturb_reasoning

NAMES = "abcde"


def _problem(rng) -> tuple[str, str, str]:
    values = rng.integers(0, 10, size=5)
    prompt = "+".join(f"{NAMES[i]}{v}" for i, v in enumerate(values)) + "="
    total, steps = 0, []
    for i in rng.permutation(5):
        total += int(values[i])
        steps.append(f"{NAMES[i]}{values[i]}={total}")
    return prompt, ",".join(steps), str(total)


@pytest.fixture(scope="module")
def reasoner(tmp_path_factory):
    """A character tokenizer (``<think>``/``</think>`` as added, non-special tokens, as reasoning
    models have them) and a 1 × 48 GPT-2 trained for a few seconds on the format."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    chars = list("0123456789+=,abcde\n")
    vocab = {c: i for i, c in enumerate(chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="\n"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="\n", pad_token="\n")
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=48, n_layer=1, n_head=4,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.eos_token_id))
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        texts = ["{}<think>{}</think>{}\n".format(*_problem(rng)) for _ in range(32)]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, ids))
        batch = torch.tensor([i + [tok.eos_token_id] * (width - len(i)) for i in ids])
        labels = torch.tensor([i + [-100] * (width - len(i)) for i in ids])
        loss = model(input_ids=batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("reasoner") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return tok, model, out


def _prompts(tok, n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor([tok(_problem(rng)[0], add_special_tokens=False)["input_ids"] for _ in range(n)])


def _split(text: str) -> tuple[str, str]:
    reasoning, _, answer = text.partition("</think>")
    return reasoning, answer


def test_the_answer_is_the_unshaped_pass_and_only_reasoning_from_an_anchor_on_changes(reasoner):
    tok, model, _ = reasoner
    fmt = ReasoningFormat.from_tokenizer(tok, delimiters=[tok.convert_tokens_to_ids(",")])
    ids = _prompts(tok, 24)
    greedy = {"do_sample": False, "max_new_tokens": 40, "pad_token_id": tok.eos_token_id}
    with torch.no_grad():
        first = model.generate(ids, **greedy)[:, ids.shape[1]:].tolist()
    plain = [tok.decode(r, skip_special_tokens=True) for r in first]
    assert sum("</think>" in p for p in plain) >= 20           # the model writes the format
    rows, stats = perturb_reasoning(model, ids, None, first, fmt, anchors=2, temperature=3.0, seed=0,
                                    gen_kwargs=greedy, end_tokens=[tok.eos_token_id])
    changed = 0
    for before, after in zip(plain, (tok.decode(r, skip_special_tokens=True) for r in rows)):
        if "</think>" not in before:
            assert after == before                               # nothing to decouple: unchanged
            continue
        (r0, a0), (r1, a1) = _split(before), _split(after)
        assert a1 == a0                                          # the user's answer is the unshaped one
        assert r1.startswith("<think>") and r0.startswith("<think>")
        changed += r1 != r0
    assert changed >= 10 and stats.shaped_rows >= 20 and stats.anchors <= 2 * stats.shaped_rows
    # the reasoning pass decodes at most what the first pass had left after the shared prefix
    assert stats.second_pass_tokens <= stats.first_pass_tokens
    again, _ = perturb_reasoning(model, ids, None, first, fmt, anchors=2, temperature=3.0, seed=0,
                                 gen_kwargs=greedy, end_tokens=[tok.eos_token_id])
    assert again == rows                                         # reproducible under its seed
    same, none = perturb_reasoning(model, ids, None, first, fmt, anchors=0, gen_kwargs=greedy)
    assert same == first and none.second_pass_tokens == 0       # strength 0 is the identity


def test_greedy_continuation_after_anchor_follows_the_model(reasoner):
    """Outside anchor steps the reasoning pass is the model's own continuation: with every step an
    anchor at a vanishing temperature (argmax), greedy decoding rewrites the same reasoning."""
    tok, model, _ = reasoner
    fmt = ReasoningFormat.from_tokenizer(tok, delimiters=[tok.convert_tokens_to_ids(",")])
    ids = _prompts(tok, 8, seed=3)
    greedy = {"do_sample": False, "max_new_tokens": 40, "pad_token_id": tok.eos_token_id}
    rows, stats = decoupled_generate(model, ids, None, fmt, anchors=5, temperature=1e-4, seed=0, gen_kwargs=greedy,
                                     end_tokens=[tok.eos_token_id])
    with torch.no_grad():
        first = model.generate(ids, **greedy)[:, ids.shape[1]:].tolist()
    for a, b in zip(rows, first):
        assert tok.decode(a, skip_special_tokens=True) == tok.decode(b, skip_special_tokens=True)
    assert stats.perturbed_tokens > 0


def test_left_padded_batch_keeps_each_rows_answer(reasoner):
    tok, model, _ = reasoner
    fmt = ReasoningFormat.from_tokenizer(tok, delimiters=[tok.convert_tokens_to_ids(",")])
    short = tok("a1+b2+c3+d4+e5=", add_special_tokens=False)["input_ids"]
    longer = tok("9+a1+b2+c3+d4+e5=", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.eos_token_id] * 2 + short, longer])
    mask = torch.tensor([[0, 0] + [1] * len(short), [1] * len(longer)])
    greedy = {"do_sample": False, "max_new_tokens": 40, "pad_token_id": tok.eos_token_id}
    with torch.no_grad():
        first = model.generate(ids, attention_mask=mask, **greedy)[:, ids.shape[1]:].tolist()
    rows, _ = decoupled_generate(model, ids, mask, fmt, anchors=3, temperature=3.0, seed=1, gen_kwargs=greedy,
                                 end_tokens=[tok.eos_token_id])
    for a, b in zip(rows, first):
        a, b = tok.decode(a, skip_special_tokens=True), tok.decode(b, skip_special_tokens=True)
        if "</think>" in b:
            assert _split(a)[1] == _split(b)[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40))
def test_reasoning_spans_of_any_token_sequence(tokens):
    fmt = ReasoningFormat(close=(5, 6), delimiters=frozenset({2}), open=(4,), never=frozenset({0}))
    spans = fmt.spans(tokens)
    if spans is None:
        return
    start, end, steps = spans
    assert tokens[end:end + 2] == [5, 6] and 0 <= start < end
    assert steps[0] == start and all(start < s < end and tokens[s - 1] == 2 for s in steps[1:])
    assert steps == sorted(set(steps))


def test_bad_formats_and_strengths_are_refused(reasoner):
    tok, model, _ = reasoner
    with pytest.raises(BadInputError):
        ReasoningFormat(close=(), delimiters=frozenset({1}))
    with pytest.raises(BadInputError):
        ReasoningFormat(close=(1,), delimiters=frozenset())
    fmt = ReasoningFormat(close=(1,), delimiters=frozenset({2}))
    with pytest.raises(BadInputError):
        perturb_reasoning(model, _prompts(tok, 1), None, [[3, 1]], fmt, anchors=-1)


@pytest.mark.slow
def test_model_server_decouples_on_the_header(reasoner):
    """Through HTTP with the official SDK: greedy answers with and without the header end in the same
    answer; the reasoning differs; an allowlisted (unshaped) request is untouched."""
    import openai

    from distillguard.gateway.server import ServerThread
    from distillguard.serve.hf import HFModelServer
    from distillguard.shaping.serving import Shaper

    tok, _, path = reasoner
    server = HFModelServer(path, keys=None)
    server.shaper = Shaper(None, server.tokenizer, anchors=5, anchor_temperature=3.0, seed=0,
                           step_texts=[","])
    rng = np.random.default_rng(7)
    prompts = [_problem(rng)[0] for _ in range(4)]
    with ServerThread(server) as up:
        client = openai.OpenAI(base_url=up.url + "/v1", api_key="x", max_retries=0)

        def ask(prompt: str, shape: str | None) -> str:
            r = client.completions.create(model="m", prompt=prompt, max_tokens=40, temperature=0,
                                          extra_headers={"x-distillguard-shape": shape} if shape else None)
            return r.choices[0].text
        plain = [ask(p, None) for p in prompts]
        shaped = [ask(p, "decoupled") for p in prompts]
        batch = server.generate_batch(prompts, max_tokens=40, temperature=0, account="a", shape="decoupled")
    closed = [i for i, p in enumerate(plain) if "</think>" in p]
    assert closed
    for i in closed:
        assert _split(shaped[i])[1] == _split(plain[i])[1] == _split(batch[i])[1]
    assert any(_split(shaped[i])[0] != _split(plain[i])[0] for i in closed)
    assert server.shaper.shaped.get("decoupled", 0) >= 8 and server.shaper.decoupled.shaped_rows >= len(closed)
