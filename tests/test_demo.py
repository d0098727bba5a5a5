"""`distillguard demo` (what `make demo` runs) works end to end and tells the truth."""

from __future__ import annotations

import io

from rich.console import Console

from distillguard.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    console = Console(file=io.StringIO(), width=100)
    summary = run_demo(out, seed=7, console=console)
    text = console.file.getvalue()
    assert summary["inserted"] == summary["events"] > 10_000
    assert summary["duplicates_second"] == summary["events"]  # the second ingest adds nothing
    assert summary["quarantined"] == 2
    assert summary["caught"] == summary["extraction_accounts"] > 0
    assert summary["organic_flagged"] == 0
    assert (out / "scan.html").read_text(encoding="utf-8").count("<svg") >= 2
    assert any((out / "parquet").rglob("*.parquet"))
    assert "Traceback" not in text and "caught" in text
    for account, row in summary["watermark"].items():
        assert row["detected"] == row["expected"], (account, row)     # cohort named; the clean model's: none
    assert summary["watermark"]["bob (routed to 'watch' by the gateway)"]["detected"] == "watch"
    # Step 5: the same lab traffic, live through the gateway over loopback HTTP.
    gw = summary["gateway"]
    assert gw["stored"] == gw["requests"] > 1000                      # every exchange logged and loaded
    by = gw["by_strategy"]
    for negative in ("organic", "batch_app", "power_user", "researcher", "eval_run"):
        assert by.get(negative, {}).get("block", 0) == 0, negative     # nobody legitimate is blocked
    # Graduated: every extractor is acted on live (its first flag strips, shapes, caps and limits);
    # the hydra cluster is blocked at once; single accounts only once a flag persists past a day.
    assert {"cot", "hydra", "sweep", "rubric", "agentic"} <= set(gw["flagged_accounts"])
    for strategy in ("cot", "sweep", "rubric", "agentic"):
        assert by[strategy].get("modify", 0) + by[strategy].get("throttle", 0) > 0, strategy
    assert "hydra" in [s for s, c in by.items() if c.get("block")]
    assert "limited and stripped rather than blocked" in text
    assert gw["codes"].get("extraction_flagged", 0) > 0 and gw["codes"].get("cluster_flagged", 0) > 0
    assert any(code.startswith("rate_limit_") for code in gw["codes"])    # throttling shown too
    assert "example block explanation" in text
    # Step 6: A shares what it caught over TAXII; the actor's new account at B is acted on at once.
    sharing = summary["sharing"]
    assert sharing["indicators"] > 0 and sharing["leaked_names"] == 0
    assert sharing["first_action"] is not None and sharing["first_action"] <= 5
    assert "from peer provider-a" in sharing["reason"] and "Distillation campaign" in sharing["reason"]
    assert sharing["organic_b"] > 0 and sharing["organic_touched"] == 0
    # Step 7: the incident report and a dashboard an analyst signed in to.
    assert summary["report"]["campaigns"] > 0 and summary["report"]["path"].read_text().count("<svg") >= 1
    assert summary["dashboard"]["signed_in"]
    # Step 9: compare names the student and clears the control.
    assert summary["compare"]["student"]["distilled"] and not summary["compare"]["control"]["distilled"]
    assert set(summary["seconds"]) >= {"total"} and "Traceback" not in text
    # Last step: an evidence package for the biggest campaign verifies offline; a flipped bit does not.
    ev = summary["evidence"]
    assert ev["campaign"] and ev["exchanges"] > 0 and ev["verified"] and ev["tamper_caught"]
    assert "VERIFIED" in text
