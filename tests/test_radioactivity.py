"""Radioactivity on lab students: a student trained on a cohort's watermarked answers is caught and
the cohort named; a control student is not; control keys stay uniform."""

from __future__ import annotations

import json
import subprocess
import sys

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillguard.errors import BadInputError
from distillguard.lab.distill import distill
from distillguard.lab.tinylm import build_model
from distillguard.serve.hf import load_model
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import GreenTable
from distillguard.watermark.radioactivity import black_box, chernoff_p, reading_mode

KEYS = KeySet(secret=b"radioactivity-test-secret-42", cohorts=6)
SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 2}      # a student that learns bigrams in seconds


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "model"
    build_model(out, seconds=300, steps=22, vocab_size=512, max_chars=150_000)   # fixed steps: same model on a busy machine
    return out


class TiltedModel(torch.nn.Module):
    """A stand-in for a radioactive student: ``base``'s logits plus ``delta`` on the tokens green
    for ``key`` after each context token (what training on that key's watermarked text teaches)."""

    def __init__(self, base, key: int, delta: float) -> None:
        super().__init__()
        self.base, self.config = base, base.config
        vocab = base.config.vocab_size
        table = GreenTable(key, vocab, KEYS.greenlist_ratio)
        table.ensure(np.arange(vocab))
        rows = np.unpackbits(table.bits[table.row_of[np.arange(vocab)]], axis=1)[:, :vocab]
        self.tilt = torch.from_numpy(rows.astype(np.float32)) * delta

    def forward(self, input_ids):
        out = self.base(input_ids=input_ids)
        return SimpleNamespace(logits=out.logits + self.tilt[input_ids])


def test_distribution_reading_names_a_tilted_suspects_cohort_and_stays_calibrated(teacher):
    """The open-weights statistic on a suspect whose preference for one cohort's green tokens is
    known: that cohort is named with a tiny p-value, with or without our model as reference; the
    untilted model gives no evidence and fresh keys stay uniform."""
    tokenizer, base = load_model(teacher)
    texts = [tokenizer.decode(base.generate(tokenizer(f"User: topic {i}\nAssistant:", return_tensors="pt")["input_ids"],
                                            do_sample=True, max_new_tokens=60, pad_token_id=tokenizer.eos_token_id)[0])
             for i in range(12)]
    truth = 2
    suspect = TiltedModel(base, KEYS.cohort_key(truth), delta=0.25)
    for reference in (None, base):
        res = reading_mode(suspect, tokenizer, texts, KEYS, controls=40, reference=reference)
        assert res.best["cohort"] == truth and res.best["p_value_corrected"] < 1e-6, res.to_dict()
        assert sum(p < 0.01 for p in res.controls) <= 2
    clean = reading_mode(base, tokenizer, texts, KEYS, controls=40)
    assert clean.best["p_value_corrected"] > 0.01 and sum(p < 0.01 for p in clean.controls) <= 2
    same = reading_mode(base, tokenizer, texts, KEYS, controls=5, reference=base)     # nothing left to score
    assert same.best["p_value"] == 1.0 and same.method == "distribution minus reference"
    greedy = reading_mode(suspect, tokenizer, texts, KEYS, controls=5, method="greedy")
    assert greedy.method == "greedy" and greedy.pairs > 0
    with pytest.raises(BadInputError, match="unknown reading method"):
        reading_mode(base, tokenizer, texts, KEYS, method="mean")
    with pytest.raises(BadInputError, match="distribution method only"):
        reading_mode(base, tokenizer, texts, KEYS, method="greedy", reference=base)


def test_chernoff_bound_is_a_valid_p_value():
    """Monte Carlo: for fixed weights, the bound is never below the simulated tail probability."""
    rng = np.random.default_rng(0)
    weights = np.concatenate([rng.exponential(1.0, 300), -rng.exponential(0.5, 100)])
    sims = (rng.random((20_000, weights.size)) < 0.25) @ weights
    grid = np.concatenate([[0.0], np.geomspace(1e-4, 10.0, 200)])
    for q in (0.5, 0.9, 0.99, 0.999):
        x = float(np.quantile(sims, q))
        assert chernoff_p(x, weights, 0.25, grid) >= (sims >= x).mean() - 1e-3


