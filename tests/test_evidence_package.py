"""Evidence packages end to end on a real DuckDB store: build, export, verify, tamper, redact, witness."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from distillguard.events.columns import ColumnBuilder
from distillguard.events.schema import event_from_obj
from distillguard.evidence import treestore
from distillguard.evidence.commands import _salt_key, evidence_app
from distillguard.evidence.merkle import leaf_hash
from distillguard.evidence.note import SIG_COSIGNATURE, SignedNote, vkey
from distillguard.evidence.package import MANIFEST_CONTEXT, ExportOptions, export_package
from distillguard.evidence.verify import Keys, VerifyError, verify_package
from distillguard.evidence.witness import Witness, WitnessError
from distillguard.intel.keys import SigningKey
from distillguard.store import EventStore

LOG = "example.net/distillguard/store"
KEY = SigningKey.generate()
WITNESS_KEY = SigningKey.generate()
T0 = 1_790_000_000.0


def records(n: int, accounts=("acct-a", "acct-b", "acct-c")) -> list[dict]:
    out = []
    for i in range(n):
        acct = accounts[i % len(accounts)]
        out.append({"id": f"ev-{i:04d}", "ts": T0 + i * 1.5 + 0.000123, "account": acct, "key": f"key-{acct}",
                    "ip": f"10.0.{i % 7}.{i % 250}", "user_agent": "python-httpx/0.27", "status": 200,
                    "request": {"model": "m", "messages": [{"role": "user", "content": f"question {i} \u00e9\u2603"}],
                                "temperature": 0.7, "user": f"end-{i % 4}"},
                    "response": {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
                    "usage": {"prompt_tokens": 10 + i, "completion_tokens": 20}, "identity": {"email": f"{acct}@x.org"},
                    "decision": {"action": "allow"}})
    return out


def make_store(path: Path, recs: list[dict]) -> EventStore:
    store = EventStore(path)
    builder = ColumnBuilder()
    for r in recs:
        builder.add(event_from_obj(orjson.loads(orjson.dumps(r))))
    store.ingest([builder.take()])
    return store


def keyfile(tmp: Path, *, witness: bool = True) -> Path:
    lines = [vkey(LOG, KEY.public), vkey("acme", KEY.public)]
    if witness:
        lines.append(vkey("witness.example", WITNESS_KEY.public, SIG_COSIGNATURE))
    path = tmp / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ev")
    store = make_store(tmp / "s.duckdb", records(60))
    report = treestore.build(store, _salt_key(KEY), LOG)
    assert report.appended == 60 and report.size == 60
    note = treestore.sign_current(store, LOG, KEY.private)
    # a witness cosigns it (first sight), then a larger checkpoint after more events arrive
    w = Witness(tmp / "wstate", "witness.example", WITNESS_KEY, {LOG: KEY.public})
    treestore.add_checkpoint(store, w.cosign(note, []))
    scan = tmp / "scan.json"
    scan.write_bytes(orjson.dumps({"accounts": [{"account": "acct-a", "flagged": True, "queries": 20,
                                                 "reasons": [{"signal": "coverage", "detail": "sweeps a taxonomy"}]},
                                                {"account": "acct-b", "flagged": False, "queries": 20, "reasons": []}],
                                   "clusters": [{"cluster": "C1", "accounts": ["acct-a", "acct-c"], "flagged": True,
                                                 "queries": 40}], "calibration": {"baseline": "default"}}))
    cfg = tmp / "gateway.toml"
    cfg.write_text('[policy]\nmode = "enforce"\n[policy.limits]\nrequests_per_minute = 600\n')
    wm = tmp / "watermark-report.json"
    wm.write_text('{"z": 9.1, "p_value": 1e-19}')
    pkg = tmp / "pkg"
    opts = ExportOptions(accounts=["acct-a", "acct-c"], subject={"campaign": "C1"}, signer="acme", scan=scan,
                         reports=[wm], measures=[cfg], terms_version="2026-09", redact=("ip", "identity"),
                         witnesses={"witness.example": WITNESS_KEY.public})
    manifest = export_package(store, KEY, _salt_key(KEY), pkg, opts)
    store.close()
    return {"tmp": tmp, "pkg": pkg, "manifest": manifest, "keys": Keys.load([keyfile(tmp)]), "db": tmp / "s.duckdb",
            "scan": scan}


def test_package_verifies_with_only_keys_and_reports_the_witness(built):
    finding = verify_package(built["pkg"], built["keys"])
    assert finding.exchanges == 40 and finding.accounts == ["acct-a", "acct-c"]
    assert finding.logs[0]["witnesses"] and finding.logs[0]["witnesses"][0][0] == "witness.example"
    assert finding.redacted == ["identity", "ip"]
    text = "\n".join(finding.proves())
    assert "cosigned by witness.example" in text
    lines = (built["pkg"] / "exchanges.jsonl").read_bytes().splitlines()
    first = orjson.loads(lines[0])
    assert first["fields"]["account"]["value"] == "acct-a"
    assert set(first["fields"]["ip"]) == {"commitment"} and b"10.0." not in (built["pkg"] / "exchanges.jsonl").read_bytes()
    assert b"acct-b" not in (built["pkg"] / "exchanges.jsonl").read_bytes()   # no other account's data
    # without the witness's key it still verifies, and says no witness vouches
    alone = verify_package(built["pkg"], Keys.load([keyfile(built["tmp"] / ".." / built["tmp"].name, witness=False)]))
    assert any("no witness cosigned" in x for x in alone.does_not_prove())


def _flip(pkg: Path, rel: str, offset: int, bit: int) -> None:
    path = pkg / rel
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.data())
def test_any_single_byte_change_anywhere_is_detected(built, tmp_path_factory, data):
    files = sorted(p.relative_to(built["pkg"]).as_posix() for p in built["pkg"].rglob("*") if p.is_file())
    rel = data.draw(st.sampled_from(files))
    offset = data.draw(st.integers(0, 10**7))
    bit = data.draw(st.integers(0, 7))
    copy = tmp_path_factory.mktemp("flip") / "pkg"
    shutil.copytree(built["pkg"], copy)
    _flip(copy, rel, offset, bit)
    with pytest.raises(VerifyError):
        verify_package(copy, built["keys"])


def _resign(pkg: Path, edit) -> None:
    """The signer itself rewrites a file and re-signs the manifest: only the log's proofs can catch it."""
    manifest = orjson.loads((pkg / "manifest.json").read_bytes())
    edit(pkg, manifest)
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((pkg / name).read_bytes()).hexdigest()
    data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    (pkg / "manifest.json").write_bytes(data)
    sig = SignedNote(f"{MANIFEST_CONTEXT}\n{hashlib.sha256(data).hexdigest()}\n")
    sig.sign("acme", KEY.private)
    (pkg / "manifest.sig").write_text(sig.render())


