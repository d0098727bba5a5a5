"""SynthID-Text: generation with transformers' processor per cohort, detection with exact p-values
on the library's own n-gram hash, the cohort named, clean text and fresh keys not flagged."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from distillguard.errors import BadInputError
from distillguard.lab.tinylm import build_model
from distillguard.serve.hf import HFModelServer
from distillguard.watermark.detect import TextRecord, detect
from distillguard.watermark.keys import KeySet
from distillguard.watermark.synthid import SynthIDDetector

KEYS = KeySet(secret=b"synthid-test-secret-0123456789", cohorts=5, scheme="synthid")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-synthid") / "model"
    build_model(out, seconds=2, vocab_size=512, max_chars=150_000)
    return out


def test_positions_follow_the_librarys_hash_and_repetition_mask():
    det = SynthIDDetector(KEYS, 512)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=300)          # a small alphabet: many repeated contexts
    ids[100:140] = ids[0:40]                     # and a copied stretch
    proc = det.processors[2]
    t = torch.from_numpy(ids)[None]
    g_lib = proc.compute_g_values(t)[0].numpy()                       # (T - n + 1, depth)
    mask = proc.compute_context_repetition_mask(t)[0].numpy().astype(bool)
    keys_lib = proc.compute_ngram_keys(t.unfold(1, KEYS.ngram_len, 1))[0].numpy() % det.table.size
    expected = np.unique(keys_lib[mask])
    got = det._positions(ids, 2)
    assert np.array_equal(got, expected)
    assert np.array_equal(det.table[keys_lib[mask]], g_lib[mask].astype(bool))
    assert 0.49 < det.ratio < 0.51


def test_served_synthid_text_names_the_cohort_and_clean_text_does_not(model_dir):
    wm = HFModelServer(model_dir, keys=KEYS)
    clean = HFModelServer(model_dir, keys=None)
    vocab = wm.model.config.vocab_size
    prompts = [f"User: Tell me about forests {i}\nAssistant:" for i in range(6)]
    torch.manual_seed(0)
    marked = wm.generate_batch(prompts, max_tokens=100, account="dave")
    plain = clean.generate_batch(prompts, max_tokens=100, account="dave")
    res = detect([TextRecord(i + 1, f"w{i}", text=t) for i, t in enumerate(marked)], KEYS, vocab, wm.tokenizer)
    assert res["scheme"] == "synthid"
    top = res["cohorts"][0]
    assert top["cohort"] == KEYS.cohort_of("dave") and top["p_value_corrected"] < 1e-6, top
    assert sum(t["p_value"] < 0.05 for t in res["texts"]) >= 3          # half the single texts (20-130 tokens) too
    res_clean = detect([TextRecord(i + 1, f"c{i}", text=t) for i, t in enumerate(plain)], KEYS, vocab, wm.tokenizer)
    assert res_clean["cohorts"][0]["p_value_corrected"] > 0.01
    # The same text scored as KGW is not mistaken for a KGW watermark.
    assert detect([TextRecord(1, "w", text=" ".join(marked))], KEYS.with_scheme("kgw"), vocab,
                  wm.tokenizer)["cohorts"][0]["p_value_corrected"] > 0.001


def test_fresh_keys_give_uniform_p_values_on_watermarked_text(model_dir):
    """Control: 40 key sets never used for generation score the same watermarked corpus; their
    p-values stay uniform (none below 0.001, at most a few below 0.05)."""
    wm = HFModelServer(model_dir, keys=KEYS)
    torch.manual_seed(1)
    texts = wm.generate_batch([f"User: Explain tides {i}\nAssistant:" for i in range(4)], max_tokens=100,
                              account="erin")
    seqs = [np.asarray(wm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ps = []
    for i in range(40):
        fresh = KeySet(secret=f"fresh-control-secret-{i:04d}".encode(), cohorts=1, scheme="synthid")
        ps.append(SynthIDDetector(fresh, wm.model.config.vocab_size).score_pooled(seqs, 0).p_value)
    ps = np.asarray(ps)
    assert ps.min() > 1e-3 and (ps < 0.05).sum() <= 6, ps


def test_bad_inputs(model_dir, tmp_path):
    det = SynthIDDetector(KEYS, 512)
    with pytest.raises(BadInputError, match="tokenizer"):
        det.score_many([np.array([1, 2, 3, 4, 5, 9999])])
    assert det.score_many([np.array([1, 2])])[0].scored == 0          # shorter than an n-gram: nothing to score
    with pytest.raises(BadInputError, match="scheme"):
        KeySet(secret=b"x" * 16, scheme="unigram")
    keys_file = tmp_path / "keys.json"
    KEYS.save(keys_file)
    assert KeySet.load(keys_file) == KEYS
    proc = subprocess.run([sys.executable, "-m", "distillguard", "watermark", "detect", "-", "--keys", str(keys_file),
                           "--vocab-size", "512", "--format", "json"], input=json.dumps({"token_ids": [1, 2, 3]}),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scheme"] == "synthid"
    proc = subprocess.run([sys.executable, "-m", "distillguard", "serve", "--model", str(model_dir), "--watermark",
                           "synthid"], capture_output=True, text=True)
    assert proc.returncode != 0 and "needs --keys" in proc.stderr and "Traceback" not in proc.stderr
