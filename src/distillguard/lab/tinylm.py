"""The lab's tiny language models: a byte-level BPE tokenizer and a small causal LM trained here.

They stand in for a real checkpoint in tests and the demo (no model hub at run time). Everything
is saved in the Hugging Face layout, so the same loading code serves users' own checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE tokenizer trained on ``texts`` (a ``PreTrainedTokenizerFast``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL)


def save(tokenizer, model, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    if model is not None:
        model.save_pretrained(out)
    return out


def corpus_texts(max_chars: int = 3_000_000, skip: int = 0) -> list[str]:
    """ShareGPT exchanges as ``User: …\\nAssistant: …`` documents (the lab's organic corpus), from
    conversation ``skip`` on."""
    from distillguard.lab.corpus import load_corpus

    out, total = [], 0
    for conv in load_corpus()[skip:]:
        for human, assistant in conv.turns:
            doc = f"User: {human[:1000]}\nAssistant: {assistant[:2000]}{SPECIAL}"
            out.append(doc)
            total += len(doc)
            if total >= max_chars:
                return out
    return out


def build_model(out: str | Path, *, seconds: float = 180.0, vocab_size: int = 4096, max_chars: int = 3_000_000,
                seed: int = 0, skip: int = 0, tokenizer_dir: str | Path | None = None, steps: int | None = None,
                progress=None) -> dict:
    """Train the embedded default model: a byte-level BPE tokenizer and a 4-layer GPT-2 on ShareGPT.

    Trains for ``seconds`` of wall time, or ``steps`` steps with ``seconds`` as a cap (tests use
    steps, so a busy machine builds the same model); the result is small (~6 MB). Returns its
    metadata. With
    ``tokenizer_dir`` it reuses that model's tokenizer and trains only the network; with ``skip`` it
    reads ShareGPT from that conversation on. Together they build a *rival base model*: another
    organisation's own pretrained model, on text the default model never saw, sharing its tokenizer.
    """
    import json
    import math

    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    texts = corpus_texts(max_chars, skip=skip)
    if tokenizer_dir is not None:
        from distillguard.serve.hf import load_model

        tokenizer = load_model(tokenizer_dir)[0]
    else:
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    ids = np.concatenate([np.asarray(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64)
                          for t in texts])
    split = int(0.98 * ids.size)
    train, held = torch.from_numpy(ids[:split]), torch.from_numpy(ids[split:])
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=128, n_layer=4, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    step, losses, elapsed = train_lm(model, train, seconds=seconds, seed=seed, progress=progress, steps=steps)
    model.eval()
    held_loss = heldout_loss(model, held)
    meta = {"kind": "distillguard-tiny-lm", "corpus_skip": skip, "steps": step, "seconds": round(elapsed, 1),
            "train_tokens": int(train.numel()), "vocab_size": len(tokenizer),
            "train_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
            "heldout_loss": round(held_loss, 4), "heldout_perplexity": round(math.exp(held_loss), 2),
            "parameters": sum(p.numel() for p in model.parameters())}
    save(tokenizer, model, out)
    (Path(out) / "distillguard.json").write_text(json.dumps(meta, indent=2))
    return meta


def default_model_dir() -> Path:
    from distillguard.lab.corpus import cache_dir

    return cache_dir() / "tiny-lm-v1"


RIVAL_SKIP = 6000      # the rival's pretraining text starts here: past the teacher's and the distillation lab's


def rival_model_dir() -> Path:
    """Where ``lab build-model --rival`` puts the rival base model (the default model's tokenizer,
    pretrained on ShareGPT conversations the default model never saw)."""
    from distillguard.lab.corpus import cache_dir

    return cache_dir() / "tiny-lm-rival-v1"


def train_lm(model, ids, *, seconds: float, seed: int = 0, progress=None, block: int = 128, batch: int = 16,
             lr: float = 3e-3, steps: int | None = None) -> tuple[int, list[float], float]:
    """Train a causal LM on random windows of a token stream (AdamW, constant learning rate ``lr``)
    for ``steps`` steps, or for ``seconds`` of wall time (with ``steps`` too: whichever ends first)."""
    import time

    import numpy as np
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    block = min(block, ids.numel() - 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    start, step, losses = time.monotonic(), 0, []
    model.train()
    while time.monotonic() - start < seconds and (steps is None or step < steps):
        offsets = rng.integers(0, ids.numel() - block - 1, size=batch)
        x = torch.stack([ids[o:o + block] for o in offsets])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if progress is not None and step % 50 == 0:
            progress(step, float(np.mean(losses[-50:])))
    model.eval()
    return step, losses, time.monotonic() - start


def heldout_loss(model, ids, block: int = 128, chunks: int = 50) -> float:
    import numpy as np
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        parts = [ids[i:i + block] for i in range(0, ids.numel() - block, block)][:chunks]
        if not parts:
            return float("nan")
        return float(np.mean([float(model(input_ids=c[None], labels=c[None]).loss) for c in parts]))