def _lines(pkg: Path, name: str) -> list[bytes]:
    return (pkg / name).read_bytes().splitlines()


def _set_lines(pkg: Path, name: str, lines: list[bytes]) -> None:
    (pkg / name).write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("attack", ["edit_answer", "remove", "remove_first", "reorder", "swap_proofs",
                                    "other_checkpoint", "clean"])
def test_a_resigned_package_still_fails_on_the_log(built, tmp_path, attack):
    pkg = tmp_path / "pkg"
    shutil.copytree(built["pkg"], pkg)

    def edit(pkg: Path, manifest: dict) -> None:
        ex, pr = _lines(pkg, "exchanges.jsonl"), _lines(pkg, "proofs.jsonl")
        if attack == "edit_answer":
            ex[3] = ex[3].replace(b"answer ", b"ANSWER ")
        elif attack in ("remove", "remove_first"):   # drop one exchange everywhere, manifest included
            k = 5 if attack == "remove" else 0
            idx = orjson.loads(ex[k])["index"]
            del ex[k], pr[k]
            manifest["exchanges"] -= 1
            manifest["logs"][LOG]["indexes"].remove(idx)
        elif attack == "reorder":
            ex[2], ex[3] = ex[3], ex[2]
            pr[2], pr[3] = pr[3], pr[2]
        elif attack == "swap_proofs":
            a, b = orjson.loads(pr[2]), orjson.loads(pr[3])
            a["proof"], b["proof"] = b["proof"], a["proof"]
            pr[2], pr[3] = orjson.dumps(a), orjson.dumps(b)
        elif attack == "other_checkpoint":   # a root signed by someone else
            other = SigningKey.generate()
            from distillguard.evidence.note import Checkpoint, sign_checkpoint

            cp = Checkpoint(LOG, manifest["logs"][LOG]["size"], b"\x07" * 32)
            (pkg / manifest["logs"][LOG]["checkpoint"]).write_text(sign_checkpoint(cp, other.private))
            manifest["logs"][LOG]["root"] = base64.b64encode(cp.root).decode()
        _set_lines(pkg, "exchanges.jsonl", ex)
        _set_lines(pkg, "proofs.jsonl", pr)

    _resign(pkg, edit)
    if attack == "clean":
        verify_package(pkg, built["keys"])
        return
    with pytest.raises(VerifyError) as err:
        verify_package(pkg, built["keys"])
    if attack.startswith("remove"):   # the account chain committed in each leaf shows the gap
        assert "left out" in str(err.value)


