"""The watermarked model server over HTTP, alone and behind the gateway: each account's answers
carry its own cohort's key, and the detector names that cohort."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from distillguard.gateway.server import ServerThread
from distillguard.lab.tinylm import build_model
from distillguard.serve.hf import HFModelServer
from distillguard.watermark.detect import TextRecord, detect
from distillguard.watermark.keys import KeySet
from gateway_support import running_gateway

KEYS = KeySet(secret=b"serve-test-secret-0123456789", cohorts=6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    build_model(out, seconds=2, vocab_size=512, max_chars=150_000)
    return out


def _pooled_cohort(texts: list[str], tokenizer, vocab: int) -> dict:
    records = [TextRecord(i + 1, f"t{i}", text=t) for i, t in enumerate(texts)]
    return detect(records, KEYS, vocab, tokenizer)["cohorts"][0]


def test_answers_carry_the_accounts_cohort_watermark(model_dir):
    server = HFModelServer(model_dir, keys=KEYS)
    vocab = server.model.config.vocab_size
    accounts = ["alice", "bob"]
    assert KEYS.cohort_of("alice") != KEYS.cohort_of("bob")
    with ServerThread(server) as up:
        texts = {a: [] for a in accounts}
        for account in accounts:
            for i in range(4):
                r = httpx.post(up.url + "/v1/chat/completions", timeout=60, headers={"x-distillguard-account": account},
                               json={"messages": [{"role": "user", "content": f"Tell me about rivers {i}"}],
                                     "max_tokens": 80, "temperature": 1.0})
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
                texts[account].append(r.json()["choices"][0]["message"]["content"])
        bad = httpx.post(up.url + "/v1/chat/completions", json={"messages": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    for account in accounts:
        top = _pooled_cohort(texts[account], server.tokenizer, vocab)
        assert top["cohort"] == KEYS.cohort_of(account) and top["p_value_corrected"] < 1e-6, (account, top)


def test_through_the_gateway_the_account_reaches_the_model(model_dir, tmp_path):
    server = HFModelServer(model_dir, keys=KEYS)
    with ServerThread(server) as up, running_gateway(tmp_path, up.url) as (gw, url):
        answers = []
        for i in range(4):
            r = httpx.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-bob-00002"}, timeout=60,
                           json={"model": "tiny", "messages": [{"role": "user", "content": f"Write about trains {i}"}],
                                 "max_tokens": 80})
            assert r.status_code == 200
            answers.append(r.json()["choices"][0]["message"]["content"])
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-bob-00002"}, timeout=60,
                       json={"model": "tiny", "stream": True, "max_tokens": 20,
                             "messages": [{"role": "user", "content": "stream it"}]})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    top = _pooled_cohort(answers, server.tokenizer, server.model.config.vocab_size)
    assert top["cohort"] == KEYS.cohort_of("bob") and top["p_value_corrected"] < 1e-6


def test_unwatermarked_server_output_is_not_detected(model_dir):
    server = HFModelServer(model_dir, keys=None)
    texts = [server.generate(f"User: hello {i}\nAssistant:", max_tokens=80, temperature=1.0, top_p=1.0,
                             account="alice")[0] for i in range(4)]
    top = _pooled_cohort(texts, server.tokenizer, server.model.config.vocab_size)
    assert top["p_value_corrected"] > 1e-3
    assert np.isfinite(top["z"])


def test_cached_watermark_processor_gives_the_librarys_tokens(model_dir):
    """The server reuses one transformers processor per cohort; generate() with a fresh
    WatermarkingConfig must sample exactly the same tokens under the same seed."""
    import time

    import torch
    from transformers import WatermarkingConfig

    server = HFModelServer(model_dir, keys=KEYS)
    prompt = "User: Tell me about mountains.\nAssistant:"
    ids = server.tokenizer(prompt, return_tensors="pt")["input_ids"]
    for account in ("alice", "bob"):
        cohort = KEYS.cohort_of(account)
        for seed in (0, 1):
            torch.manual_seed(seed)
            text, _, n, got_cohort = server.generate(prompt, max_tokens=40, temperature=1.0, top_p=0.9, account=account)
            torch.manual_seed(seed)
            ref = server.model.generate(ids, max_new_tokens=40, do_sample=True, temperature=1.0, top_p=0.9,
                                        pad_token_id=server.tokenizer.eos_token_id,
                                        watermarking_config=WatermarkingConfig(**KEYS.watermarking_config(cohort)))
            assert got_cohort == cohort and n > 0
            assert text == server.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(server._processors) == 2          # built once per cohort, then reused
    config = server.watermark_config(KEYS.cohort_of("alice"))
    start = time.perf_counter()
    processors = {id(config.construct_processor(512, "cpu")) for _ in range(20)}
    assert len(processors) == 1 and time.perf_counter() - start < 0.05


def test_batched_generation_is_watermarked_for_the_account(model_dir):
    server = HFModelServer(model_dir, keys=KEYS)
    texts = server.generate_batch([f"User: Tell me about lakes {i}\nAssistant:" for i in range(6)] + ["x" * 3000],
                                  max_tokens=60, account="carol")
    assert len(texts) == 7 and all(isinstance(t, str) for t in texts)
    top = _pooled_cohort(texts, server.tokenizer, server.model.config.vocab_size)
    assert top["cohort"] == KEYS.cohort_of("carol") and top["p_value_corrected"] < 1e-6, top
    assert server.generate_batch([], max_tokens=10, account="carol") == []


def test_named_cohort_from_the_gateway_header_is_used_and_named(model_dir):
    """The gateway routes a distrusted account to the named cohort 'watch': its answers carry the
    'watch' key and detection names it; the gateway's default 'cohort-N' header is ignored."""
    server = HFModelServer(model_dir, keys=KEYS)
    assert KEYS.named == ("watch",) and KEYS.total == KEYS.cohorts + 1
    texts = {"watch": [], "cohort-3": []}
    with ServerThread(server) as up:
        for header in texts:
            for i in range(4):
                r = httpx.post(up.url + "/v1/chat/completions", timeout=60,
                               headers={"x-distillguard-account": "mallory", "x-distillguard-cohort": header},
                               json={"messages": [{"role": "user", "content": f"Tell me about deserts {i}"}],
                                     "max_tokens": 80})
                assert r.status_code == 200
                texts[header].append(r.json()["choices"][0]["message"]["content"])
    vocab = server.model.config.vocab_size
    watch = _pooled_cohort(texts["watch"], server.tokenizer, vocab)
    assert watch["label"] == "watch" and watch["cohort"] == KEYS.cohort_index("watch")
    assert watch["p_value_corrected"] < 1e-6
    ignored = _pooled_cohort(texts["cohort-3"], server.tokenizer, vocab)
    assert ignored["cohort"] == KEYS.cohort_of("mallory") and ignored["label"] == str(KEYS.cohort_of("mallory"))


def test_cached_green_rows_equal_the_librarys_processor_and_stay_bounded(model_dir):
    """Direct check of the served KGW processor against transformers' own on 300 contexts: the
    same scores exactly, and the row cache never exceeds its bound."""
    import torch
    from transformers import WatermarkingConfig

    server = HFModelServer(model_dir, keys=KEYS)
    vocab = server.model.config.vocab_size
    ours = server.watermark_config(1).construct_processor(vocab, "cpu")
    library = WatermarkingConfig(**KEYS.watermarking_config(1)).construct_processor(vocab, "cpu")
    assert type(ours) is not type(library) and isinstance(ours, type(library))
    ours.CACHE_BYTES = 1                                     # bound: the 64-row minimum
    gen = torch.Generator().manual_seed(0)
    for prev in list(range(300)) + [5, 7, 5]:
        ids = torch.tensor([[3, prev], [prev, (prev * 7) % vocab]])
        scores = torch.randn(2, vocab, generator=gen)
        scores[0, :10] = float("-inf")                       # as after top-p
        assert torch.equal(ours(ids, scores), library(ids, scores))
        assert len(ours._rows) <= 64
