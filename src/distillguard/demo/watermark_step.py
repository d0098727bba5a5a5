"""Demo step: each account's answers carry its cohort's watermark key; detection names it."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def run_watermark_demo(out: Path, console: Console, seed: int = 7) -> dict:
    """Serve a watermarked model over loopback HTTP, ask as three accounts, detect the cohorts."""
    import hashlib

    import httpx
    import torch

    from distillguard.gateway.server import ServerThread
    from distillguard.lab.tinylm import build_model, default_model_dir
    from distillguard.serve.hf import HFModelServer
    from distillguard.watermark.detect import TextRecord, detect
    from distillguard.watermark.keys import KeySet

    work = out / "watermark"
    model_dir = default_model_dir()
    if not (model_dir / "config.json").exists():
        model_dir = work / "model"
        with console.status("training a small model for the demo (the full default: 'distillguard lab build-model')…",
                            spinner="dots"):
            build_model(model_dir, seconds=20, vocab_size=1024, max_chars=400_000)
    # A demo key from the seed, so the demo is repeatable (real keys: 'distillguard watermark keygen').
    keys = KeySet(secret=hashlib.sha256(f"distillguard-demo-{seed}".encode()).digest(), cohorts=8)
    keys.save(work / "keys.json")
    torch.manual_seed(seed)
    server = HFModelServer(model_dir, keys=keys)
    accounts = {"farm-17": None, "alice": None, "bob (routed to 'watch' by the gateway)": "watch"}
    answers: dict[str, list[str]] = {a: [] for a in accounts}
    with ServerThread(server) as up, httpx.Client(base_url=up.url, timeout=120) as client:
        with console.status("asking the watermarked model as three accounts…", spinner="dots"):
            for account, routed in accounts.items():
                headers = {"x-distillguard-account": account.split()[0]}
                if routed:
                    headers["x-distillguard-cohort"] = routed
                for i in range(5):
                    r = client.post("/v1/chat/completions", headers=headers, json={
                        "max_tokens": 80, "messages": [{"role": "user", "content": f"Explain topic number {i}."}]})
                    r.raise_for_status()
                    answers[account].append(r.json()["choices"][0]["message"]["content"])
    clean = HFModelServer(model_dir, keys=None)
    answers["(unwatermarked model)"] = [clean.generate(f"User: Explain topic number {i}.\nAssistant:", max_tokens=80,
                                                       temperature=1.0, top_p=1.0, account="x")[0] for i in range(5)]
    vocab = server.model.config.vocab_size
    table = Table(title=f"watermark detection on 5 answers per account ({keys.total} cohort keys, Bonferroni)",
                  box=box.SIMPLE_HEAD)
    for col in ("account", "its cohort", "detected", "p-value"):
        table.add_column(col, justify="left" if col == "account" else "right")
    results = {}
    for account, texts in answers.items():
        top = detect([TextRecord(i + 1, f"{account}-{i}", text=t) for i, t in enumerate(texts)], keys, vocab,
                     server.tokenizer)["cohorts"][0]
        routed = accounts.get(account)
        expected = (None if account.startswith("(") else
                    keys.label(keys.cohort_index(routed)) if routed else keys.label(keys.cohort_of(account.split()[0])))
        found = top["label"] if top["p_value_corrected"] < 1e-3 else None
        results[account] = {"expected": expected, "detected": found, "p_value": top["p_value_corrected"]}
        table.add_row(escape(account), expected or "—", found or "none", f"{top['p_value_corrected']:.1e}")
    console.print(table)
    console.print(f"keys → {work / 'keys.json'}. Was a suspect model trained on these answers? See "
                  "'distillguard watermark radioactivity' and docs/watermarks.md.")
    return results