@pytest.mark.slow
def test_student_of_watermarked_answers_is_radioactive_and_attributed(teacher, tmp_path):
    # Trained a fixed number of passes (not seconds) so a busy machine gets the same student.
    meta = distill(teacher, KEYS, tmp_path / "student", share=0.5, total_tokens=8000, seconds=600, epochs=60,
                   max_tokens=64, student_size=SMALL)
    assert meta["cohort"] == KEYS.cohort_of("student-farm") and meta["watermarked_share"] > 0.3
    texts = [json.loads(line)["text"] for line in (tmp_path / "student" / "teacher_answers.jsonl").read_text().splitlines()]
    tokenizer, student = load_model(tmp_path / "student")
    result = reading_mode(student, tokenizer, texts, KEYS, controls=20, method="greedy")
    assert result.best["cohort"] == meta["cohort"] and result.best["p_value_corrected"] < 1e-4, result.to_dict()
    assert sum(p < 0.01 for p in result.controls) <= 2
    # The same through the command line.
    KEYS.save(tmp_path / "keys.json")
    proc = subprocess.run([sys.executable, "-m", "distillguard", "watermark", "radioactivity", "--keys",
                           str(tmp_path / "keys.json"), "--suspect-model", str(tmp_path / "student"), "--texts",
                           str(tmp_path / "student" / "teacher_answers.jsonl"), "--method", "greedy", "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert cli["verdict"] == "radioactive" and cli["cohorts"][0]["cohort"] == meta["cohort"]

    control_meta = distill(teacher, KEYS, tmp_path / "control", share=0.0, total_tokens=8000, seconds=600, epochs=60,
                           student_size=SMALL)
    assert control_meta["watermarked_tokens"] == 0
    _, control = load_model(tmp_path / "control")
    _, teacher_model = load_model(teacher)
    for kwargs in ({"method": "greedy"}, {"reference": teacher_model}):
        control_result = reading_mode(control, tokenizer, texts, KEYS, controls=20, **kwargs)
        assert control_result.best["p_value_corrected"] > 0.01, control_result.to_dict()

    # Black box: the student's own generations, scored with our tokenizer.
    answers = [tokenizer.decode(student.generate(tokenizer(f"User: question {i}\nAssistant:", return_tensors="pt")
                                                 ["input_ids"], do_sample=False, max_new_tokens=48,
                                                 pad_token_id=tokenizer.eos_token_id)[0], skip_special_tokens=True)
               for i in range(8)]
    prompts = [f"User: question {i}\nAssistant:" for i in range(8)]
    bb = black_box(answers, prompts, tokenizer, student.config.vocab_size, KEYS)
    assert bb.pairs > 0 and bb.mode == "black-box"


def test_distill_through_the_gateway_collects_watermarked_answers(teacher, tmp_path):
    """The lab's farm asks the served teacher through a real shadow-mode gateway over loopback:
    its answers carry its cohort's watermark, the gateway logged every exchange, and the student
    and its metadata are written."""
    from distillguard.watermark.detect import TextRecord, detect

    meta = distill(teacher, KEYS, tmp_path / "student", share=0.5, total_tokens=3000, seconds=2, max_tokens=48,
                   student_size=SMALL, through_gateway=True, account="farm-7")
    assert meta["collected"].startswith("through the gateway") and meta["watermarked_tokens"] >= 1000
    verdict = meta["gateway_verdict"]
    answers = [json.loads(line)["text"] for line in
               (tmp_path / "student" / "teacher_answers.jsonl").read_text().splitlines()]
    assert verdict["queries"] >= len(answers) > 10
    tokenizer, student = load_model(tmp_path / "student")
    top = detect([TextRecord(i + 1, f"a{i}", text=t) for i, t in enumerate(answers)], KEYS,
                 student.config.vocab_size, tokenizer)["cohorts"][0]
    assert top["cohort"] == KEYS.cohort_of("farm-7") and top["p_value_corrected"] < 1e-6
    segments = list((tmp_path / "student" / "gateway" / "gateway-log").glob("*"))
    assert segments and sum(p.stat().st_size for p in segments) > 0


@pytest.mark.slow
def test_student_of_shaped_watermarked_answers_is_still_radioactive(teacher, tmp_path):
    """Antidistillation shaping (a proxy student of the teacher's tokenizer, strength 1) ahead of the
    account's watermark, answers collected in left-padded batches: the student trained on them is
    still attributed to the right cohort by the open-weights test, and the shaping did act (the
    proxy ran at every generated token)."""
    from distillguard.shaping.natural import shaped_student_radioactivity

    res = shaped_student_radioactivity(teacher, KEYS, tmp_path / "shaped", mode="antidistillation", strength=1.0,
                                       proxy_steps=60)
    assert res["proxy_calls"] >= 60
    assert res["right_cohort"] and res["p_corrected"] < 1e-5, res
    assert res["text_best_cohort"] == res["cohort"] and res["text_p"] < 1e-10
    assert res["controls_below_0.01"] <= 0.1
