"""Shaping composed with the watermark on natural text: is a student of shaped, watermarked answers
still radioactive, and named to the right cohort?

The arithmetic lab's 17-symbol alphabet gives KGW too few distinct (context, token) pairs to find
anything, shaped or not. Here the teacher is the lab's tiny natural-text model (byte-level BPE,
4-layer GPT-2 on ShareGPT, ``lab/tinylm.py``); the proxy student is a much smaller GPT-2 with the
teacher's tokenizer, pretrained briefly on ShareGPT conversations the teacher never saw, its
held-out gradient taken on other unseen conversations. ``distill`` (``lab/distill.py``) then asks
the teacher, as one extracting account, in left-padded batches with the shaping processors ahead
of the account's KGW processor, and trains a student of another size from scratch on those
answers mixed with clean text. The open-weights radioactivity test (``reading_mode``) reads the
student on the answers it was trained on, against every cohort key and control keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

PROXY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
STUDENT = {"n_layer": 1, "n_embd": 64, "n_head": 2}      # a student that learns bigrams in seconds
PROXY_SKIP = 7000          # the proxy's pretraining text: past the teacher's, the distillation lab's and the rival's
HELDOUT_SKIP = 9000        # the "downstream" text the shaping protects: seen by nobody


def build_proxy(teacher_dir: str | Path, *, steps: int = 150, seed: int = 0, max_chars: int = 150_000) -> Any:
    """A small GPT-2 with the teacher's tokenizer, trained ``steps`` steps on unseen ShareGPT."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from distillguard.lab.tinylm import corpus_texts, train_lm
    from distillguard.serve.hf import load_model

    tokenizer, _ = load_model(teacher_dir)
    torch.manual_seed(seed)
    ids = np.concatenate([np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64)
                          for t in corpus_texts(max_chars, skip=PROXY_SKIP)])
    proxy = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, **PROXY,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    train_lm(proxy, ids, seconds=600, seed=seed, steps=steps)
    return proxy.eval()


def heldout_texts(n: int = 32) -> list[str]:
    from distillguard.lab.tinylm import corpus_texts

    return [t[:600] for t in corpus_texts(60_000, skip=HELDOUT_SKIP)[:n]]


def shaped_student_radioactivity(teacher_dir: str | Path, keys: Any, out: str | Path, *, mode: str = "antidistillation",
                                 strength: float = 0.3, seed: int = 0, total_tokens: int = 8000, share: float = 0.5,
                                 epochs: float = 60, proxy_steps: int = 150, max_tokens: int = 64,
                                 method: str = "distribution",
                                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one student on ``mode``-shaped (``None``: unshaped), watermarked answers and read it
    (``method``: ``distribution`` with the teacher as reference, the CLI's default, or ``greedy``;
    Bonferroni over the cohorts). Returns the verdict, the text detector on the answers,
    and how far the shaping moved the answers from the teacher: the teacher's mean loss per token
    on the answers it wrote (higher: the shaping pushed sampling off the teacher's own choices)."""
    import json
    import time

    from distillguard.lab.distill import distill
    from distillguard.serve.hf import load_model
    from distillguard.shaping.serving import Shaper
    from distillguard.watermark.kgw import KGWDetector
    from distillguard.watermark.radioactivity import reading_mode

    say = progress or (lambda m: None)
    tokenizer, _ = load_model(teacher_dir)
    shaper = None
    if mode is not None:
        proxy = build_proxy(teacher_dir, steps=proxy_steps, seed=seed)
        shaper = Shaper(proxy, tokenizer, strength=strength, heldout=heldout_texts())
    start = time.perf_counter()
    meta = distill(teacher_dir, keys, out, share=share, total_tokens=total_tokens, seconds=3600, epochs=epochs,
                   max_tokens=max_tokens, student_size=STUDENT, seed=seed, shaper=shaper, shape=mode,
                   progress=say)
    out = Path(out)
    texts = [json.loads(line)["text"] for line in (out / "teacher_answers.jsonl").read_text().splitlines()]
    _, student = load_model(out)
    _, teacher = load_model(teacher_dir)
    result = reading_mode(student, tokenizer, texts, keys, controls=20, method=method,
                          reference=teacher if method == "distribution" else None).to_dict()
    best = result["cohorts"][0]
    detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], int(teacher.config.vocab_size),
                           keys.greenlist_ratio)
    ids = [np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64) for t in texts]
    text_p = [detector.score_pooled(ids, c).p_value for c in range(keys.total)]
    return {"mode": mode, "strength": strength if mode else None, "seed": seed, "cohort": meta["cohort"],
            "watermarked_tokens": meta["watermarked_tokens"], "watermarked_share": round(meta["watermarked_share"], 3),
            "proxy_calls": shaper.shaper.proxy_calls if shaper and shaper.shaper else 0,
            "best_cohort": best["cohort"], "p_corrected": best["p_value_corrected"], "verdict": result["verdict"],
            "right_cohort": best["cohort"] == meta["cohort"], "method": result["method"],
            "text_best_cohort": int(np.argmin(text_p)), "text_p": float(min(text_p)), "teacher_loss_on_answers": round(_loss(teacher, tokenizer, texts), 4),
            "controls_below_0.01": result["controls"]["share_below_0.01"], "pairs": result["pairs_scored"],
            "seconds": round(time.perf_counter() - start, 1)}


