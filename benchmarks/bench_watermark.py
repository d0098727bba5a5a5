"""Watermark detection speed: our vectorised KGW detector against transformers' WatermarkDetector.

    python benchmarks/bench_watermark.py [--tokens 1000000] [--vocab 32000]

Token streams are Zipf-distributed over the vocabulary (as real text is). "Cold" includes
computing every green list the corpus needs (one torch.randperm per distinct context token);
"warm" is a second corpus scored with the lists already cached, the steady state of a detector
that scans traffic continuously. Both run on one core (torch and numpy limited to one thread).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import KGWDetector


def zipf_tokens(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    ranks = rng.zipf(1.2, size=n)
    return ((ranks - 1) % vocab).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--hf-tokens", type=int, default=5_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    keys = KeySet(secret=b"b" * 32, cohorts=1)
    detector = KGWDetector([keys.cohort_key(0)], args.vocab, keys.greenlist_ratio)
    texts = [zipf_tokens(rng, 500, args.vocab) for _ in range(args.tokens // 500)]
    t = time.perf_counter()
    detector.score_many(texts)
    cold = time.perf_counter() - t
    texts = [zipf_tokens(rng, 500, args.vocab) for _ in range(args.tokens // 500)]
    t = time.perf_counter()
    detector.score_many(texts)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for ids in texts[:200]:
        detector.score(ids)
    one_by_one = 200 * 500 / (time.perf_counter() - t)
    contexts = int((detector.tables[0].row_of >= 0).sum())
    print(f"ours: {args.tokens:,} tokens in texts of 500, vocab {args.vocab:,}: cold {args.tokens / cold:,.0f} tokens/s "
          f"({contexts:,} green lists computed), warm {args.tokens / warm:,.0f} tokens/s in one batch, "
          f"{one_by_one:,.0f} tokens/s text by text")

    from transformers import GPT2Config, WatermarkDetector, WatermarkingConfig

    hf = WatermarkDetector(model_config=GPT2Config(vocab_size=args.vocab, bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1), device="cpu",
                           watermarking_config=WatermarkingConfig(**keys.watermarking_config(0)),
                           ignore_repeated_ngrams=True)
    sample = [torch.tensor(zipf_tokens(rng, 500, args.vocab))[None, :] for _ in range(args.hf_tokens // 500)]
    t = time.perf_counter()
    for ids in sample:
        hf(ids, return_dict=True)
    hf_rate = args.hf_tokens / (time.perf_counter() - t)
    print(f"transformers.WatermarkDetector: {hf_rate:,.0f} tokens/s ({args.hf_tokens:,} tokens); "
          f"ours warm is {args.tokens / warm / hf_rate:,.0f}x faster")


if __name__ == "__main__":
    main()
