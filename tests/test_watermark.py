"""Watermark keys and the fast KGW detector, checked against transformers on identical tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import GreenTable, KGWDetector, unique_pairs

VOCAB = 1000


def _hf_detector(keys: KeySet, cohort: int, vocab: int = VOCAB):
    from transformers import GPT2Config, WatermarkDetector, WatermarkingConfig

    config = GPT2Config(vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    return WatermarkDetector(model_config=config, device="cpu",
                             watermarking_config=WatermarkingConfig(**keys.watermarking_config(cohort)),
                             ignore_repeated_ngrams=True)


def _biased_sequence(table: GreenTable, rng: np.random.Generator, n: int, green_share: float) -> np.ndarray:
    seq = [int(rng.integers(VOCAB - 1))]
    for _ in range(n - 1):
        row = table.green(np.full(VOCAB, seq[-1]), np.arange(VOCAB))
        pool = np.flatnonzero(row if rng.random() < green_share else ~row)
        pool = pool[pool != VOCAB - 1]                   # never the BOS id
        seq.append(int(rng.choice(pool)))
    return np.array(seq)


@pytest.mark.parametrize("green_share", [0.25, 0.6, 0.95])
def test_counts_and_z_equal_transformers(green_share):
    keys = KeySet(secret=b"k" * 32, cohorts=4)
    rng = np.random.default_rng(7)
    ours = KGWDetector([keys.cohort_key(c) for c in range(4)], VOCAB, keys.greenlist_ratio)
    for cohort in range(2):
        seq = _biased_sequence(ours.tables[cohort], rng, 300, green_share)
        seq = np.concatenate([seq, seq[:50]])            # repeats are scored once by both
        mine = ours.score(seq, cohort)
        theirs = _hf_detector(keys, cohort)(torch.tensor(seq)[None, :], return_dict=True)
        assert mine.scored == int(theirs.num_tokens_scored[0])
        assert mine.green == int(theirs.num_green_tokens[0])
        assert mine.z == pytest.approx(float(theirs.z_score[0]), rel=1e-9)


def test_text_generated_by_transformers_with_a_cohort_key_is_detected_and_attributed():
    from transformers import GPT2Config, GPT2LMHeadModel, WatermarkingConfig

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, n_positions=256,
                                       bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)).eval()
    keys = KeySet(secret=b"s" * 32, cohorts=5)
    prompt = torch.tensor([[5, 17, 300]])
    out = model.generate(prompt, do_sample=True, max_new_tokens=200, min_new_tokens=200, pad_token_id=VOCAB - 1,
                         watermarking_config=WatermarkingConfig(**{**keys.watermarking_config(3), "bias": 6.0}))
    new = out[0, prompt.shape[1] - 1:].numpy()           # the last prompt token is the first context
    detector = KGWDetector([keys.cohort_key(c) for c in range(5)] + keys.control_keys(3), VOCAB)
    scores = detector.score_all(new)
    assert scores[3].p_value < 1e-10
    assert all(s.p_value > 1e-4 for i, s in enumerate(scores) if i != 3)
    clean = model.generate(prompt, do_sample=True, max_new_tokens=200, min_new_tokens=200,
                           pad_token_id=VOCAB - 1)[0, 2:].numpy()
    assert detector.score(clean, 3).p_value > 1e-4


def test_control_keys_give_uniform_p_values():
    rng = np.random.default_rng(1)
    keys = KeySet(secret=b"c" * 32)
    detector = KGWDetector(keys.control_keys(200), VOCAB)
    seq = rng.integers(VOCAB, size=400)
    p = np.array([s.p_value for s in detector.score_all(seq)])
    assert 0.02 <= (p < 0.1).mean() <= 0.2 and (p < 0.01).mean() <= 0.03


def test_excluded_pairs_and_bad_inputs():
    codes = unique_pairs(np.array([1, 2, 1, 2, 3]), 10)
    assert codes.tolist() == [12, 21, 23]
    assert unique_pairs(np.array([1, 2, 3]), 10, exclude=np.array([12])).tolist() == [23]
    assert unique_pairs(np.array([4]), 10).size == 0
    with pytest.raises(BadInputError, match="tokenizer mismatch"):
        unique_pairs(np.array([1, 99]), 10)
    assert KGWDetector([5], 10).score(np.array([], dtype=np.int64)).p_value == 1.0


def test_keyset_round_trip_and_errors(tmp_path):
    keys = KeySet.generate(cohorts=16)
    keys.save(tmp_path / "keys.json")
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0        # the secret is owner-only
    again = KeySet.load(tmp_path / "keys.json")
    assert again == keys and again.cohort_of("acme") == keys.cohort_of("acme")
    assert len({keys.cohort_of(f"a{i}") for i in range(500)}) == 16
    assert len({keys.cohort_key(c) for c in range(16)}) == 16
    (tmp_path / "bad.json").write_text('{"version": 1, "secret": "zz", "cohorts": 4}')
    with pytest.raises(BadInputError, match="malformed"):
        KeySet.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(BadInputError, match="not a distillguard watermark key file"):
        KeySet.load(tmp_path / "other.json")
    with pytest.raises(BadInputError, match="no such watermark key file"):
        KeySet.load(tmp_path / "missing.json")
    with pytest.raises(BadInputError):
        KeySet(secret=b"short")


def test_score_many_equals_one_by_one():
    rng = np.random.default_rng(3)
    detector = KGWDetector([12345], VOCAB)
    texts = [rng.integers(VOCAB, size=n) for n in (0, 1, 2, 50, 300)] + [np.array([7, 7, 7, 7])]
    batch = detector.score_many(texts)
    assert batch == [detector.score(t) for t in texts]
    with pytest.raises(BadInputError, match="text 1"):
        detector.score_many([np.array([1, 2]), np.array([1, VOCAB])])


def test_cli_detects_watermarked_text_and_names_the_cohort(tmp_path):
    """Real tokenizer directory, text generated by transformers with cohort 2's key, the CLI."""
    import json
    import subprocess
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel, WatermarkingConfig

    from distillguard.lab.tinylm import save, train_tokenizer

    corpus = [f"The {w} of {v} is a question people ask about {u} every day." for w in ("cost", "shape", "history")
              for v in ("rivers", "cities", "music", "trains") for u in ("maps", "food", "work")] * 5
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    vocab = len(tokenizer)
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, n_positions=512,
                                       bos_token_id=0, eos_token_id=0)).eval()
    save(tokenizer, model, tmp_path / "tiny")
    keys = KeySet(secret=b"cli-test-secret-0123456789", cohorts=4)     # fixed: the test is deterministic
    keys.save(tmp_path / "keys.json")
    records = []
    for i in range(6):
        prompt = torch.tensor([tokenizer("The cost of", add_special_tokens=False)["input_ids"]])
        wm = {**keys.watermarking_config(2), "bias": 5.0}
        out = model.generate(prompt, do_sample=True, max_new_tokens=120, min_new_tokens=120, pad_token_id=0,
                             watermarking_config=WatermarkingConfig(**wm))
        records.append({"id": f"wm-{i}", "text": tokenizer.decode(out[0, prompt.shape[1]:])})
        clean = model.generate(prompt, do_sample=True, max_new_tokens=120, min_new_tokens=120, pad_token_id=0)
        records.append({"id": f"clean-{i}", "text": tokenizer.decode(clean[0, prompt.shape[1]:])})
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    proc = subprocess.run([sys.executable, "-m", "distillguard", "watermark", "detect", str(tmp_path / "texts.jsonl"),
                           "--keys", str(tmp_path / "keys.json"), "--tokenizer", str(tmp_path / "tiny"),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    by_id = {t["id"]: t for t in result["texts"]}
    assert all(by_id[f"wm-{i}"]["cohort"] == 2 and by_id[f"wm-{i}"]["p_value"] < 1e-3 for i in range(6))
    assert sum(by_id[f"clean-{i}"]["p_value"] < 0.01 for i in range(6)) <= 1
    assert result["cohorts"][0]["cohort"] == 2 and result["cohorts"][0]["p_value_corrected"] < 1e-10
    # Bad inputs: a wrong key file, an empty input, a tokenizer that is not one.
    (tmp_path / "empty.jsonl").write_text("")
    for args, needle in ((["--keys", str(tmp_path / "texts.jsonl")], "watermark key file is not JSON"),
                         (["--keys", str(tmp_path / "keys.json")], "no texts"),
                         (["--keys", str(tmp_path / "keys.json"), "--tokenizer", str(tmp_path)], "tokenizer")):
        target = tmp_path / ("empty.jsonl" if needle == "no texts" else "texts.jsonl")
        bad = subprocess.run([sys.executable, "-m", "distillguard", "watermark", "detect", str(target), *args,
                              *(["--vocab-size", "300"] if "--tokenizer" not in args else [])],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr, bad.stderr



def test_named_cohorts_have_their_own_keys_and_survive_a_round_trip(tmp_path):
    keys = KeySet(secret=b"named-cohort-secret-000000", cohorts=4, named=("watch", "research"))
    assert keys.total == 6 and [keys.label(c) for c in range(6)] == ["0", "1", "2", "3", "watch", "research"]
    assert len({keys.cohort_key(c) for c in range(6)}) == 6
    assert keys.cohort_index("research") == 5 and keys.cohort_index("nope") is None
    keys.save(tmp_path / "k.json")
    assert KeySet.load(tmp_path / "k.json") == keys
    for bad in (("watch", "watch"), ("",), ("7",)):
        with pytest.raises(BadInputError, match="named cohorts"):
            KeySet(secret=b"named-cohort-secret-000000", named=bad)
    with pytest.raises(BadInputError, match="outside"):
        keys.cohort_key(6)
