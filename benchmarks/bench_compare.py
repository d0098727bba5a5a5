"""compare on the distillation lab: power, false-positive rate, and power against queries.

Builds a tiny teacher, two reference models and, per seed, a student trained on the teacher's
answers (``--share``) and a control trained the same way on independent ShareGPT text, then runs
``compare`` on each suspect. Reports the share of students flagged at p < alpha (power), the
share of controls flagged (false-positive rate), and power at several query budgets (probes ×
samples asked of the suspect).

    .venv/bin/python benchmarks/bench_compare.py --seeds 3 --workdir /tmp/dg-compare
    .venv/bin/python benchmarks/bench_compare.py --seeds 3 --workdir /tmp/dg-compare --black-box
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SMALL = {"n_layer": 1, "n_embd": 64, "n_head": 2}


def build(workdir: Path, seeds: int, share: float, tokens: int, seconds: float) -> dict[str, list[Path]]:
    from distillguard.lab.distill import distill
    from distillguard.lab.tinylm import build_model

    common = dict(total_tokens=tokens, seconds=seconds, max_tokens=48, student_size=SMALL)
    teacher = workdir / "teacher"
    if not teacher.exists():
        build_model(teacher, seconds=8, vocab_size=512, max_chars=150_000)
    models: dict[str, list[Path]] = {"references": [], "students": [], "controls": []}
    # Independent models: neighbouring slices of ShareGPT, one per model (references first).
    slices = iter(range(3000, 3000 + 200 * (2 + seeds), 200))
    for kind, n, s in (("references", 2, 0.0), ("controls", seeds, 0.0), ("students", seeds, share)):
        for i in range(n):
            out = workdir / f"{kind}-{i}"
            if not out.exists():
                skip = 3000 if kind == "students" else next(slices)
                distill(teacher, None, out, share=s, seed=100 * i + len(kind), corpus_skip=skip, **common)
            elif kind != "students":
                next(slices)
            models[kind].append(out)
    models["teacher"] = [teacher]
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="students and controls (one each per seed)")
    parser.add_argument("--share", type=float, default=1.0, help="share of a student's tokens that are teacher answers")
    parser.add_argument("--tokens", type=int, default=6000, help="training tokens per student/control")
    parser.add_argument("--seconds", type=float, default=8.0, help="training seconds per student/control")
    parser.add_argument("--embedder", default="hashing")
    parser.add_argument("--budgets", default="6x2,12x3,26x4", help="probes x samples per query budget of the curve")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--black-box", action="store_true", help="treat suspects as endpoints: no likelihood test "
                        "(only their sampled answers are used, as for an API)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dg-compare"))
    args = parser.parse_args()

    from distillguard.compare.battery import CompareSettings, run_compare
    from distillguard.compare.models import open_model
    from distillguard.compare.probes import builtin_probes

    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    models = build(args.workdir, args.seeds, args.share, args.tokens, args.seconds)
    build_s = time.monotonic() - t0
    protected = open_model(str(models["teacher"][0]), "protected")
    refs = [open_model(str(p), f"reference {i + 1}") for i, p in enumerate(models["references"])]
    # Interleave suites so that a small budget still asks several kinds of probe.
    pool = [p for p in builtin_probes() if p.suite != "identity"]
    by_suite: dict[str, list] = {}
    for p in pool:
        by_suite.setdefault(p.suite, []).append(p)
    order = [s[i] for i in range(max(map(len, by_suite.values()))) for s in by_suite.values() if i < len(s)]
    budgets = [tuple(int(x) for x in b.split("x")) for b in args.budgets.split(",")]
    rows = []
    for kind in ("students", "controls"):
        for i, path in enumerate(models[kind]):
            suspect = open_model(str(path), "suspect")
            if args.black_box:
                suspect.open_weights = False        # sampled answers only, as an endpoint would give
            for probes, samples in (budgets if kind == "students" else budgets[-1:]):
                settings = CompareSettings(samples=samples, max_tokens=32, embedder=args.embedder,
                                           permutations=5000, alpha=args.alpha, seed=i)
                start = time.monotonic()
                result = run_compare(protected, suspect, refs, order[:probes], settings)
                rows.append({"kind": kind, "seed": i, "probes": probes, "samples": samples,
                             "queries": probes * samples, "flagged": result.verdict.distilled,
                             "p_value": result.verdict.p_value, "deciding": result.verdict.deciding_test,
                             "tests": {t.name: {"p": t.p_value, "stands_out": t.stands_out} for t in result.tests
                                       if t.p_value is not None},
                             "seconds": round(time.monotonic() - start, 1)})
                print(json.dumps(rows[-1]), flush=True)
    total = time.monotonic() - t0
    full = budgets[-1][0] * budgets[-1][1]
    students = [r for r in rows if r["kind"] == "students" and r["queries"] == full]
    controls = [r for r in rows if r["kind"] == "controls"]
    summary = {"power": sum(r["flagged"] for r in students) / len(students),
               "false_positive_rate": sum(r["flagged"] for r in controls) / len(controls),
               "students": len(students), "controls": len(controls), "alpha": args.alpha,
               "curve": [{"queries": p * s, "probes": p, "samples": s,
                          "power": sum(r["flagged"] for r in rows if r["kind"] == "students" and r["probes"] == p
                                       and r["samples"] == s) / len(students)} for p, s in budgets],
               "compare_seconds_mean": round(sum(r["seconds"] for r in rows) / len(rows), 1),
               "build_seconds": round(build_s, 1), "total_seconds": round(total, 1)}
    (args.workdir / f"bench_compare{'-black-box' if args.black_box else ''}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
