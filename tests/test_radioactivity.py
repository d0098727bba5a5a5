"""Radioactivity on lab students: a student trained on a cohort's watermarked answers is caught and
the cohort named; a control student is not; control keys stay uniform."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distillguard.lab.distill import distill
from distillguard.lab.tinylm import build_model
from distillguard.serve.hf import load_model
from distillguard.watermark.keys import KeySet
from distillguard.watermark.radioactivity import black_box, reading_mode

KEYS = KeySet(secret=b"radioactivity-test-secret-42", cohorts=6)
SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 2}      # a student that learns bigrams in seconds


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "model"
    build_model(out, seconds=4, vocab_size=512, max_chars=150_000)
    return out


@pytest.mark.slow
def test_student_of_watermarked_answers_is_radioactive_and_attributed(teacher, tmp_path):
    meta = distill(teacher, KEYS, tmp_path / "student", share=0.5, total_tokens=8000, seconds=12, max_tokens=64,
                   student_size=SMALL)
    assert meta["cohort"] == KEYS.cohort_of("student-farm") and meta["watermarked_share"] > 0.3
    texts = [json.loads(line)["text"] for line in (tmp_path / "student" / "teacher_answers.jsonl").read_text().splitlines()]
    tokenizer, student = load_model(tmp_path / "student")
    result = reading_mode(student, tokenizer, texts, KEYS, controls=20)
    assert result.best["cohort"] == meta["cohort"] and result.best["p_value_corrected"] < 1e-4, result.to_dict()
    assert sum(p < 0.01 for p in result.controls) <= 2
    # The same through the command line.
    KEYS.save(tmp_path / "keys.json")
    proc = subprocess.run([sys.executable, "-m", "distillguard", "watermark", "radioactivity", "--keys",
                           str(tmp_path / "keys.json"), "--suspect-model", str(tmp_path / "student"), "--texts",
                           str(tmp_path / "student" / "teacher_answers.jsonl"), "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert cli["verdict"] == "radioactive" and cli["cohorts"][0]["cohort"] == meta["cohort"]

    control_meta = distill(teacher, KEYS, tmp_path / "control", share=0.0, total_tokens=8000, seconds=12,
                           student_size=SMALL)
    assert control_meta["watermarked_tokens"] == 0
    _, control = load_model(tmp_path / "control")
    control_result = reading_mode(control, tokenizer, texts, KEYS, controls=20)
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