def _loss(model: Any, tokenizer: Any, texts: list[str]) -> float:
    """Mean next-token loss of ``model`` over the tokens of ``texts``."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:256]])
            if ids.shape[1] < 2:
                continue
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / max(1, count)


def radioactivity_curve(teacher_dir: str | Path, workdir: str | Path, *, seeds: int = 3,
                        conditions: tuple[tuple[str | None, float], ...] = ((None, 0.0), ("antidistillation", 1.0)),
                        total_tokens: int = 8000, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """``shaped_student_radioactivity`` per seed (a fresh cohort key set per seed, so the cohort to
    name changes) and condition; the first condition should be unshaped (``None``): every shaped
    condition's answers are also told apart from its answers by ``lab.detectability_auc``."""
    import hashlib
    import json

    from distillguard.shaping.lab import detectability_auc
    from distillguard.watermark.keys import KeySet

    say = progress or (lambda m: None)
    rows = []
    for seed in range(seeds):
        keys = KeySet(secret=hashlib.sha256(f"shaping-radioactivity-{seed}".encode()).digest(), cohorts=6)
        plain: list[str] | None = None
        for mode, strength in conditions:
            out = Path(workdir) / f"seed{seed}-{mode or 'unshaped'}-{strength:g}"
            row = shaped_student_radioactivity(teacher_dir, keys, out, mode=mode, strength=strength, seed=seed,
                                               total_tokens=total_tokens)
            texts = [json.loads(line)["text"] for line in (out / "teacher_answers.jsonl").read_text().splitlines()]
            if mode is None:
                plain = texts
            elif plain is not None:
                n = min(len(plain), len(texts))
                row["detect_auc"] = round(detectability_auc(texts[:n], plain[:n], seed), 3)
            rows.append(row)
            say(json.dumps(row))
    return rows


def generation_cost(teacher_dir: str | Path, *, strength: float = 1.0, prompts: int = 16, max_tokens: int = 48,
                    repeats: int = 3, proxy_steps: int = 60) -> dict[str, Any]:
    """Milliseconds per generated token on the natural-text teacher (one left-padded batch of
    ``prompts``, as ``distill`` asks), unshaped vs antidistillation vs anchor; the repeats are
    interleaved and the fastest kept (robust on a shared machine). The proxy (1 layer × 32) is ~30×
    smaller than this teacher (4 layers × 128), the ratio the method assumes."""
    import time

    import torch

    from distillguard.lab.distill import _prompts_and_clean_text
    from distillguard.serve.hf import HFModelServer, chat_prompt
    from distillguard.shaping.serving import Shaper

    server = HFModelServer(teacher_dir, keys=None)
    proxy = build_proxy(teacher_dir, steps=proxy_steps)
    server.shaper = Shaper(proxy, server.tokenizer, strength=strength, heldout=heldout_texts())
    asks = [chat_prompt(server.tokenizer, [{"role": "user", "content": p}])
            for p in _prompts_and_clean_text(3000, n_prompts=prompts, clean_chars=0)[0]]
    best = {m: float("inf") for m in ("unshaped", "antidistillation", "anchor")}
    for _ in range(repeats):
        for mode in best:
            torch.manual_seed(0)
            start = time.perf_counter()
            texts = server.generate_batch(asks, max_tokens=max_tokens, temperature=1.0, account="cost",
                                          shape=None if mode == "unshaped" else mode)
            seconds = time.perf_counter() - start
            best[mode] = min(best[mode], 1000 * seconds / (len(texts) * max_tokens))
    params = {"teacher": sum(p.numel() for p in server.model.parameters()),
              "proxy": sum(p.numel() for p in proxy.parameters())}
    return {**{f"{k}_ms_per_token": round(v, 4) for k, v in best.items()},
            **{f"{k}_vs_unshaped": round(v / best["unshaped"], 2) for k, v in best.items() if k != "unshaped"},
            "parameters": params}
