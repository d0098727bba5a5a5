"""Export an evidence package: one account's (or campaign's) exchanges with inclusion proofs,
the verdict, reports and measures in force, under a signed manifest. Format: docs/evidence.md."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

import distillguard
from distillguard.errors import BadInputError, UsageError, load_json_file
from distillguard.evidence.leaf import CLEAR_FIELDS, COMMITTED_FIELDS, FIELDS, commitment, leaf_hash_of, salts, \
    values_from_table
from distillguard.evidence.note import Checkpoint, SignedNote, open_checkpoint
from distillguard.evidence.treestore import best_checkpoint, leaf_positions, load_levels, sign_current
from distillguard.store import EventStore

FORMAT = "distillguard-evidence/1"
MANIFEST_CONTEXT = "distillguard-evidence-manifest/v1"
NEVER_REDACTED = frozenset(CLEAR_FIELDS)
PERSONAL_FIELDS = ("ip", "user_agent", "identity", "key")


@dataclass
class ExportOptions:
    accounts: list[str]
    subject: dict[str, Any]
    signer: str                                   # our name on the manifest signature (no spaces)
    scan: Path | None = None
    baseline: Path | None = None
    reports: list[Path] = field(default_factory=list)
    measures: list[Path] = field(default_factory=list)
    terms_version: str | None = None
    redact: tuple[str, ...] = ()
    witnesses: dict[str, Any] = field(default_factory=dict)   # name -> public key (to prefer cosigned checkpoints)


def code_version() -> str:
    version = f"distillguard {distillguard.__version__}"
    src = Path(distillguard.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "."],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            version += f" (git {out.stdout.strip()}{', modified' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def campaign_accounts(scan: dict[str, Any], campaign: str) -> list[str]:
    """Accounts of a campaign named in a scan result: a cluster id, or one flagged account's id."""
    for c in scan.get("clusters") or []:
        if isinstance(c, dict) and c.get("cluster") == campaign:
            return [str(a) for a in c.get("accounts") or []]
    for a in scan.get("accounts") or []:
        if isinstance(a, dict) and a.get("account") == campaign and a.get("flagged"):
            return [campaign]
    raise BadInputError(f"no campaign {campaign!r} in the scan result (give a cluster id or a flagged account)")


def biggest_campaign(scan: dict[str, Any]) -> str | None:
    """The flagged cluster (else the flagged account) with the most queries."""
    clusters = [c for c in scan.get("clusters") or [] if c.get("flagged")]
    if clusters:
        return max(clusters, key=lambda c: (c.get("queries") or 0, c["cluster"]))["cluster"]
    alone = [a for a in scan.get("accounts") or [] if a.get("flagged")]
    return max(alone, key=lambda a: (a.get("queries") or 0, a["account"]))["account"] if alone else None


def _verdict(scan_path: Path | None, baseline: Path | None, accounts: list[str], subject: dict) -> dict[str, Any]:
    from distillguard.detect.baseline import default_baseline_path

    base = baseline or default_baseline_path()
    out: dict[str, Any] = {"code_version": code_version(),
                           "baseline": {"file": base.name, "sha256": sha256_file(base) if base.exists() else None}}
    if scan_path is None:
        out["scan"] = None
        return out
    scan = load_json_file(scan_path, "scan result")
    if not isinstance(scan, dict):
        raise BadInputError("not a scan result (a JSON object)", source=str(scan_path))
    wanted = set(accounts)
    out["scan"] = {"file_sha256": sha256_file(scan_path), "calibration": scan.get("calibration"),
                   "accounts": [a for a in scan.get("accounts") or [] if isinstance(a, dict) and a.get("account") in wanted],
                   "clusters": [c for c in scan.get("clusters") or [] if isinstance(c, dict)
                                and wanted & set(c.get("accounts") or [])]}
    return out