def test_tail_truncation_is_the_documented_limit(built, tmp_path):
    """Dropping an account's LAST exchanges cannot be seen from the package alone (no leaf points
    forward); the verifier says so instead of claiming completeness."""
    pkg = tmp_path / "pkg"
    shutil.copytree(built["pkg"], pkg)

    def edit(pkg: Path, manifest: dict) -> None:
        ex, pr = _lines(pkg, "exchanges.jsonl"), _lines(pkg, "proofs.jsonl")
        idx = orjson.loads(ex[-1])["index"]
        manifest["exchanges"] -= 1
        manifest["logs"][LOG]["indexes"].remove(idx)
        _set_lines(pkg, "exchanges.jsonl", ex[:-1])
        _set_lines(pkg, "proofs.jsonl", pr[:-1])

    _resign(pkg, edit)
    finding = verify_package(pkg, built["keys"])
    assert any("after its last exchange in the package" in x for x in finding.does_not_prove())


def test_store_edit_after_logging_is_refused_at_export(built, tmp_path):
    db = tmp_path / "s.duckdb"
    shutil.copy(built["db"], db)
    with EventStore(db) as store:
        store.run("UPDATE events SET response = replace(response, 'answer 3', 'answer 3 (edited)') WHERE id = 'ev-0003'")
        from distillguard.errors import BadInputError

        with pytest.raises(BadInputError, match="changed after"):
            export_package(store, KEY, _salt_key(KEY), tmp_path / "p", ExportOptions(
                accounts=["acct-a"], subject={"account": "acct-a"}, signer="acme"))


def test_witness_refuses_forks_and_rollbacks(tmp_path):
    from distillguard.evidence.merkle import Levels
    from distillguard.evidence.note import Checkpoint, sign_checkpoint

    leaves = [leaf_hash(str(i).encode()) for i in range(20)]
    levels = Levels(b"".join(leaves))
    w = Witness(tmp_path / "w", "witness.example", WITNESS_KEY, {LOG: KEY.public})
    n5 = sign_checkpoint(Checkpoint(LOG, 5, levels.root(5)), KEY.private)
    assert SignedNote.parse(w.cosign(n5, [])).cosignature("witness.example", WITNESS_KEY.public) is not None
    n12 = sign_checkpoint(Checkpoint(LOG, 12, levels.root(12)), KEY.private)
    w.cosign(n12, [p.hex() for p in levels.consistency_proof(5, 12)])
    with pytest.raises(WitnessError, match="rollback"):
        w.cosign(n5, [])
    forked = Levels(b"".join(leaves[:7] + [leaf_hash(b"rewritten")] + leaves[8:]))
    n15 = sign_checkpoint(Checkpoint(LOG, 15, forked.root(15)), KEY.private)
    with pytest.raises(WitnessError, match="fork"):
        w.cosign(n15, [p.hex() for p in forked.consistency_proof(12, 15)])
    with pytest.raises(WitnessError, match="not a log"):
        w.cosign(sign_checkpoint(Checkpoint("other", 1, leaves[0]), KEY.private), [])


