"""Watermark figures on the embedded default model: radioactivity at a 5 % share, controls,
detection AUC at 100 tokens, generation overhead and perplexity.

    python benchmarks/bench_radioactivity.py [--share 0.05] [--tokens 400000] [--seconds 300] [--repeats 1]
                                             [--base rival|scratch] [--control-keys 200] [--skip-students]

Needs the default model (``distillguard lab build-model``); the rival base model (the students'
starting point) is built on first use (``distillguard lab build-model --rival``, 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distillguard.lab.distill import distill
from distillguard.lab.tinylm import RIVAL_SKIP, build_model, default_model_dir, rival_model_dir
from distillguard.serve.hf import HFModelServer, chat_prompt, load_model
from distillguard.watermark.detect import TextRecord, detect
from distillguard.watermark.keys import KeySet
from distillguard.watermark.radioactivity import reading_mode


def auc(pos: list[float], neg: list[float]) -> float:
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


def perplexity(model, tokenizer, texts: list[str]) -> float:
    losses = []
    with torch.no_grad():
        for t in texts:
            ids = tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :256]
            if ids.shape[1] >= 2:
                losses.append(float(model(input_ids=ids, labels=ids).loss))
    return math.exp(float(np.mean(losses)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--tokens", type=int, default=400_000, help="student training tokens in all")
    parser.add_argument("--seconds", type=float, default=300.0, help="student training budget")
    parser.add_argument("--base", choices=("rival", "scratch"), default="rival",
                        help="students fine-tune the rival base model, or train from scratch")
    parser.add_argument("--control-keys", type=int, default=200, help="fresh keys tested on every student")
    parser.add_argument("--texts", type=int, default=40, help="generations per arm for AUC / overhead / perplexity")
    parser.add_argument("--repeats", type=int, default=1, help="student pairs (watermarked + control) to train")
    parser.add_argument("--skip-students", action="store_true", help="only detection, overhead and perplexity")
    args = parser.parse_args()
    model_dir = default_model_dir()
    keys = KeySet(secret=b"benchmark-secret-for-radioactivity", cohorts=8)
    work = Path(tempfile.mkdtemp(prefix="dg-radio-"))

    # Text detection, overhead, quality.
    wm = HFModelServer(model_dir, keys=keys)
    clean = HFModelServer(model_dir, keys=None)
    prompts = [chat_prompt(wm.tokenizer, [{"role": "user", "content": f"Tell me something about topic {i}."}])
               for i in range(args.texts)]
    for server in (wm, clean):          # warm-up
        server.generate(prompts[0], max_tokens=8, temperature=1.0, top_p=1.0, account="x")
    # Interleaved (one watermarked, one clean generation in turn) so machine drift hits both alike.
    rates, outs = {}, {"watermarked": [], "clean": []}
    spent, made = {"watermarked": 0.0, "clean": 0.0}, {"watermarked": 0, "clean": 0}
    for i, prompt in enumerate(prompts):
        for name, server in (("watermarked", wm), ("clean", clean)):
            torch.manual_seed(i)
            start = time.perf_counter()
            text, _, k, _ = server.generate(prompt, max_tokens=100, temperature=1.0, top_p=1.0, account=f"user-{i}")
            spent[name] += time.perf_counter() - start
            made[name] += k
            outs[name].append(text)
    rates = {name: made[name] / spent[name] for name in made}
    scores = {}
    for name, texts in outs.items():
        recs = [TextRecord(i + 1, f"{name}-{i}", text=t) for i, t in enumerate(texts)]
        res = detect(recs, keys, wm.model.config.vocab_size, wm.tokenizer)
        scores[name] = [t["z"] for t in res["texts"]]
    print(f"generation: watermarked {rates['watermarked']:,.0f} tokens/s, clean {rates['clean']:,.0f} tokens/s "
          f"(overhead {1 - rates['watermarked'] / rates['clean']:.1%})")
    print(f"detection AUC at 100 tokens (best-cohort z, watermarked vs clean generations): "
          f"{auc(scores['watermarked'], scores['clean']):.3f}")
    print(f"perplexity under the default model: watermarked {perplexity(wm.model, wm.tokenizer, outs['watermarked']):.1f}, "
          f"clean {perplexity(wm.model, wm.tokenizer, outs['clean']):.1f}")

    # Radioactivity.
    if args.skip_students:
        return
    base = None
    if args.base == "rival":
        base = rival_model_dir()
        if not base.exists():
            print("building the rival base model (once)…")
            build_model(base, seconds=240, skip=RIVAL_SKIP, tokenizer_dir=model_dir, seed=1)
    results, control_p = [], []
    for r in range(args.repeats):
        for share in (args.share, 0.0):
            out = work / f"student-{r}-{share}"
            start = time.perf_counter()
            meta = distill(model_dir, keys, out, share=share, total_tokens=args.tokens, seconds=args.seconds,
                           account=f"farm-{r}", seed=r, base=base)
            built = time.perf_counter() - start
            reading = [json.loads(x)["text"] for x in
                       (work / f"student-{r}-{args.share}" / "teacher_answers.jsonl").read_text().splitlines()]
            tok, student = load_model(out)
            for method in ("distribution", "greedy"):
                start = time.perf_counter()
                res = reading_mode(student, tok, reading, keys, controls=args.control_keys, method=method).to_dict()
                took = time.perf_counter() - start
                best = res["cohorts"][0]
                truth = keys.cohort_of(f"farm-{r}")
                if method == "distribution":
                    control_p += res["controls"]["p_values"]
                results.append({"repeat": r, "share": share, "method": method, "cohort_truth": truth,
                                "cohort_named": best["cohort"], "p_corrected": best["p_value_corrected"],
                                "pairs": res["pairs_scored"], "steps": meta["steps"], "epochs": meta["epochs"],
                                "watermarked_tokens": meta["watermarked_tokens"], "train_tokens": meta["train_tokens"],
                                "controls_below_0.01": res["controls"]["share_below_0.01"], "seconds": round(took, 1)})
                print(f"student {r} share {share:.0%} ({meta['watermarked_tokens']:,} watermarked of "
                      f"{meta['train_tokens']:,} tokens, {meta['epochs']} epochs, {built:.0f} s to build), {method}: "
                      f"{res['pairs_scored']:,} pairs; best cohort {best['cohort']} (truth {truth}), corrected p = "
                      f"{best['p_value_corrected']:.2e} (z {best['z']:.2f}); fresh keys below p = 0.01: "
                      f"{res['controls']['share_below_0.01']:.1%} of {args.control_keys}; read in {took:.1f} s",
                      flush=True)
    control_p = np.asarray(control_p)
    if control_p.size:
        print(f"fresh keys over all students: {(control_p > 0.01).mean():.2%} of {control_p.size} with p > 0.01")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
