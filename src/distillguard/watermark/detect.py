"""`watermark detect`: which texts carry our watermark, and whose cohort's key.

Input is JSON Lines: one object per text with ``token_ids`` (a list of ints), or ``text``, or an
event record (its ``response`` text is scored); a line that is not a JSON object is scored as
plain text. Texts are tokenised with the model's own tokenizer (``add_special_tokens=False``).

Each text is scored against every cohort key (KGW green-list hits, or SynthID g-values: see
``synthid.py``). Its p-value is the best cohort's exact binomial
p-value, Bonferroni-corrected for the number of cohorts. The corpus is also scored as a whole
per cohort (counts pooled over texts), which is what names a leaking cohort when each text alone
is short.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from distillguard.errors import BadInputError
from distillguard.events.schema import response_text
from distillguard.watermark.keys import KeySet
from distillguard.watermark.kgw import KGWDetector


@dataclass
class TextRecord:
    line: int
    ident: str
    token_ids: list[int] | None = None
    text: str | None = None


def read_records(path: str | Path) -> Iterator[TextRecord]:
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        fh = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    except FileNotFoundError:
        raise BadInputError("no such file", source=source) from None
    except IsADirectoryError:
        raise BadInputError("is a directory", source=source) from None
    with fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                yield TextRecord(n, f"line {n}", text=raw.decode("utf-8", "replace").rstrip("\n"))
                continue
            ident = str(obj.get("id") or f"line {n}")
            ids = obj.get("token_ids")
            if ids is not None:
                if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                    raise BadInputError("expected a list of integers", source=source, line=n, field="token_ids")
                yield TextRecord(n, ident, token_ids=ids)
            elif isinstance(obj.get("text"), str):
                yield TextRecord(n, ident, text=obj["text"])
            elif "response" in obj:
                yield TextRecord(n, ident, text=response_text(obj["response"]))
            else:
                raise BadInputError("expected 'token_ids', 'text' or an event 'response'", source=source, line=n)


def load_tokenizer(path: str | Path) -> tuple[Any, int]:
    """A Hugging Face tokenizer from a local directory, and the vocabulary size the model's
    watermark processor used (``config.json``'s ``vocab_size`` when present)."""
    from transformers import AutoTokenizer

    from distillguard.serve.hf import from_local_dir

    path = Path(path)
    tokenizer = from_local_dir(path, "tokenizer", lambda d: AutoTokenizer.from_pretrained(d, local_files_only=True))
    vocab = len(tokenizer)
    config = path / "config.json"
    if config.exists():
        try:
            vocab = int(json.loads(config.read_text())["vocab_size"])
        except (KeyError, ValueError, TypeError):
            pass
    return tokenizer, vocab


def detect(records: list[TextRecord], keys: KeySet, vocab_size: int, tokenizer: Any = None) -> dict[str, Any]:
    sequences = []
    for rec in records:
        if rec.token_ids is not None:
            sequences.append(np.asarray(rec.token_ids, dtype=np.int64))
        elif tokenizer is None:
            raise BadInputError(f"line {rec.line} has text but no tokenizer was given (--tokenizer)")
        else:
            sequences.append(np.asarray(tokenizer(rec.text or "", add_special_tokens=False)["input_ids"],
                                        dtype=np.int64))
    if keys.scheme == "synthid":
        from distillguard.watermark.synthid import SynthIDDetector

        detector = SynthIDDetector(keys, vocab_size)
        ratio = detector.ratio
    else:
        detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], vocab_size, keys.greenlist_ratio)
        ratio = keys.greenlist_ratio
    per_cohort = [detector.score_many(sequences, c) for c in range(keys.total)]
    texts = []
    for i, rec in enumerate(records):
        best = min(range(keys.total), key=lambda c: per_cohort[c][i].p_value)
        s = per_cohort[best][i]
        texts.append({"id": rec.ident, "line": rec.line, "tokens": int(sequences[i].size), "cohort": best,
                      "label": keys.label(best), "scored": s.scored, "green": s.green, "z": round(s.z, 3),
                      "p_value": min(1.0, s.p_value * keys.total)})
    cohorts = []
    for c in range(keys.total):
        pooled = detector.score_pooled(sequences, c)
        cohorts.append({"cohort": c, "label": keys.label(c), **pooled.to_dict(),
                        "p_value_corrected": min(1.0, pooled.p_value * keys.total)})
    cohorts.sort(key=lambda r: r["p_value"])
    return {"scheme": keys.scheme, "texts": texts, "cohorts": cohorts, "vocab_size": vocab_size,
            "null_rate": ratio}
