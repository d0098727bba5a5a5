"""Verify an evidence package offline, with only the package and the public keys.

Keys are C2SP verifier keys (``name+hexid+base64(type || key)``), one per line: type 0x01 for a log's
key (name = the log's origin) and for the manifest signer, type 0x04 for a witness's cosignature key.
Nothing the package says about keys is trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from distillguard.errors import DistillguardError
from distillguard.evidence.leaf import CLEAR_FIELDS, COMMITTED_FIELDS, FIELDS, commitment, leaf_data
from distillguard.evidence.merkle import leaf_hash, verify_inclusion
from distillguard.evidence.note import SIG_COSIGNATURE, SIG_ED25519, NoteError, SignedNote, key_id, open_checkpoint
from distillguard.evidence.package import FORMAT, MANIFEST_CONTEXT

MAX_FILE_BYTES = 1 << 30


class VerifyError(DistillguardError):
    """The package does not verify; the message is the one-line reason."""

    exit_code = 1


@dataclass
class Keys:
    logs: dict[str, Ed25519PublicKey] = field(default_factory=dict)        # name -> Ed25519 key (type 0x01)
    witnesses: dict[str, Ed25519PublicKey] = field(default_factory=dict)   # name -> cosignature key (type 0x04)

    def add_vkey(self, text: str, source: str = "key") -> None:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise VerifyError(f"{source}: not a verifier key (name+hexid+base64)")
        name, kid, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw[1:])
        except (binascii.Error, ValueError):
            raise VerifyError(f"{source}: not a verifier key (bad base64 Ed25519 key)") from None
        if len(raw) != 33 or raw[0] not in (SIG_ED25519, SIG_COSIGNATURE):
            raise VerifyError(f"{source}: unsupported verifier key type")
        if key_id(name, public, raw[0]).hex() != kid:
            raise VerifyError(f"{source}: key id does not match the key")
        (self.logs if raw[0] == SIG_ED25519 else self.witnesses)[name] = public

    @classmethod
    def load(cls, paths: list[Path]) -> "Keys":
        keys = cls()
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise VerifyError(f"{path}: cannot read key file ({exc.__class__.__name__})") from None
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    keys.add_vkey(line, f"{path}:{n}")
        return keys


@dataclass
class Finding:
    signer: str
    subject: dict[str, Any]
    exchanges: int
    accounts: list[str]
    first_ts: str | None
    last_ts: str | None
    logs: list[dict[str, Any]]
    redacted: list[str]
    files: list[str]
    verdict: dict[str, Any]

    def proves(self) -> list[str]:
        out = [f"the manifest and every file listed in it ({len(self.files)} files) are exactly as "
               f"{self.signer} signed them"]
        for log in self.logs:
            wit = ", ".join(f"{w} (at {t})" for w, t in log["witnesses"]) or "no witness"
            out.append(f"{log['count']} exchange(s) are leaves of log {log['origin']} at the positions given, within its "
                       f"first {log['size']} entries, whose checkpoint is signed by the log key and cosigned by {wit}")
        out.append(f"{self.exchanges} exchange(s) of {', '.join(self.accounts)} between {self.first_ts} and "
                   f"{self.last_ts}: their logged fields are the revealed values (redacted: "
                   f"{', '.join(self.redacted) or 'none'}, committed by hash)")
        v = self.verdict
        scan = v.get("scan") if isinstance(v.get("scan"), dict) else None
        if scan is not None:
            entries = scan.get("accounts") if isinstance(scan.get("accounts"), list) else []
            flagged = [str(a.get("account")) for a in entries if isinstance(a, dict) and a.get("flagged")]
            baseline = v.get("baseline") if isinstance(v.get("baseline"), dict) else {}
            out.append(f"the signer's scan verdict is bundled (flagged: {', '.join(flagged) or 'none'}; baseline sha256 "
                       f"{baseline.get('sha256')}; {v.get('code_version')})")
        return out

    def does_not_prove(self) -> list[str]:
        out = ["that the verdict is right: the package records what the detector said and why, not that it is true",
               "that the account holder sent these requests (only that the provider's log recorded them so)",
               "that the log holds every exchange of these accounts, or that none was kept out of it before logging",
               "that an account has no exchange after its last exchange in the package: each leaf chains to the "
               "account's previous one (so none can be left out before it), not to the next",
               "the timestamps: they are the provider's claims; only a witness's cosignature time bounds when the "
               "log already held an exchange",
               "that the measures files were in force: they are what the signer declared, as signed"]
        if not any(log["witnesses"] for log in self.logs):
            out.append("that the log was not rewritten: no witness cosigned its checkpoint, so the provider "
                       "alone vouches for it")
        return out


def _load(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise VerifyError(f"{what} too large")
        return path.read_bytes()
    except OSError:
        raise VerifyError(f"missing {what}") from None


def _json(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise VerifyError(f"{what} is not valid JSON") from None


def _lines(data: bytes, what: str) -> list[dict[str, Any]]:
    if not data.endswith(b"\n"):
        raise VerifyError(f"{what} does not end with a newline")
    out = []
    for n, line in enumerate(data[:-1].split(b"\n"), 1):
        obj = _json(line, f"{what} line {n}")
        if not isinstance(obj, dict):
            raise VerifyError(f"{what} line {n} is not an object")
        out.append(obj)
    return out


def _hex(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size or value != value.lower():
        raise VerifyError(f"{what}: expected {size} bytes of lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VerifyError(f"{what}: not hex") from None


def _leaf(fields: Any, prev: Any, where: str) -> tuple[bytes, dict[str, str | None], list[str]]:
    if prev is not None and (not isinstance(prev, int) or isinstance(prev, bool) or not 0 <= prev < 2**63):
        raise VerifyError(f"{where}: prev must be null or a leaf index")
    if not isinstance(fields, dict) or set(fields) != set(FIELDS):
        raise VerifyError(f"{where}: the fields must be exactly {', '.join(FIELDS)}")
    revealed: dict[str, str | None] = {}
    redacted: list[str] = []
    clear: list[bytes | None] = []
    for f in CLEAR_FIELDS:
        spec = fields[f]
        if not (isinstance(spec, dict) and set(spec) == {"value"} and (spec["value"] is None or isinstance(spec["value"], str))):
            raise VerifyError(f"{where}: field {f} must be {{value}} (it cannot be redacted)")
        revealed[f] = spec["value"]
        clear.append(None if spec["value"] is None else spec["value"].encode("utf-8"))
    commits: list[bytes] = []
    for f in COMMITTED_FIELDS:
        spec = fields[f]
        if isinstance(spec, dict) and set(spec) == {"commitment"}:
            commits.append(_hex(spec["commitment"], 32, f"{where} field {f}"))
            redacted.append(f)
        elif isinstance(spec, dict) and set(spec) == {"value"} and spec["value"] is None:
            commits.append(commitment(f, b"", None))
            revealed[f] = None
        elif isinstance(spec, dict) and set(spec) == {"salt", "value"} and isinstance(spec["value"], str):
            salt = _hex(spec["salt"], 16, f"{where} field {f} salt")
            commits.append(commitment(f, salt, spec["value"].encode("utf-8")))
            revealed[f] = spec["value"]
        else:
            raise VerifyError(f"{where}: field {f} must be {{salt, value}}, {{value: null}} or {{commitment}}")
    return leaf_hash(leaf_data(prev, clear, commits)), revealed, redacted


def verify_package(pkg: Path, keys: Keys) -> Finding:
    """Check everything; raise :class:`VerifyError` with the first failure's reason."""
    try:
        return _verify(pkg, keys)
    except (TypeError, KeyError, AttributeError, ValueError, OverflowError) as exc:
        # a signed package whose content has the wrong shape somewhere the checks below did not name
        raise VerifyError(f"malformed package ({exc.__class__.__name__}: {str(exc)[:80]!r})") from None


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise VerifyError(f"{what} must be a string")
    return value


