"""`distillguard lab …`: simulated traffic, the embedded tiny model, distilled students."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from distillguard.console import console, err_console, progress_bar
from distillguard.errors import UsageError


app = typer.Typer(help="The traffic lab: simulated organic and extraction traffic.", no_args_is_help=True)


@app.command("traffic")
def lab_traffic(
    out: Path = typer.Option(..., "--out", help="Directory for events.jsonl.gz, labels.jsonl and manifest.json."),
    seed: int = typer.Option(1, "--seed", help="Random seed; the same seed gives the same traffic."),
    accounts: int = typer.Option(150, "--accounts", min=0, help="Organic (casual) pseudo-user accounts."),
    days: int = typer.Option(7, "--days", min=1, max=366, help="Days of traffic."),
    start: str = typer.Option("2026-10-05", "--start", help="UTC start date, YYYY-MM-DD."),
    campaigns: Optional[str] = typer.Option(
        None, "--campaigns",
        help="Comma-separated strategies (sweep,cot,rubric,agentic,replay,low_and_slow,hydra,mixed) and/or evasive "
             "families (see README; 'evasive' = all of them); default: the eight strategies. 'none' runs no campaign."),
    batch_per_day: int = typer.Option(1500, "--batch-per-day", min=0, help="Requests/day of each batch-app hard negative."),
    family_accounts: int = typer.Option(1, "--family-accounts", min=0,
                                        help="Instances of each evasive family (a swarm or a library group counts once)."),
    hard_negatives: int = typer.Option(0, "--hard-negatives", min=0,
                                       help="Accounts of each hard legitimate family (vuln_scanner, eval_harness, ...)."),
    legit_families: Optional[str] = typer.Option(None, "--legit-families",
                                                 help="Comma-separated legitimate families for --hard-negatives (default: all)."),
) -> None:
    """Simulate organic traffic (real ShareGPT conversations) and extraction campaigns."""
    from distillguard.lab.campaigns import default_campaigns
    from distillguard.lab.evasive import ATTACK_FAMILIES
    from distillguard.lab.legit import LEGIT_FAMILIES
    from distillguard.lab.traffic import TrafficConfig, generate

    specs, families = default_campaigns(), []
    if campaigns is not None:
        wanted = [c.strip() for c in campaigns.split(",") if c.strip()]
        if wanted == ["none"]:
            specs = []
        else:
            known = {s.strategy for s in specs}
            wanted = [f for w in wanted for f in (ATTACK_FAMILIES if w == "evasive" else (w,))]
            unknown = [w for w in wanted if w not in known and w not in ATTACK_FAMILIES]
            if unknown:
                raise UsageError(f"--campaigns: unknown strategy or family '{unknown[0]}' (choose from "
                                 f"{', '.join(sorted(known))}, evasive, {', '.join(ATTACK_FAMILIES)})")
            specs = [s for s in specs if s.strategy in wanted]
            families = [w for w in wanted if w in ATTACK_FAMILIES]
    legit = ([c.strip() for c in legit_families.split(",") if c.strip()] if legit_families
             else list(LEGIT_FAMILIES)) if hard_negatives else []
    config = TrafficConfig(seed=seed, accounts=accounts, days=days, start=start, campaigns=tuple(specs),
                           batch_per_day=batch_per_day, families=tuple(families), family_instances=family_accounts,
                           legit_families=tuple(legit), legit_accounts=hard_negatives)
    with progress_bar() as progress:
        task = progress.add_task("generating traffic", total=None)
        summary = generate(config, out, progress=lambda n: progress.update(task, completed=n))
    table = Table(title=f"lab traffic → {out}")
    table.add_column("family")
    table.add_column("accounts", justify="right")
    for strategy, n in sorted(summary.by_kind.items()):
        table.add_row(strategy, str(n))
    console.print(table)
    console.print(f"{summary.events:,} events from {summary.accounts:,} accounts → {summary.events_path}; "
                  f"labels → {summary.labels_path}")


@app.command("build-model")
def lab_build_model(
    out: Optional[Path] = typer.Option(None, "--out", help="Model directory (default: the embedded default's cache)."),
    seconds: float = typer.Option(180.0, "--seconds", min=1.0, help="Wall-clock training budget."),
    vocab_size: int = typer.Option(4096, "--vocab-size", min=300, max=65536, help="BPE vocabulary size."),
    seed: int = typer.Option(0, "--seed"),
    rival: bool = typer.Option(False, "--rival", help="Build the rival base model instead: the default model's "
                               "tokenizer, pretrained on ShareGPT text the default model never saw (a student "
                               "base for 'lab distill --base rival')."),
) -> None:
    """Train the embedded default model (tiny GPT-2 + BPE tokenizer on ShareGPT), in Hugging Face layout."""
    from distillguard.lab.tinylm import RIVAL_SKIP, build_model, default_model_dir, rival_model_dir

    if rival and not default_model_dir().exists():
        raise UsageError("the rival base shares the default model's tokenizer: run 'distillguard lab build-model' first")
    target = out or (rival_model_dir() if rival else default_model_dir())
    extra = {"skip": RIVAL_SKIP, "tokenizer_dir": default_model_dir()} if rival else {}
    with err_console.status("training the tiny language model…", spinner="dots") as status:
        meta = build_model(target, seconds=seconds, vocab_size=vocab_size, seed=seed + (1 if rival else 0), **extra,
                           progress=lambda step, loss: status.update(f"training: step {step:,}, loss {loss:.3f}"))
    console.print(f"{meta['parameters']:,} parameters, {meta['steps']:,} steps in {meta['seconds']} s; held-out "
                  f"perplexity {meta['heldout_perplexity']:,} → {target}")


@app.command("distill")
def lab_distill(
    out: Path = typer.Option(..., "--out", help="Directory for the student (Hugging Face layout) and its data."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file the teacher serves with."),
    teacher: Path = typer.Option(Path("default"), "--teacher", help="Teacher model directory ('default': tiny model)."),
    share: float = typer.Option(0.05, "--share", min=0.0, max=1.0,
                                help="Share of the student's training tokens that are watermarked teacher answers."),
    tokens: int = typer.Option(200_000, "--tokens", min=1000, help="Student training tokens in all."),
    seconds: float = typer.Option(120.0, "--seconds", min=1.0, help="Student training budget (wall clock)."),
    account: str = typer.Option("student-farm", "--account", help="The extracting account (decides the cohort)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Fine-tune this model instead of training from scratch "
                                        "('rival': the rival base from 'lab build-model --rival')."),
    through_gateway: bool = typer.Option(False, "--through-gateway", help="Collect the teacher's answers over "
                                         "loopback HTTP through a shadow-mode gateway, as a real farm would (slower; "
                                         "also reports the gateway's verdict on the farm)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a student on watermarked teacher answers mixed into other text (share 0: a control)."""
    from distillguard.lab.distill import distill
    from distillguard.lab.tinylm import default_model_dir, rival_model_dir
    from distillguard.watermark.keys import KeySet

    if share > 0 and keys is None:
        raise UsageError("--share > 0 needs --keys (the teacher's watermark keys)")
    teacher_dir = default_model_dir() if str(teacher) == "default" else teacher
    if not teacher_dir.exists():
        raise UsageError(f"no teacher model at {teacher_dir} (run 'distillguard lab build-model')")
    if base is not None and str(base) == "rival":
        base = rival_model_dir()
        if not base.exists():
            raise UsageError(f"no rival base model at {base} (run 'distillguard lab build-model --rival')")
    key_set = KeySet.load(keys) if keys else None
    with err_console.status("distilling…", spinner="dots") as status:
        meta = distill(teacher_dir, key_set, out, share=share, total_tokens=tokens, seconds=seconds,
                       account=account, seed=seed, base=base, through_gateway=through_gateway,
                       progress=lambda m: status.update(m))
    console.print(f"student → {out}: {meta['train_tokens']:,} tokens ({meta['watermarked_share']:.1%} watermarked, "
                  f"cohort {meta['cohort']}), {meta['steps']:,} steps; teacher answers → {out / 'teacher_answers.jsonl'}")
    verdict = meta.get("gateway_verdict")
    if verdict:
        console.print(f"the gateway (shadow mode) saw {verdict['queries']:,} queries from {account}: "
                      + (f"flagged ({', '.join(verdict['reasons']) or verdict['status']}); it would have acted from "
                         f"request #{verdict['first_non_allow_decision_at']}" if verdict["flagged"] else "not flagged"))
