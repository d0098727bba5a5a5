"""`baseline build --include-false-positives STATE`: the events of accounts analysts marked false
positive in the dashboard join the organic traffic the baseline is fitted on, so an account
flagged before is judged normal by the rebuilt baseline (lab data, the real CLI)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from distillguard.detect.baseline import Baseline
from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.store import EventStore
from distillguard.web.queries import ActionLog
from web_support import build_lab_store


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("fp-lab")
    db, labels = build_lab_store(work)
    labels_path = work / "labels.jsonl"
    labels_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in labels))
    return db, labels, labels_path, work


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillguard", *args], capture_output=True, text=True, timeout=300)


def _verdicts(db, baseline_path) -> dict:
    with EventStore(db, read_only=True) as store:
        result = scan_store(store, ScanOptions(baseline=Baseline.load(baseline_path)))
    return {a.account: a for a in result.accounts}


def test_a_marked_false_positive_is_normal_for_the_rebuilt_baseline(lab, tmp_path):
    db, labels, labels_path, _ = lab
    before_path, after_path = tmp_path / "before.json", tmp_path / "after.json"
    proc = _cli("baseline", "build", str(db), "--labels", str(labels_path), "--out", str(before_path))
    assert proc.returncode == 0, proc.stderr
    before = _verdicts(db, before_path)
    singles = {r["account"] for r in labels if r["strategy"] in ("cot", "rubric")}
    marked = next(a for a in sorted(singles) if before[a].verdict.flagged)

    state = ActionLog(tmp_path / "web.duckdb")     # what the dashboard writes
    state.set_meta("events_db", str(db))
    state.record(analyst="a", client="c", target_kind="account", target=marked, action="false_positive", note="")
    state.record(analyst="a", client="c", target_kind="account", target="acct-never-seen", action="false_positive",
                 note="")
    state.record(analyst="a", client="c", target_kind="account", target=next(a for a in singles if a != marked),
                 action="block", note="")          # only false positives are fed back
    state.close()
    proc = _cli("baseline", "build", str(db), "--labels", str(labels_path), "--out", str(after_path),
                "--include-false-positives", str(tmp_path / "web.duckdb"))
    assert proc.returncode == 0, proc.stderr
    after_baseline = Baseline.load(after_path)
    assert after_baseline.accounts_ == Baseline.load(before_path).accounts_ + 1
    assert "+ 1 false positive(s)" in after_baseline.source and "1 marked account(s) have no events" in \
        after_baseline.source
    after = _verdicts(db, after_path)
    assert not after[marked].verdict.flagged
    assert after[marked].verdict.p_value > 1e6 * before[marked].verdict.p_value
    # Accounts nobody marked keep their standing.
    other = next(a for a in singles if a != marked)
    assert after[other].verdict.p_value < 1e-6


def test_an_explicit_store_overrides_the_recorded_one(lab, tmp_path):
    db, labels, labels_path, _ = lab
    marked = next(r["account"] for r in labels if r["strategy"] == "cot")
    state = ActionLog(tmp_path / "web.duckdb")
    state.record(analyst="a", client="c", target_kind="account", target=marked, action="false_positive", note="")
    state.close()
    no_store = _cli("baseline", "build", str(db), "--out", str(tmp_path / "b.json"),
                    "--include-false-positives", str(tmp_path / "web.duckdb"))
    assert no_store.returncode == 2 and "--false-positives-db" in no_store.stderr
    assert len(no_store.stderr.strip().splitlines()) == 1 and "Traceback" not in no_store.stderr
    ok = _cli("baseline", "build", str(db), "--labels", str(labels_path), "--out", str(tmp_path / "b.json"),
              "--include-false-positives", str(tmp_path / "web.duckdb"), "--false-positives-db", str(db))
    assert ok.returncode == 0, ok.stderr
    assert "+ 1 false positive(s)" in Baseline.load(tmp_path / "b.json").source


@pytest.mark.parametrize("args,message", [
    (["--include-false-positives", "missing.web.duckdb"], "no such dashboard state file"),
    (["--false-positives-db", "x.duckdb"], "--false-positives-db needs --include-false-positives"),
    (["--include-false-positives", "STATE", "--false-positives-db", "nope.duckdb"], "no such DuckDB file"),
])
def test_bad_input_is_one_line(lab, tmp_path, monkeypatch, capsys, args, message):
    from distillguard.cli import main

    db, _, _, _ = lab
    state = ActionLog(tmp_path / "state.web.duckdb")
    state.record(analyst="a", client="c", target_kind="account", target="x", action="false_positive", note="")
    state.close()
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "state.web.duckdb") if a == "STATE" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["baseline", "build", str(db), "--out", str(tmp_path / "b.json"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_lab_baseline_takes_the_extra_rows_too(lab):
    from distillguard.detect.build import account_features_from, build_from_lab

    db, labels, _, _ = lab
    marked = next(r["account"] for r in labels if r["strategy"] == "cot")
    extra = account_features_from(db, [marked])
    assert list(extra.index) == [marked] and extra.loc[marked, "queries"] > 100
    plain = build_from_lab(accounts=60, days=1)
    fed = build_from_lab(accounts=60, days=1, extra=extra)
    assert fed.accounts_ == plain.accounts_ + 1
