"""Watermark keys: one value object used by generation, detection and radioactivity tests.

A key set holds one secret. From it come, by keyed hashes (HMAC-SHA256):

* the cohort of each account (``cohort_of``): accounts are spread over K cohorts, and
* one KGW hashing key per cohort (``cohort_key``): what the generation-side
  ``transformers`` ``WatermarkLogitsProcessor`` is seeded with for that cohort's requests, and
* one list of SynthID tournament keys per cohort (``synthid_keys``) for
  ``transformers``' ``SynthIDTextWatermarkLogitsProcessor``, when the scheme is ``synthid``.

So text (or a model trained on text) carrying cohort k's watermark traces a leak to cohort k,
and the cohort's account list narrows it further. Besides the K account cohorts, a key set has
*named* cohorts (default: ``watch``) with keys of their own: the gateway routes accounts it
distrusts to one (``x-distillguard-cohort: watch``), so a leak through them is named as such.
Cohort indices run over both: ``0 .. K-1`` for account cohorts, then the named ones (``total``).
The file holds the secret: keep it private.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import BadInputError, load_json_file

KEYSET_VERSION = 1
SCHEMES = ("kgw", "synthid")
_MAX_HASH_KEY = 2**40     # hashing_key * token id stays exact in torch's int64 seeding arithmetic


@dataclass(frozen=True)
class KeySet:
    secret: bytes
    cohorts: int = 8
    scheme: str = "kgw"
    greenlist_ratio: float = 0.25
    bias: float = 2.0
    context_width: int = 1
    seeding_scheme: str = "lefthash"
    ngram_len: int = 5            # SynthID: n-gram length (context of ngram_len - 1 tokens)
    depth: int = 16               # SynthID: tournament layers (keys per cohort)
    named: tuple[str, ...] = ("watch",)   # named cohorts, after the account cohorts

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise BadInputError("the watermark secret must be at least 16 bytes", field="secret")
        if not 1 <= self.cohorts <= 4096:
            raise BadInputError(f"expected 1..4096 cohorts, got {self.cohorts}", field="cohorts")
        if self.scheme not in SCHEMES:
            raise BadInputError(f"unknown watermark scheme {self.scheme!r} (supported: {', '.join(SCHEMES)})",
                                field="scheme")
        if (not isinstance(self.named, tuple) or len(set(self.named)) != len(self.named) or len(self.named) > 64
                or not all(isinstance(n, str) and 0 < len(n) <= 64 and not n.isdigit() for n in self.named)):
            raise BadInputError("named cohorts must be distinct, non-numeric names of 1..64 characters (64 at most)",
                                field="named")
        if not 2 <= self.ngram_len <= 16 or not 1 <= self.depth <= 64:
            raise BadInputError("SynthID needs 2 <= ngram_len <= 16 and 1 <= depth <= 64", field="ngram_len")
        if not 0.0 < self.greenlist_ratio < 1.0:
            raise BadInputError(f"expected a ratio strictly between 0 and 1, got {self.greenlist_ratio}",
                                field="greenlist_ratio")
        if self.context_width != 1 or self.seeding_scheme != "lefthash":
            raise BadInputError("only context_width = 1 with lefthash seeding is supported", field="seeding_scheme")

    @classmethod
    def generate(cls, cohorts: int = 8, **params: Any) -> "KeySet":
        return cls(secret=os.urandom(32), cohorts=cohorts, **params)

    def _mac(self, message: str) -> bytes:
        return hmac.new(self.secret, message.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def cohort_of(self, account: str) -> int:
        """The account's cohort: a keyed hash, so outsiders cannot choose or predict it."""
        return int.from_bytes(self._mac("account:" + account)[:8], "big") % self.cohorts

    @property
    def total(self) -> int:
        """Account cohorts plus named cohorts: the number of keys every test tries."""
        return self.cohorts + len(self.named)

    def label(self, cohort: int) -> str:
        """A cohort's name as reports show it: its number, or its name for a named cohort."""
        return str(cohort) if cohort < self.cohorts else self.named[cohort - self.cohorts]

    def cohort_index(self, name: str) -> int | None:
        """The index of a named cohort (None when the key set has no cohort of that name)."""
        return self.cohorts + self.named.index(name) if name in self.named else None

    def _cohort_tag(self, cohort: int) -> str:
        if not 0 <= cohort < self.total:
            raise BadInputError(f"cohort {cohort} outside 0..{self.total - 1}", field="cohort")
        return str(cohort) if cohort < self.cohorts else "named:" + self.named[cohort - self.cohorts]

    def cohort_key(self, cohort: int) -> int:
        """The KGW hashing key of one cohort."""
        return int.from_bytes(self._mac(f"cohort:{self._cohort_tag(cohort)}")[:8], "big") % _MAX_HASH_KEY + 1

    def control_keys(self, n: int) -> list[int]:
        """Keys never used for generation, for control tests (their p-values must be uniform)."""
        return [int.from_bytes(self._mac(f"control:{i}")[:8], "big") % _MAX_HASH_KEY + 1 for i in range(n)]

    def watermarking_config(self, cohort: int) -> dict[str, Any]:
        """Arguments for ``transformers.WatermarkingConfig`` for one cohort."""
        return {"greenlist_ratio": self.greenlist_ratio, "bias": self.bias, "hashing_key": self.cohort_key(cohort),
                "seeding_scheme": self.seeding_scheme, "context_width": self.context_width}

    def synthid_keys(self, cohort: int) -> list[int]:
        """The SynthID tournament keys of one cohort (``depth`` of them)."""
        tag = self._cohort_tag(cohort)
        return [int.from_bytes(self._mac(f"synthid:{tag}:{i}")[:4], "big") % 2**31 + 1 for i in range(self.depth)]

    def synthid_config(self, cohort: int) -> dict[str, Any]:
        """Arguments for ``transformers.SynthIDTextWatermarkingConfig`` for one cohort."""
        return {"ngram_len": self.ngram_len, "keys": self.synthid_keys(cohort)}

    def with_scheme(self, scheme: str) -> "KeySet":
        """The same secret and cohorts under another scheme (keys for both derive from the secret)."""
        from dataclasses import replace

        return self if scheme == self.scheme else replace(self, scheme=scheme)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": KEYSET_VERSION, "scheme": self.scheme, "secret": self.secret.hex(), "cohorts": self.cohorts,
                "greenlist_ratio": self.greenlist_ratio, "bias": self.bias, "context_width": self.context_width,
                "seeding_scheme": self.seeding_scheme, "ngram_len": self.ngram_len, "depth": self.depth,
                "named_cohorts": list(self.named)}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # a secret: owner-only
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, path: str | Path) -> "KeySet":
        data = load_json_file(path, "watermark key file")
        if not isinstance(data, dict) or data.get("version") != KEYSET_VERSION or "secret" not in data:
            raise BadInputError(f"not a distillguard watermark key file (version {KEYSET_VERSION})", source=str(path))
        try:
            return cls(secret=bytes.fromhex(data["secret"]), cohorts=int(data["cohorts"]), scheme=data["scheme"],
                       greenlist_ratio=float(data["greenlist_ratio"]), bias=float(data["bias"]),
                       context_width=int(data["context_width"]), seeding_scheme=data["seeding_scheme"],
                       ngram_len=int(data.get("ngram_len", 5)), depth=int(data.get("depth", 16)),
                       named=tuple(data.get("named_cohorts", ["watch"])))
        except BadInputError as exc:
            raise BadInputError(exc.message, source=str(path), field=exc.field) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"watermark key file is malformed ({type(exc).__name__}: {exc})",
                                source=str(path)) from None
