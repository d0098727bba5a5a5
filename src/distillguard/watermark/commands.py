"""`distillguard watermark …`: keys, detection in text, radioactivity of suspect models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from distillguard.console import console, err_console
from distillguard.errors import BadInputError, UsageError


app = typer.Typer(help="Watermarks: keys, detection in text, radioactivity of suspect models.",
                  no_args_is_help=True)


@app.command("keygen")
def watermark_keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the key file (owner-only permissions)."),
    cohorts: int = typer.Option(8, "--cohorts", min=1, max=4096, help="Account cohorts, one watermark key each."),
    greenlist_ratio: float = typer.Option(0.25, "--greenlist-ratio", help="KGW green-list share of the vocabulary."),
    bias: float = typer.Option(2.0, "--bias", help="KGW logit bias added to green tokens."),
    scheme: str = typer.Option("kgw", "--scheme", help="Default scheme for serving and detection: kgw or synthid "
                               "(keys for both derive from the one secret)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key file."),
) -> None:
    """Create a watermark key set (one secret; per cohort a KGW key and SynthID keys)."""
    from distillguard.watermark.keys import KeySet

    if out.exists() and not force:
        raise UsageError(f"{out} exists; keys in use must not be replaced by accident (--force overwrites)")
    keys = KeySet.generate(cohorts=cohorts, greenlist_ratio=greenlist_ratio, bias=bias, scheme=scheme)
    keys.save(out)
    console.print(f"wrote {cohorts} cohort keys ({scheme}) → {out} (keep it secret)")


@app.command("detect")
def watermark_detect(
    source: str = typer.Argument("-", help="JSON Lines of texts ('token_ids', 'text' or event records), or - for stdin."),
    keys: Path = typer.Option(..., "--keys", help="Watermark key file (from 'watermark keygen')."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="Model or tokenizer directory (needed for 'text' records)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", min=2,
                                             help="The model's vocabulary size (default: from --tokenizer)."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="kgw or synthid (default: the key file's)."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    limit: int = typer.Option(20, "--limit", min=1, help="Rows in the table."),
) -> None:
    """Score texts for our watermark: z-score and exact p-value per text and per cohort."""
    from distillguard.watermark.detect import detect, load_tokenizer, read_records
    from distillguard.watermark.keys import SCHEMES, KeySet

    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    if scheme is not None and scheme not in SCHEMES:
        raise UsageError(f"--scheme: expected kgw or synthid, got {scheme!r}")
    key_set = KeySet.load(keys)
    key_set = key_set.with_scheme(scheme or key_set.scheme)
    tok = None
    if tokenizer is not None:
        tok, vocab = load_tokenizer(tokenizer)
        vocab_size = vocab_size or vocab
    if vocab_size is None:
        raise UsageError("give --tokenizer (or --vocab-size for records that carry token_ids)")
    records = list(read_records(source))
    if not records:
        raise BadInputError("no texts to score", source=source)
    result = detect(records, key_set, vocab_size, tok)
    if fmt == "json":
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table(title=f"watermark scores ({len(records):,} texts, best of {key_set.cohorts} cohort keys, "
                        f"p-values Bonferroni-corrected)")
    for col in ("text", "tokens", "cohort", "green / scored" if key_set.scheme == "kgw" else "g=1 / scored", "z", "p"):
        table.add_column(col, justify="left" if col == "text" else "right")
    for t in sorted(result["texts"], key=lambda r: r["p_value"])[:limit]:
        table.add_row(escape(t["id"][:40]), f"{t['tokens']:,}", str(t["cohort"]), f"{t['green']:,} / {t['scored']:,}",
                      f"{t['z']:.2f}", f"{t['p_value']:.1e}")
    console.print(table)
    top = result["cohorts"][0]
    console.print(f"whole corpus: most likely cohort {top['cohort']} (z = {top['z']:.2f}, "
                  f"p = {top['p_value_corrected']:.1e} after correcting for {key_set.cohorts} cohorts)")


@app.command("radioactivity")
def watermark_radioactivity(
    keys: Path = typer.Option(..., "--keys", help="Watermark key file."),
    suspect_model: Optional[Path] = typer.Option(None, "--suspect-model",
                                                 help="Open weights: the suspect's Hugging Face model directory."),
    suspect_url: Optional[str] = typer.Option(None, "--suspect-url",
                                              help="Black box: the suspect's OpenAI-compatible base URL."),
    texts: Path = typer.Option(..., "--texts",
                               help="JSON Lines: our watermarked outputs (open weights) or the prompts (black box)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="Our model's directory (tokenizer; default: the suspect's)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DISTILLGUARD_SUSPECT_API_KEY",
                                          help="Black box: bearer token for the suspect endpoint."),
    suspect_name: str = typer.Option("suspect", "--suspect-name", help="Black box: the model name to ask for."),
    controls: int = typer.Option(20, "--controls", min=0, max=1000, help="Control keys (never used) to test too."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Open weights, distribution: our own model's "
                                             "directory ('default': the embedded model); its probabilities are "
                                             "subtracted from the suspect's, which removes most of the noise."),
    method: str = typer.Option("distribution", "--method", help="Open weights: 'distribution' (the suspect's "
                               "next-token probabilities; most power) or 'greedy' (its greedy predictions, exact "
                               "binomial test, as Sander et al.)."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Was a suspect model trained on our watermarked outputs? Names the leaking cohort."""
    import asyncio

    from distillguard.serve.hf import load_model
    from distillguard.watermark.detect import load_tokenizer, read_records
    from distillguard.watermark.keys import KeySet
    from distillguard.watermark.radioactivity import black_box, query_suspect, reading_mode

    if (suspect_model is None) == (suspect_url is None):
        raise UsageError("give exactly one of --suspect-model (open weights) or --suspect-url (black box)")
    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    if method not in ("distribution", "greedy"):
        raise UsageError(f"--method: expected distribution or greedy, got {method!r}")
    key_set = KeySet.load(keys).with_scheme("kgw")   # radioactivity tests the KGW keys (see docs/watermarks.md)
    records = [r for r in read_records(texts) if r.text]
    if not records:
        raise BadInputError("no texts (records with 'text') to use", source=str(texts))
    if suspect_model is not None:
        tok, model = load_model(suspect_model)
        if tokenizer is not None:
            tok, _ = load_tokenizer(tokenizer)
        ref_model = None
        if reference is not None:
            from distillguard.lab.tinylm import default_model_dir

            ref_model = load_model(default_model_dir() if str(reference) == "default" else reference)[1]
        with err_console.status("reading our texts through the suspect…", spinner="dots") as status:
            result = reading_mode(model, tok, [r.text for r in records], key_set, controls=controls, method=method,
                                  reference=ref_model,
                                  progress=lambda n: status.update(f"reading our texts through the suspect: "
                                                                   f"{n:,} / {len(records):,}"))
    else:
        if tokenizer is None:
            raise UsageError("black box needs --tokenizer (our model's directory) to tokenise the answers")
        tok, vocab = load_tokenizer(tokenizer)
        prompts = [r.text for r in records]
        with err_console.status(f"asking the suspect {len(prompts):,} prompts…", spinner="dots"):
            answers = asyncio.run(query_suspect(suspect_url, prompts, model=suspect_name, api_key=api_key))
        result = black_box(answers, prompts, tok, vocab, key_set, controls=controls)
    data = result.to_dict()
    if fmt == "json":
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"radioactivity ({data['mode']}, {data['method']}: {data['pairs_scored']:,} distinct token "
                        f"pairs scored)")
    mass = data["method"] == "distribution"
    for col in ("cohort", "green mass / mass" if mass else "green / scored", "z", "p", "p (corrected)"):
        table.add_column(col, justify="right")
    for c in data["cohorts"][:10]:
        share = (f"{c['green_mass']:,.1f} / {data['mass_scored']:,.1f}" if mass
                 else f"{c['green']:,} / {c['scored']:,}")
        table.add_row(str(c["cohort"]), share, f"{c['z']:.2f}", f"{c['p_value']:.1e}", f"{c['p_value_corrected']:.1e}")
    console.print(table)
    ctl = data["controls"]
    console.print(f"verdict: [bold]{data['verdict']}[/bold]"
                  + (f" (cohort {data['cohorts'][0]['cohort']})" if data["verdict"] == "radioactive" else "")
                  + (f"; control keys: {ctl['share_below_0.01']:.0%} of {ctl['keys']} below p = 0.01 (expect ~1%)"
                     if ctl["keys"] else ""))
