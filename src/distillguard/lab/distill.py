"""The distillation lab: train students on a mix of watermarked teacher outputs and other text.

``distill`` asks the watermarked teacher (the same serving code as ``distillguard serve``) to
answer real ShareGPT prompts as one extracting account, so every answer carries that account's
cohort key. It mixes those answers into unwatermarked ShareGPT text at a chosen token share,
and trains a student from scratch with the teacher's architecture and tokenizer. With
``share = 0`` it trains the control student. It saves the student and the teacher answers it
was trained on, which are what the open-weights radioactivity test reads. This lets users check
on their own models whether a watermark survives distillation.

The student starts from scratch (the teacher's architecture) or, with ``base``, from another
model: the realistic case, where a rival fine-tunes its own pretrained model on our answers
(``distillguard lab build-model --rival`` builds one on text the teacher never saw).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distillguard.errors import BadInputError
from distillguard.watermark.keys import KeySet


def _prompts_and_clean_text(skip: int, n_prompts: int, clean_chars: int) -> tuple[list[str], list[str]]:
    """Human prompts and assistant text from a part of ShareGPT the default model did not train on."""
    from distillguard.lab.corpus import load_corpus
    from distillguard.lab.tinylm import SPECIAL

    prompts, clean, total = [], [], 0
    for conv in load_corpus()[skip:]:
        for human, assistant in conv.turns:
            if len(prompts) < n_prompts and 20 <= len(human) <= 400:
                prompts.append(human)
            elif total < clean_chars:
                doc = f"User: {human[:500]}\nAssistant: {assistant[:1500]}{SPECIAL}"
                clean.append(doc)
                total += len(doc)
        if len(prompts) >= n_prompts and total >= clean_chars:
            break
    return prompts, clean


def collect_through_gateway(teacher: Any, prompts: list[str], *, account: str, max_tokens: int, target_tokens: int,
                            workdir: Path, progress: Callable[[str], None] | None = None) -> tuple[list[str], dict]:
    """Ask ``prompts`` as ``account`` through a real gateway (shadow mode: it logs and scores every
    exchange but lets the farm through) in front of the served teacher, over loopback HTTP, until
    ``target_tokens`` answer tokens are collected. Returns the answers and the gateway's live
    verdict on the account (what it would have done in enforce mode)."""
    import httpx
    import orjson

    from distillguard.gateway.admin import account_view
    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.server import ServerThread

    say = progress or (lambda message: None)
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = f"sk-lab-{account}"
    (workdir / "keys.json").write_bytes(orjson.dumps({api_key: account}))
    cfg = load_config(None, keys=workdir / "keys.json", db=workdir / "gateway.duckdb", upstream="http://127.0.0.1:1")
    cfg.policy.mode = "shadow"
    cfg.log.dir = workdir / "gateway-log"
    answers, collected, first_flag = [], 0, None
    with ServerThread(teacher) as upstream:
        cfg.upstream = upstream.url
        gateway = Gateway(cfg)
        with ServerThread(build_app(gateway)) as server, httpx.Client(base_url=server.url, timeout=300) as client:
            for i, prompt in enumerate(prompts):
                if collected >= target_tokens:
                    break
                r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {api_key}"},
                                json={"model": "teacher", "max_tokens": max_tokens, "temperature": 1.0,
                                      "messages": [{"role": "user", "content": prompt}]})
                if r.status_code != 200:
                    raise BadInputError(f"the gateway answered HTTP {r.status_code}: {r.text[:200]}")
                body = r.json()
                text = body["choices"][0]["message"]["content"] or ""
                if first_flag is None and r.headers.get("x-distillguard-action", "allow") != "allow":
                    first_flag = i + 1
                if body["usage"]["completion_tokens"] >= 2:
                    answers.append(text)
                    collected += body["usage"]["completion_tokens"]
                if i % 20 == 0:
                    say(f"teacher answers through the gateway: {collected:,} / {target_tokens:,} tokens")
            view = account_view(gateway, account) or {}
    verdict = {"queries": view.get("queries", 0), "flagged": view.get("flagged", False),
               "status": view.get("status"), "first_non_allow_decision_at": first_flag,
               "reasons": [r.get("code") for r in view.get("reasons", [])]}
    return answers, verdict


def distill(teacher_dir: str | Path, keys: KeySet | None, out: str | Path, *, share: float = 0.05,
            total_tokens: int = 200_000, seconds: float = 120.0, account: str = "student-farm", seed: int = 0,
            max_tokens: int = 96, corpus_skip: int = 3000, student_size: dict[str, int] | None = None,
            base: str | Path | None = None, lr: float | None = None, batch: int = 32,
            through_gateway: bool = False, epochs: float | None = None, shaper: Any = None,
            shape: str | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one student; ``student_size`` overrides the teacher's ``n_layer``/``n_embd``/``n_head``
    (from scratch only); ``base`` is a model directory to fine-tune instead; ``lr`` defaults to 3e-3
    from scratch and 1e-3 for fine-tuning; ``batch`` teacher prompts are generated at once, or, with
    ``through_gateway``, one request at a time over HTTP through a shadow-mode gateway, as a real
    extraction farm would collect them (the gateway's verdict on the farm is saved too). With
    ``epochs`` the student trains that many passes over its data (``seconds`` is then only a cap),
    so results do not depend on how busy the machine is. With ``shaper`` (a
    ``distillguard.shaping.serving.Shaper``) and ``shape`` (a mode), the teacher's answers are shaped
    as the gateway's ``shape`` action would have them shaped for a flagged account (direct
    collection only)."""
    import torch
    from transformers import GPT2LMHeadModel

    from distillguard.lab.tinylm import heldout_loss, save, train_lm
    from distillguard.serve.hf import HFModelServer, chat_prompt

    say = progress or (lambda message: None)
    torch.manual_seed(seed)
    teacher = HFModelServer(teacher_dir, keys=keys, shaper=shaper)
    tokenizer = teacher.tokenizer
    wm_target = int(total_tokens * share)
    prompts, clean = _prompts_and_clean_text(corpus_skip, n_prompts=max(1, wm_target // 40 + 10),
                                             clean_chars=total_tokens * 6)
    answers: list[str] = []
    wm_ids: list[np.ndarray] = []
    wm_count = 0
    gateway_verdict = None
    if through_gateway and wm_target > 0:
        answers, gateway_verdict = collect_through_gateway(teacher, prompts, account=account, max_tokens=max_tokens,
                                                           target_tokens=wm_target, workdir=Path(out) / "gateway",
                                                           progress=say)
        for text in answers:
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            wm_ids.append(ids)
            wm_count += ids.size
    for start in range(0, 0 if through_gateway else len(prompts), batch):
        if wm_count >= wm_target:
            break
        texts = teacher.generate_batch([chat_prompt(tokenizer, [{"role": "user", "content": p}])
                                        for p in prompts[start:start + batch]],
                                       max_tokens=max_tokens, temperature=1.0, top_p=1.0, account=account,
                                       shape=shape)
        for text in texts:
            if wm_count >= wm_target:
                break
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            if ids.size < 2:
                continue
            answers.append(text)
            wm_ids.append(ids)
            wm_count += ids.size
        say(f"teacher answers: {wm_count:,} / {wm_target:,} watermarked tokens")
    clean_ids: list[np.ndarray] = []
    clean_count = 0
    for doc in clean:
        if clean_count >= total_tokens - wm_count:
            break
        ids = np.asarray(tokenizer(doc, add_special_tokens=False)["input_ids"], dtype=np.int64)
        clean_ids.append(ids)
        clean_count += ids.size
    rng = np.random.default_rng(seed)
    docs = wm_ids + clean_ids
    order = rng.permutation(len(docs))
    stream = np.concatenate([docs[i] for i in order]) if docs else np.zeros(0, dtype=np.int64)
    split = int(0.98 * stream.size)
    say(f"training the student on {stream.size:,} tokens ({wm_count / max(1, stream.size):.1%} watermarked)")
    if base is not None:
        from distillguard.serve.hf import load_model

        base_tokenizer, student = load_model(base)
        if base_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise BadInputError("the base model's tokenizer differs from the teacher's", source=str(base))
        lr = lr or 1e-3
    else:
        config = teacher.model.config.to_dict()
        config.update(student_size or {})
        student = GPT2LMHeadModel(teacher.model.config.__class__(**config))
        lr = lr or 3e-3
    steps_wanted = None if epochs is None else max(1, int(epochs * split / (16 * 128)))
    steps, losses, elapsed = train_lm(student, stream[:split], seconds=seconds, seed=seed, lr=lr, steps=steps_wanted,
                                      progress=lambda step, loss: say(f"training the student: step {step:,}, "
                                                                      f"loss {loss:.3f}"))
    out = Path(out)
    save(tokenizer, student, out)
    (out / "teacher_answers.jsonl").write_text("".join(json.dumps({"text": a}) + "\n" for a in answers))
    meta = {"kind": "distillguard-student", "teacher": str(teacher_dir), "account": account,
            "base": str(base) if base is not None else None, "epochs": round(steps * 16 * 128 / max(1, split), 2),
            "cohort": keys.cohort_of(account) if keys else None, "watermarked_share": wm_count / max(1, stream.size),
            "watermarked_tokens": int(wm_count), "train_tokens": int(split), "steps": steps,
            "seconds": round(elapsed, 1), "heldout_loss": round(heldout_loss(student, stream[split:]), 4),
            "collected": "through the gateway (shadow mode)" if gateway_verdict is not None else "direct",
            "shape": shape if shaper is not None and not through_gateway else None,
            "gateway_verdict": gateway_verdict}
    (out / "distillguard.json").write_text(json.dumps(meta, indent=2))
    return meta