def test_cli_export_and_verify(built, tmp_path):
    runner = CliRunner()
    keyf = tmp_path / "signing.pem"
    keyf.write_bytes(KEY.pem())
    db = tmp_path / "s.duckdb"
    shutil.copy(built["db"], db)
    res = runner.invoke(evidence_app, ["export", "--db", str(db), "--account", "acct-b", "--out", str(tmp_path / "p"),
                                       "--key", str(keyf), "--signer", "acme", "--redact", "ip"])
    assert res.exit_code == 0, res.output
    keys = keyfile(tmp_path)
    res = runner.invoke(evidence_app, ["verify", str(tmp_path / "p"), "--keys", str(keys)])
    assert res.exit_code == 0 and "VERIFIED" in res.output and "does not prove" in res.output
    _flip(tmp_path / "p", "proofs.jsonl", 40, 2)
    res = runner.invoke(evidence_app, ["verify", str(tmp_path / "p"), "--keys", str(keys)])
    assert res.exit_code != 0 and "proofs.jsonl was changed" in str(res.exception)
    res = runner.invoke(evidence_app, ["keys", "--key", str(keyf), "--log-id", LOG, "--signer", "acme"])
    assert res.output.splitlines() == [vkey(LOG, KEY.public), vkey("acme", KEY.public)]


def test_demo_step_packages_the_biggest_campaign(built, tmp_path):
    import io

    from rich.console import Console

    from distillguard.evidence.demo import export_and_verify_biggest

    db = tmp_path / "fresh.duckdb"
    make_store(db, records(60)).close()
    scan = orjson.loads(built["scan"].read_bytes())
    console = Console(file=io.StringIO(), width=120)
    result = export_and_verify_biggest(db, scan, tmp_path, console=console)
    assert result["campaign"] == "C1" and result["accounts"] == 2 and result["exchanges"] == 40
    assert result["verified"] and result["tamper_caught"]
    assert "VERIFIED" in console.file.getvalue() and "FAILED" in console.file.getvalue()


json_junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                         max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.sampled_from(["exchanges.jsonl", "proofs.jsonl", "manifest"]), st.integers(0, 39), st.text(max_size=12),
       json_junk)
def test_malformed_content_under_a_valid_signature_fails_cleanly(built, tmp_path_factory, where, line, key, junk):
    """A signer-made package with arbitrary JSON in any place: VerifyError with a reason, never a crash."""
    pkg = tmp_path_factory.mktemp("junk") / "pkg"
    shutil.copytree(built["pkg"], pkg)

    def edit(pkg: Path, manifest: dict) -> None:
        if where == "manifest":
            target = manifest
            target[key or "logs"] = junk
            return
        lines = _lines(pkg, where)
        obj = orjson.loads(lines[line])
        path = [k for k in ("fields", "proof", "index", "log", "prev", "tree_size") if k in obj]
        name = path[len(key) % len(path)]
        if name == "fields" and isinstance(obj["fields"], dict):
            obj["fields"][key or "ip"] = junk
        else:
            obj[name] = junk
        lines[line] = orjson.dumps(obj)
        _set_lines(pkg, where, lines)

    try:
        _resign(pkg, edit)
    except (TypeError, KeyError, AttributeError):
        return                      # the junk broke our own test helper, not the verifier
    try:
        verify_package(pkg, built["keys"])
    except VerifyError as exc:
        assert str(exc) and "\n" not in str(exc)


@given(st.text(max_size=120))
def test_key_lines_never_crash(text):
    keys = Keys()
    try:
        keys.add_vkey(text)
    except VerifyError:
        pass


def test_cli_entry_point_verify_exit_codes(built, tmp_path):
    """The installed CLI: exit 0 and the two lists; exit 1 with one line on a tampered package; 2 on usage."""
    import subprocess
    import sys

    keys = keyfile(tmp_path)
    cmd = [sys.executable, "-m", "distillguard", "evidence", "verify"]
    ok = subprocess.run(cmd + [str(built["pkg"]), "--keys", str(keys)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "It proves" in ok.stdout and "It does not prove" in ok.stdout, ok.stderr
    bad = tmp_path / "pkg"
    shutil.copytree(built["pkg"], bad)
    _flip(bad, "verdict.json", 10, 0)
    res = subprocess.run(cmd + [str(bad), "--keys", str(keys)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "verdict.json was changed" in res.stderr
    res = subprocess.run(cmd + [str(tmp_path / "nope"), "--keys", str(keys)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "not a package directory" in res.stderr
    res = subprocess.run([sys.executable, "-m", "distillguard", "evidence", "export", "--db", str(built["db"]),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "exactly one of --account and --campaign" in res.stderr
