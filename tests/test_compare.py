"""compare: the statistics on synthetic data, probes and bad input, and the lab experiment (a
student distilled from the tiny teacher is flagged, a control on independent text is not), over
local directories, a real loopback endpoint and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from distillguard.compare.battery import CompareSettings, _identity, check_power, run_compare, stands_out
from distillguard.compare.likelihood import likelihood_test
from distillguard.compare.models import open_model
from distillguard.compare.probes import BUILTIN, builtin_probes, load_probes, read_probes
from distillguard.compare.stats import holm, mmd_equality_test, role_permutation_test
from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet

KEYS = KeySet(secret=b"compare-test-secret-7", cohorts=4)
SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 2}
FAST = CompareSettings(samples=4, max_tokens=32, embedder="hashing", permutations=5000)
PROBES = "builtin:idiosyncratic,formatting,reasoning"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillguard", *args], capture_output=True, text=True)


# --- statistics -------------------------------------------------------------------------------

def test_mmd_equality_test_is_uniform_under_the_null_and_detects_a_shift():
    rng = np.random.default_rng(0)
    same = [mmd_equality_test([rng.normal(size=(5, 8)) for _ in range(10)],
                              [rng.normal(size=(5, 8)) for _ in range(10)], 4.0, permutations=500, rng=rng).p_value
            for _ in range(60)]
    assert 0.02 <= np.mean(np.array(same) < 0.2) <= 0.45        # about 20 % below 0.2
    shifted = mmd_equality_test([rng.normal(size=(5, 8)) for _ in range(10)],
                                [rng.normal(size=(5, 8)) + 0.8 for _ in range(10)], 4.0, permutations=500, rng=rng)
    assert shifted.p_value < 0.01 and shifted.statistic > 0 and (shifted.per_prompt_p < 0.05).mean() > 0.3


def test_role_permutation_test_calibration_and_power():
    rng = np.random.default_rng(1)
    null = [role_permutation_test(rng.normal(size=(30, 3)), permutations=999, rng=rng).p_value for _ in range(300)]
    assert 0.02 <= np.mean(np.array(null) <= 0.05) <= 0.09     # level 5 %
    values = rng.normal(size=(30, 3))
    values[:, 0] += 2.0
    hit = role_permutation_test(values, permutations=999, rng=rng)
    assert hit.p_value == pytest.approx(1 / 1000) and hit.effect_size > 1 and hit.share_above_all > 0.5
    with pytest.raises(ValueError):
        role_permutation_test(values[:, :1], permutations=10, rng=rng)


def test_holm_adjusts_in_order_and_caps_at_one():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_stands_out_needs_a_margin_beyond_the_references_spread():
    assert stands_out(1.0, None) is None
    assert stands_out(0.2, [-0.1, 0.1]) is False                    # inside the spread
    assert stands_out(1.0, [-0.1, 0.1]) is True                     # 7 SD out
    assert stands_out(0.5, [0.0, 0.0]) is True and stands_out(0.0, [0.0, 0.0]) is False


def test_likelihood_test_corrects_for_a_generally_better_suspect():
    rng = np.random.default_rng(2)
    index = np.repeat(np.arange(20), 4)
    refs, refs_cal = rng.normal(-2, 0.1, size=(2, 80)), rng.normal(-3, 0.1, size=(2, 40))
    better = likelihood_test(refs[0] + 0.5, refs, refs_cal[0] + 0.5, refs_cal, index)   # better everywhere
    assert better.p_value > 0.01 and abs(better.shift) < 0.2
    copied = likelihood_test(refs[0] + 0.5, refs, refs_cal[0], refs_cal, index)        # better on ours only
    assert copied.p_value < 1e-6 and copied.shift > 0.3 and copied.common_language > 0.9


def test_identity_leakage_against_the_references_base_rate():
    models = [SimpleNamespace(label=x) for x in ("protected", "suspect", "r1", "r2")]
    says = ["I am Acme-7, made by Acme Labs."] * 6 + ["I am an assistant."] * 14
    plain = ["I am an assistant."] * 20
    completions = [[says[i:i + 4] for i in range(0, 20, 4)]] * 2 + [[plain[i:i + 4] for i in range(0, 20, 4)]] * 2
    hit = _identity(models, completions, CompareSettings(names=("Acme-7", "Acme Labs")))
    assert hit.p_value < 0.01 and hit.statistic == pytest.approx(0.3)
    assert hit.detail["mentions"]["suspect"] == {"answers": 20, "naming": 6}
    same = _identity(models, [completions[0], completions[2], completions[2], completions[3]],
                     CompareSettings(names=("Acme-7",)))
    assert same.p_value == pytest.approx(1.0)
    assert _identity(models, completions, CompareSettings()).skipped


# --- probes and bad input ---------------------------------------------------------------------

def test_builtin_probes_and_user_files(tmp_path):
    probes = builtin_probes()
    assert len(probes) == sum(len(v) for v in BUILTIN.values()) and len({p.id for p in probes}) == len(probes)
    assert {p.suite for p in load_probes("builtin:identity,refusal")} == {"identity", "refusal"}
    with pytest.raises(BadInputError, match="unknown probe suite"):
        load_probes("builtin:jokes")
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "Hi?", "id": "a"}\n\n{"prompt": "Why?", "suite": "mine"}\n')
    assert [(p.id, p.suite) for p in read_probes(good)] == [("a", "user"), ("line-3", "mine")]
    for body, match in (('{"prompt": ""}\n', "field 'prompt'"), ("not json\n", ":1: not JSON"),
                        ('["x"]\n', "expected a JSON object"), ('{"prompt":"a","id":"x"}\n{"prompt":"b","id":"x"}\n',
                                                                 ":2, field 'id': duplicate"), ("\n", "no probes")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(BadInputError, match=match):
            read_probes(bad)
    with pytest.raises(BadInputError, match="no such probe file"):
        read_probes(tmp_path / "missing.jsonl")


def test_settings_and_design_checks():
    with pytest.raises(BadInputError, match="at least 2 samples"):
        CompareSettings(samples=1).check()
    with pytest.raises(BadInputError, match="temperature"):
        CompareSettings(temperature=0).check()
    with pytest.raises(BadInputError, match="embedder"):
        CompareSettings(embedder="bert").check()
    with pytest.raises(BadInputError, match=r"too few probes \(3\).*at least 6 needed"):
        check_power(3, 2, 6, CompareSettings())
    with pytest.raises(BadInputError, match="too few permutations"):
        check_power(40, 2, 6, CompareSettings(permutations=200))
    check_power(40, 2, 6, CompareSettings())


def test_cli_errors_are_one_line(tmp_path):
    proc = _cli("compare", "--protected", "http://127.0.0.1:9", "--suspect", str(tmp_path))
    assert proc.returncode == 2 and "cannot reach the protected endpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    proc = _cli("compare", "--protected", str(tmp_path / "nope"), "--suspect", str(tmp_path))
    assert proc.returncode == 2 and "no such model directory" in proc.stderr
    proc = _cli("compare", "--protected", "default", "--suspect", "default", "--samples", "1")
    assert proc.returncode == 2 and "at least 2 samples" in proc.stderr
    proc = _cli("compare", "--protected", "default", "--suspect", "default", "--probes", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 2 and "no such probe file" in proc.stderr


# --- the lab experiment ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny teacher; a student trained only on its watermarked answers; a control and two
    references trained the same way on independent ShareGPT text (neighbouring slices)."""
    from distillguard.lab.distill import distill
    from distillguard.lab.tinylm import build_model

    root = tmp_path_factory.mktemp("compare-lab")
    # Fixed numbers of steps (what 4 s and 8 s give on an idle machine), so a busy one builds the same lab.
    build_model(root / "teacher", seconds=300, steps=22, vocab_size=512, max_chars=150_000)
    common = dict(total_tokens=6000, seconds=300, epochs=90, max_tokens=48, student_size=SMALL)
    distill(root / "teacher", KEYS, root / "student", share=1.0, seed=0, **common)
    for name, seed, skip in (("control", 1, 3000), ("ref1", 2, 3200), ("ref2", 3, 3400)):
        distill(root / "teacher", None, root / name, share=0.0, seed=seed, corpus_skip=skip, **common)
    return root