def _verify(pkg: Path, keys: Keys) -> Finding:
    if not pkg.is_dir():
        raise VerifyError(f"{pkg} is not a package directory")
    # 1. the manifest's signature
    try:
        sig = SignedNote.parse(_load(pkg / "manifest.sig", "manifest.sig").decode("utf-8"))
    except (NoteError, UnicodeDecodeError) as exc:
        raise VerifyError(f"manifest.sig is not a signed note ({exc})") from None
    manifest_bytes = _load(pkg / "manifest.json", "manifest.json")
    if sig.text != f"{MANIFEST_CONTEXT}\n{hashlib.sha256(manifest_bytes).hexdigest()}\n":
        raise VerifyError("manifest.json does not match manifest.sig (changed after signing)")
    manifest = _json(manifest_bytes, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VerifyError(f"not a {FORMAT} package")
    signer = manifest.get("signer")
    if not isinstance(signer, str) or signer not in keys.logs:
        raise VerifyError(f"no key given for the manifest's signer {str(signer)[:60]!r}")
    if not sig.verify(signer, keys.logs[signer]):
        raise VerifyError(f"manifest signature does not verify under {signer}'s key")
    # 2. every file, and nothing else
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise VerifyError("manifest lists no files")
    present = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()} - {"manifest.json", "manifest.sig"}
    extra = present - set(files)
    if extra:
        raise VerifyError(f"file not covered by the manifest: {sorted(extra)[0]}")
    blobs: dict[str, bytes] = {}
    for name, digest in files.items():
        if not isinstance(name, str) or ".." in Path(name).parts or Path(name).is_absolute():
            raise VerifyError(f"bad file name in manifest: {str(name)[:60]!r}")
        data = _load(pkg / name, name)
        if hashlib.sha256(data).hexdigest() != digest:
            raise VerifyError(f"{name} was changed after signing (SHA-256 differs from the manifest)")
        blobs[name] = data
    # 3. checkpoints: log signature, witnesses
    logs = manifest.get("logs")
    if not isinstance(logs, dict) or not logs:
        raise VerifyError("manifest names no logs")
    checkpoints: dict[str, Any] = {}
    log_reports = []
    for origin, meta in logs.items():
        if not isinstance(meta, dict):
            raise VerifyError(f"log {origin}: malformed manifest entry")
        if origin not in keys.logs:
            raise VerifyError(f"no key given for log {origin!r}")
        note_name = meta.get("checkpoint")
        if not isinstance(note_name, str) or note_name not in blobs:
            raise VerifyError(f"log {origin}: its checkpoint file is not in the package")
        try:
            cp, note = open_checkpoint(blobs[note_name].decode("utf-8"), keys.logs[origin], origin=origin)
        except (NoteError, UnicodeDecodeError) as exc:
            raise VerifyError(f"log {origin}: {exc}") from None
        if meta.get("size") != cp.size or meta.get("root") != base64.b64encode(cp.root).decode():
            raise VerifyError(f"log {origin}: manifest and checkpoint disagree on size or root")
        witnesses = []
        for name, key in sorted(keys.witnesses.items()):
            t = note.cosignature(name, key)
            if t is not None:
                witnesses.append((name, datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))
        checkpoints[origin] = cp
        indexes = meta.get("indexes")
        if not isinstance(indexes, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indexes):
            raise VerifyError(f"log {origin}: manifest lists no leaf indexes")
        log_reports.append({"origin": origin, "size": cp.size, "witnesses": witnesses, "count": len(indexes),
                            "indexes": indexes})
    # 4. exchanges: each leaf recomputed from its fields, proven into its checkpoint, in order, none missing
    if "exchanges.jsonl" not in blobs or "proofs.jsonl" not in blobs:
        raise VerifyError("package has no exchanges.jsonl or proofs.jsonl")
    exchanges = _lines(blobs["exchanges.jsonl"], "exchanges.jsonl")
    proofs = _lines(blobs["proofs.jsonl"], "proofs.jsonl")
    if len(exchanges) != len(proofs) or len(exchanges) != manifest.get("exchanges"):
        raise VerifyError(f"{len(exchanges)} exchanges, {len(proofs)} proofs, manifest says {manifest.get('exchanges')}")
    subject = manifest.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("accounts"), list) or not all(
            isinstance(a, str) for a in subject["accounts"]):
        raise VerifyError("manifest names no subject accounts")
    subject_accounts = set(subject["accounts"])
    seen: dict[str, list[int]] = {}
    accounts, times, redacted_any = set(), [], set()
    prev: tuple[str, int] | None = None
    last_of: dict[tuple[str, str], int] = {}
    for n, (ex, pr) in enumerate(zip(exchanges, proofs), 1):
        where = f"exchange {n}"
        log_id, idx = ex.get("log"), ex.get("index")
        if not isinstance(log_id, str) or log_id not in checkpoints or not isinstance(idx, int) or isinstance(idx, bool):
            raise VerifyError(f"{where}: unknown log or bad index")
        if pr.get("log") != log_id or pr.get("index") != idx or isinstance(pr.get("index"), bool):
            raise VerifyError(f"{where}: its proof is for another exchange (reordered?)")
        if prev is not None and (log_id, idx) <= prev:
            raise VerifyError(f"{where}: exchanges out of log order (reordered or repeated)")
        prev = (log_id, idx)
        cp = checkpoints[log_id]
        if pr.get("tree_size") != cp.size or isinstance(pr.get("tree_size"), bool) or not isinstance(pr.get("proof"), list):
            raise VerifyError(f"{where}: proof is not against the package's checkpoint")
        path = [_hex(p, 32, f"{where} proof") for p in pr["proof"]]
        leaf, revealed, redacted = _leaf(ex.get("fields"), ex.get("prev"), where)
        if not verify_inclusion(leaf, idx, cp.size, path, cp.root):
            raise VerifyError(f"{where} (leaf {idx} of {log_id}): inclusion proof fails: the exchange or its proof "
                              "differs from what the log recorded")
        if not isinstance(revealed.get("account"), str) or revealed["account"] not in subject_accounts:
            raise VerifyError(f"{where}: account {str(revealed.get('account'))[:60]!r} is not the package's subject")
        # the account's chain: its first leaf has no predecessor, each next points at the one before
        chain_key = (log_id, revealed["account"])
        if ex.get("prev") != last_of.get(chain_key):
            raise VerifyError(f"{where}: account {revealed['account'][:60]!r} skips an exchange of its chain in {log_id} "
                              f"(leaf {idx} follows leaf {ex.get('prev')}, the package has {last_of.get(chain_key)}): "
                              "an exchange was left out")
        last_of[chain_key] = idx
        accounts.add(revealed["account"])
        ts = revealed.get("ts")
        if not isinstance(ts, str) or not ts.isdigit():
            raise VerifyError(f"{where}: ts must be revealed as integer microseconds")
        times.append(int(ts))
        redacted_any.update(redacted)
        seen.setdefault(log_id, []).append(idx)
    for rep in log_reports:
        if seen.get(rep["origin"], []) != rep["indexes"]:
            raise VerifyError(f"log {rep['origin']}: exchanges in the package differ from the manifest's list "
                              "(removed, added or reordered)")
    verdict = _json(blobs.get("verdict.json", b"{}"), "verdict.json")
    fmt = lambda us: datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return Finding(signer=signer, subject=subject, exchanges=len(exchanges),
                   accounts=sorted(accounts), first_ts=fmt(min(times)) if times else None,
                   last_ts=fmt(max(times)) if times else None, logs=log_reports, redacted=sorted(redacted_any),
                   files=sorted(files), verdict=verdict if isinstance(verdict, dict) else {})
