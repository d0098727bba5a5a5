"""Demo step: output correlation. Does a suspect model mirror ours more than independent models do?

A tiny teacher is trained here; a student is trained only on its (watermarked) answers, as an
extraction farm would; a control and two references are trained the same way on independent
ShareGPT text. ``compare`` must name the student and clear the control. The sizes are the
smallest that still show the point (the same lab as tests/test_compare.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 2}
PROBES = "builtin:idiosyncratic,formatting,reasoning"


def run_compare_demo(out: Path, console: Console, *, seed: int) -> dict[str, Any]:
    from distillguard.compare.battery import CompareSettings, run_compare
    from distillguard.compare.models import open_model
    from distillguard.compare.probes import load_probes
    from distillguard.compare.report import write_reports
    from distillguard.lab.distill import distill
    from distillguard.lab.tinylm import build_model
    from distillguard.watermark.keys import KeySet

    work = out / "compare"
    keys = KeySet(secret=hashlib.sha256(f"distillguard-demo-compare-{seed}".encode()).digest(), cohorts=4)
    common = dict(total_tokens=6000, seconds=300, epochs=90, max_tokens=48, student_size=SMALL)
    with console.status("training a tiny teacher, a student on its answers, a control and two references "
                        "(smallest settings; 'distillguard lab build-model' / 'lab distill' for real sizes)…"):
        build_model(work / "teacher", seconds=300, steps=22, vocab_size=512, max_chars=150_000)
        distill(work / "teacher", keys, work / "student", share=1.0, seed=0, **common)
        for name, s, skip in (("control", 1, 3000), ("ref1", 2, 3200), ("ref2", 3, 3400)):
            distill(work / "teacher", None, work / name, share=0.0, seed=s, corpus_skip=skip, **common)
    settings = CompareSettings(samples=4, max_tokens=32, embedder="hashing", permutations=5000)
    probes = load_probes(PROBES)
    protected = open_model(str(work / "teacher"), "protected")
    refs = [open_model(str(work / r), r) for r in ("ref1", "ref2")]
    table = Table(title="compare: suspect against the protected model and two independent references",
                  box=box.SIMPLE_HEAD)
    for col in ("suspect", "verdict", "p (Holm)", "deciding test"):
        table.add_column(col)
    results = {}
    with console.status("running the test battery (MMD, similarity, likelihood, radioactivity)…"):
        for name in ("student", "control"):
            r = run_compare(protected, open_model(str(work / name), "suspect"), refs, probes, settings, keys=keys)
            data = r.to_dict()
            write_reports(data, json_path=work / f"{name}.json", html_path=work / f"{name}.html")
            results[name] = {"distilled": r.verdict.distilled, "p_value": r.verdict.p_value,
                             "test": r.verdict.deciding_test, "report": work / f"{name}.html"}
            table.add_row(f"{name} ({'trained on our answers' if name == 'student' else 'independent text'})",
                          "distilled from ours" if r.verdict.distilled else "no finding",
                          f"{r.verdict.p_value:.1e}", r.verdict.deciding_test or "—")
    console.print(table)
    console.print(f"evidence reports → {work / 'student.html'}, {work / 'control.html'} (docs/compare.md)")
    return results
