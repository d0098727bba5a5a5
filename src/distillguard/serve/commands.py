"""`distillguard serve`: the reference OpenAI-compatible model server."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillguard.console import err_console
from distillguard.errors import UsageError


def serve(
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    model: Optional[Path] = typer.Option(None, "--model",
                                         help="Hugging Face causal LM directory ('default': the embedded tiny model). "
                                              "Without it: a fixed-completion backend."),
    watermark: Optional[str] = typer.Option(None, "--watermark", help="kgw, synthid or none (with --model; default: "
                                            "the key file's scheme, or none without --keys)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file (needed to watermark)."),
    cohorts: Optional[int] = typer.Option(None, "--cohorts", min=1, max=4096, help="With --keys naming a file that "
                                          "does not exist yet: create it with this many cohorts."),
    delay_ms: float = typer.Option(0.0, "--delay-ms", min=0.0, help="Fixed backend: wait this long before answering."),
    text: Optional[str] = typer.Option(None, "--text", help="Fixed backend: the completion text."),
    shape_proxy: Optional[Path] = typer.Option(None, "--shape-proxy", help="Shaping: a small proxy student (Hugging "
                                               "Face directory, the model's tokenizer) for antidistillation sampling "
                                               "when the gateway asks for it (docs/shaping.md)."),
    shape_heldout: Optional[Path] = typer.Option(None, "--shape-heldout", help="Shaping: held-out task texts (one "
                                                 "per line, or JSONL with 'text') whose loss the shaping raises."),
    shape_strength: float = typer.Option(0.3, "--shape-strength", min=0.0, help="Shaping: antidistillation "
                                         "strength (higher: students learn less, the model's own accuracy drops)."),
    shape_anchors: int = typer.Option(1, "--shape-anchors", min=0, help="Shaping, mode decoupled: reasoning steps "
                                      "perturbed per answer (the answer after </think> stays the unshaped one)."),
    shape_anchor_temperature: float = typer.Option(1.5, "--shape-anchor-temperature", min=0.01, help="Shaping, "
                                                   "mode decoupled: the temperature anchor steps are sampled at."),
) -> None:
    """Reference OpenAI-compatible model server: a watermarked Hugging Face model, or a fixed completion."""
    import uvicorn

    from distillguard.gateway.server import uvicorn_config

    if model is None:
        from distillguard.serve.fixed import DEFAULT_TEXT, FixedCompletionServer

        app_ = FixedCompletionServer(text=text or DEFAULT_TEXT, delay_s=delay_ms / 1000.0)
        err_console.print(f"fixed-completion model server on http://{host}:{port} (delay {delay_ms:g} ms)")
    else:
        from distillguard.lab.tinylm import default_model_dir
        from distillguard.serve.hf import HFModelServer
        from distillguard.watermark.keys import KeySet

        if watermark not in (None, "kgw", "synthid", "none"):
            raise UsageError(f"--watermark: expected kgw, synthid or none, got {watermark!r}")
        if watermark in ("kgw", "synthid") and keys is None:
            raise UsageError(f"--watermark {watermark} needs --keys (create one with 'distillguard watermark keygen', "
                             "or name a new file and give --cohorts)")
        key_set = None
        if keys is not None and watermark != "none":
            if not keys.exists() and cohorts is not None:
                KeySet.generate(cohorts=cohorts, scheme=watermark or "kgw").save(keys)
                err_console.print(f"created {keys} with {cohorts} cohort keys (keep it secret)")
            key_set = KeySet.load(keys)
            if cohorts is not None and cohorts != key_set.cohorts:
                raise UsageError(f"--cohorts {cohorts} but {keys} has {key_set.cohorts} cohorts (keys in use are "
                                 "not changed by accident)")
            key_set = key_set.with_scheme(watermark or key_set.scheme)
        watermark = key_set.scheme if key_set else "none"
        model_dir = default_model_dir() if str(model) == "default" else model
        if str(model) == "default" and not model_dir.exists():
            raise UsageError("the embedded default model is not built yet: run 'distillguard lab build-model'")
        app_ = HFModelServer(model_dir, keys=key_set)
        from distillguard.shaping.serving import Shaper

        if shape_proxy is not None:
            if shape_heldout is None:
                raise UsageError("--shape-proxy needs --shape-heldout (the task texts the shaping protects)")
            app_.shaper = Shaper.from_dirs(shape_proxy, shape_heldout, strength=shape_strength, anchors=shape_anchors,
                                           anchor_temperature=shape_anchor_temperature)
            if app_.shaper.tokenizer.get_vocab() != app_.tokenizer.get_vocab():
                raise UsageError("--shape-proxy: the proxy's tokenizer differs from the model's")
        else:
            app_.shaper = Shaper(None, app_.tokenizer, anchors=shape_anchors,      # summary and decoupled
                                 anchor_temperature=shape_anchor_temperature)      # need no proxy
        err_console.print(f"model server for {model_dir} on http://{host}:{port} "
                          f"(watermark {watermark}{f', {key_set.cohorts} cohorts' if key_set else ''})")
    uvicorn.Server(uvicorn_config(app_, host, port, log_level="warning")).run()
