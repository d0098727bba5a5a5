"""The lab's tiny language model: trained here, saved and loaded in Hugging Face layout."""

from __future__ import annotations

import json

import torch

from distillguard.lab.tinylm import build_model


def test_build_model_saves_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = build_model(tmp_path / "m", seconds=3, vocab_size=512, max_chars=150_000)
    assert meta["steps"] >= 1 and meta["vocab_size"] == 512 and meta["heldout_loss"] > 0
    assert json.loads((tmp_path / "m" / "distillguard.json").read_text())["kind"] == "distillguard-tiny-lm"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    ids = tokenizer("User: hello there\nAssistant:", return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(ids, do_sample=True, max_new_tokens=10, min_new_tokens=10,
                         pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == ids.shape[1] + 10
    assert tokenizer.decode(ids[0]) == "User: hello there\nAssistant:"      # byte-level BPE round-trips
