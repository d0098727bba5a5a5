"""`distillguard compare`: does a suspect model mirror ours more than independent models do?"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from distillguard.console import console, err_console
from distillguard.errors import UsageError


def compare(
    protected: str = typer.Option(..., "--protected", help="Our model: an OpenAI-compatible base URL (http…), a "
                                  "Hugging Face directory, or 'default' (the embedded tiny model)."),
    suspect: str = typer.Option(..., "--suspect", help="The suspect model: URL or directory."),
    reference: Optional[List[str]] = typer.Option(None, "--reference", help="An independent model of the same kind "
                                                  "as the suspect (URL or directory); repeat for several."),
    probes: str = typer.Option("builtin", "--probes", help="'builtin', 'builtin:identity,reasoning' (named suites), "
                               "or a JSON Lines file with one 'prompt' per line."),
    samples: int = typer.Option(5, "--samples", help="Completions per probe and model (at least 2)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per completion."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (above 0)."),
    embedder: str = typer.Option("minilm", "--embedder", help="minilm (all-MiniLM-L6-v2, ~60 texts/s on 2 cores) "
                                 "or hashing (bag of words, instant)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="A name of the protected model or its maker, for "
                                              "the identity-leakage test; repeat for several."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file our model serves with: adds the "
                                        "radioactivity test."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Our model's directory, when --protected is "
                                             "an endpoint and --keys is given (the watermark is on its token ids)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DISTILLGUARD_COMPARE_API_KEY",
                                          help="Bearer token sent to every endpoint."),
    alpha: float = typer.Option(0.01, "--alpha", help="Significance level of the verdict."),
    permutations: int = typer.Option(10_000, "--permutations", help="Permutations per test."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON evidence report here."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write the HTML evidence report here."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    fail_on_findings: bool = typer.Option(False, "--fail-on-findings", help="Exit 1 when the suspect is found to "
                                          "mirror the protected model."),
) -> None:
    """Does a suspect model mirror our model more than independent models do? (output correlation)"""
    from distillguard.compare.battery import CompareSettings, run_compare
    from distillguard.compare.models import open_model
    from distillguard.compare.probes import load_probes
    from distillguard.compare.report import write_reports

    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    settings = CompareSettings(samples=samples, max_tokens=max_tokens, temperature=temperature, embedder=embedder,
                               permutations=permutations, alpha=alpha, seed=seed, names=tuple(name or ()))
    settings.check()
    probe_list = load_probes(probes)
    key_set = None
    if keys is not None:
        from distillguard.watermark.keys import KeySet

        key_set = KeySet.load(keys)
    with err_console.status("loading models…", spinner="dots") as status:
        models = [open_model(spec, label, api_key=api_key) for spec, label in
                  [(protected, "protected"), (suspect, "suspect")]
                  + [(r, f"reference {i + 1}") for i, r in enumerate(reference or [])]]
        result = run_compare(models[0], models[1], models[2:], probe_list, settings, keys=key_set,
                             tokenizer_dir=str(tokenizer) if tokenizer else None,
                             progress=lambda message: status.update(message + "…"))
    data = result.to_dict()
    write_reports(data, json_path=out, html_path=html)
    if fmt == "json":
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        table = Table(title=f"compare: {len(probe_list)} probes × {samples} samples, {len(reference or [])} "
                            f"reference(s)")
        for col in ("test", "statistic", "p", "p (Holm)", "effect size", "stands out"):
            table.add_column(col, justify="left" if col == "test" else "right")
        for t in data["tests"]:
            if t["skipped"]:
                table.add_row(t["name"], f"[dim]skipped: {escape(t['skipped'])}[/dim]", "", "", "", "")
                continue
            holm_p = "" if t["p_value_holm"] is None else f"{t['p_value_holm']:.1e}"
            table.add_row(t["name"] + ("" if t["in_verdict"] else " (info)"), f"{t['statistic']:.4g}",
                          f"{t['p_value']:.1e}", holm_p, f"{t['effect_size']:.3g}",
                          {None: "–", True: "yes", False: "no"}[t["stands_out"]])
        console.print(table)
        console.print(f"verdict: [bold]{escape(data['verdict']['finding'])}[/bold]")
        for path, what in ((out, "JSON"), (html, "HTML report")):
            if path:
                console.print(f"{what} → {path}")
    if fail_on_findings and data["verdict"]["distilled"]:
        raise typer.Exit(1)