def _write(path: Path, data: bytes, files: dict[str, str], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()


def export_package(store: EventStore, signing_key: Any, salt_key: bytes, out: Path, opts: ExportOptions) -> dict[str, Any]:
    """Write the package to ``out`` (must not exist or be empty); returns the manifest."""
    bad = [f for f in opts.redact if f not in COMMITTED_FIELDS]
    if bad:
        raise UsageError(f"cannot redact {', '.join(bad)} (redactable: {', '.join(COMMITTED_FIELDS)})")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty")
    store.con.register("_accts", pa.table({"account": pa.array(opts.accounts, pa.string())}))
    try:
        table = store.con.sql("SELECT e.* FROM events e JOIN _accts USING (account) ORDER BY e.ts, e.id").to_arrow_table()
    finally:
        store.con.unregister("_accts")
    if table.num_rows == 0:
        raise BadInputError(f"no stored exchanges for {', '.join(opts.accounts[:5])}")
    ids = table.column("id").to_pylist()
    where = leaf_positions(store, ids)
    missing = [i for i in ids if i not in where]
    if missing:
        raise BadInputError(f"{len(missing)} of {len(ids)} exchanges are in no evidence tree yet "
                            "(run 'distillguard evidence build' first)")
    rows = list(values_from_table(table))
    by_log: dict[str, list[tuple[int, int | None, dict]]] = {}
    for row in rows:
        log_id, idx, prev = where[row["id"].decode()]
        by_log.setdefault(log_id, []).append((idx, prev, row))
    public = signing_key.public
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    logs_meta: dict[str, Any] = {}
    exchange_lines, proof_lines = [], []
    for n, log_id in enumerate(sorted(by_log), 1):
        entries = sorted(by_log[log_id], key=lambda e: e[0])
        levels = load_levels(store, log_id)
        need = entries[-1][0] + 1
        note = best_checkpoint(store, log_id, need, public, opts.witnesses) or sign_current(
            store, log_id, signing_key.private, levels)
        cp, _ = open_checkpoint(note, public, origin=log_id)
        if levels.root(cp.size) != cp.root:
            raise BadInputError(f"the store's tree {log_id} does not match its own signed checkpoint at size {cp.size}")
        note_path = f"checkpoints/{n}.note"
        _write(out / note_path, note.encode("utf-8"), files, out)
        logs_meta[log_id] = {"checkpoint": note_path, "size": cp.size,
                             "root": base64.b64encode(cp.root).decode(), "indexes": [e[0] for e in entries]}
        for idx, prev, row in entries:
            leaf = levels.leaf(idx)
            if leaf_hash_of(row, salt_key, prev) != leaf:
                raise BadInputError(f"stored exchange {row['id'].decode()} no longer matches leaf {idx} of {log_id}: "
                                    "the store was changed after the exchange was logged (or this is not the key the tree was built with)")
            s = salts(salt_key, row["id"].decode())
            fields: dict[str, Any] = {f: {"value": None if row[f] is None else row[f].decode("utf-8")}
                                      for f in CLEAR_FIELDS}
            for f in COMMITTED_FIELDS:
                v = row[f]
                if f in opts.redact:
                    fields[f] = {"commitment": commitment(f, s[f], v).hex()}
                elif v is None:
                    fields[f] = {"value": None}
                else:
                    fields[f] = {"salt": s[f].hex(), "value": v.decode("utf-8")}
            exchange_lines.append(orjson.dumps({"log": log_id, "index": idx, "prev": prev, "fields": fields}))
            proof_lines.append(orjson.dumps({"log": log_id, "index": idx, "tree_size": cp.size,
                                             "proof": [p.hex() for p in levels.inclusion_proof(idx, cp.size)]}))
    _write(out / "exchanges.jsonl", b"\n".join(exchange_lines) + b"\n", files, out)
    _write(out / "proofs.jsonl", b"\n".join(proof_lines) + b"\n", files, out)
    verdict = _verdict(opts.scan, opts.baseline, opts.accounts, opts.subject)
    _write(out / "verdict.json", orjson.dumps(verdict, option=orjson.OPT_INDENT_2), files, out)
    for kind, paths in (("reports", opts.reports), ("measures", opts.measures)):
        for p in paths:
            if not p.is_file():
                raise BadInputError(f"no such {kind[:-1]} file", source=str(p))
            target = out / kind / p.name
            if target.exists():
                raise UsageError(f"two {kind} files named {p.name}")
            _write(target, p.read_bytes(), files, out)
    measures = {"terms_version": opts.terms_version,
                "files": sorted(k for k in files if k.startswith("measures/"))}
    _write(out / "measures.json", orjson.dumps(measures, option=orjson.OPT_INDENT_2), files, out)
    manifest = {"format": FORMAT, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "signer": opts.signer, "subject": {**opts.subject, "accounts": sorted(opts.accounts)},
                "code_version": verdict["code_version"], "exchanges": len(exchange_lines),
                "redacted_fields": sorted(opts.redact), "logs": logs_meta, "files": dict(sorted(files.items()))}
    data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    (out / "manifest.json").write_bytes(data)
    sig = SignedNote(f"{MANIFEST_CONTEXT}\n{hashlib.sha256(data).hexdigest()}\n")
    sig.sign(opts.signer, signing_key.private)
    (out / "manifest.sig").write_text(sig.render(), encoding="utf-8")
    return manifest


def copy_package(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