@pytest.mark.slow
def test_lab_student_is_flagged_and_control_is_not(lab, tmp_path):
    protected = open_model(str(lab / "teacher"), "protected")
    refs = [open_model(str(lab / r), r) for r in ("ref1", "ref2")]
    probes = load_probes(PROBES)
    student = run_compare(protected, open_model(str(lab / "student"), "suspect"), refs, probes, FAST, keys=KEYS)
    assert student.verdict.distilled and student.verdict.p_value < 0.01, student.verdict
    likelihood = student.test("likelihood")
    assert likelihood.p_value < 1e-6 and likelihood.stands_out and likelihood.detail["shift_nats_per_byte"] > 0.3
    # A student this small and briefly trained is not reliably radioactive (tests/test_radioactivity.py
    # covers that); here the test must run in open-weights mode and stay quiet on the control.
    radio = student.test("radioactivity")
    assert radio.detail["mode"].startswith("open weights") and radio.detail["controls"]["keys"] == 20
    assert student.test("equality").in_verdict is False and student.examples and student.queries["suspect"] == 26 * 4

    control = run_compare(protected, open_model(str(lab / "control"), "suspect"), refs, probes, FAST, keys=KEYS)
    assert not control.verdict.distilled, [(t.name, t.p_value, t.stands_out) for t in control.tests]
    assert control.test("radioactivity").p_value > 0.01


@pytest.mark.slow
def test_cli_writes_json_and_html_and_fails_on_findings(lab, tmp_path):
    KEYS.save(tmp_path / "keys.json")
    proc = _cli("compare", "--protected", str(lab / "teacher"), "--suspect", str(lab / "student"),
                "--reference", str(lab / "ref1"), "--reference", str(lab / "ref2"), "--probes", PROBES,
                "--samples", "4", "--max-tokens", "32", "--embedder", "hashing", "--permutations", "5000",
                "--keys", str(tmp_path / "keys.json"), "--out", str(tmp_path / "r.json"),
                "--html", str(tmp_path / "r.html"), "--fail-on-findings")
    assert proc.returncode == 1, proc.stderr
    assert "verdict: the suspect mirrors the protected model" in proc.stdout.replace("\n", " ")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"]["distilled"] and report["caveats"] and len(report["tests"]) == 8
    for t in report["tests"]:
        assert t["skipped"] or {"statistic", "p_value", "effect_size"} <= t.keys()
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and "Caveats" in html and "<script" not in html and "<link" not in html


@pytest.mark.slow
def test_endpoint_suspect_over_loopback_http(lab):
    """The student served over a real uvicorn as an OpenAI-compatible endpoint: black-box tests only
    (no likelihood), the radioactivity read from its answers."""
    from distillguard.gateway.server import ServerThread
    from distillguard.serve.hf import HFModelServer

    with ServerThread(HFModelServer(lab / "student", keys=None, model_name="copycat")) as server:
        suspect = open_model(server.url + "/v1", "suspect")
        assert suspect.name == "copycat" and not suspect.open_weights
        result = run_compare(open_model(str(lab / "teacher"), "protected"), suspect,
                             [open_model(str(lab / r), r) for r in ("ref1", "ref2")],
                             load_probes("builtin:idiosyncratic,formatting"),
                             CompareSettings(samples=3, max_tokens=32, embedder="hashing", permutations=5000),
                             keys=KEYS)
    assert result.test("likelihood").skipped.startswith("the suspect is an endpoint")
    assert result.test("radioactivity").detail["mode"].startswith("black box")
    assert result.queries["suspect"] == 20 * 3
    assert result.verdict.distilled, [(t.name, t.p_value, t.stands_out) for t in result.tests]
