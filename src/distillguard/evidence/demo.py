"""The demo's last step: an evidence package for its biggest campaign, verified offline."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

DEMO_LOG = "demo.example/distillguard/store"
DEMO_WITNESS = "witness.demo.example"


def export_and_verify_biggest(db: Path, scan: dict[str, Any], out: Path, *, console: Console | None = None) -> dict:
    """Build the store's tree, sign a checkpoint and have a (demo) witness cosign it, export the biggest
    flagged campaign of ``scan`` (personal fields redacted), verify it with only the public keys,
    then show that a one-byte change is caught. Returns the figures."""
    from distillguard.evidence import treestore
    from distillguard.evidence.commands import _salt_key
    from distillguard.evidence.note import SIG_COSIGNATURE, vkey
    from distillguard.evidence.package import ExportOptions, biggest_campaign, campaign_accounts, export_package
    from distillguard.evidence.verify import Keys, VerifyError, verify_package
    from distillguard.evidence.witness import Witness
    from distillguard.intel.keys import SigningKey, write_secret
    from distillguard.store import EventStore

    console = console or Console()
    work = out / "evidence"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    campaign = biggest_campaign(scan)
    if campaign is None:
        console.print("no flagged campaign: nothing to package")
        return {"campaign": None}
    key, witness_key = SigningKey.generate(), SigningKey.generate()
    write_secret(work / "signing.pem", key.pem())
    scan_path = work / "scan.json"
    scan_path.write_bytes(orjson.dumps(scan, option=orjson.OPT_INDENT_2))
    salt = _salt_key(key)
    with EventStore(db) as store:
        report = treestore.build(store, salt, DEMO_LOG)
        note = treestore.sign_current(store, DEMO_LOG, key.private)
        witness = Witness(work / "witness-state", DEMO_WITNESS, witness_key, {DEMO_LOG: key.public})
        treestore.add_checkpoint(store, witness.cosign(note, []))
        accounts = campaign_accounts(scan, campaign)
        manifest = export_package(store, key, salt, work / "pkg", ExportOptions(
            accounts=accounts, subject={"campaign": campaign}, signer="demo-provider", scan=scan_path,
            terms_version="demo-terms-1", redact=("ip", "user_agent", "identity", "key"),
            witnesses={DEMO_WITNESS: witness_key.public}))
    keys_file = work / "public.vkeys"
    keys_file.write_text("\n".join([vkey(DEMO_LOG, key.public), vkey("demo-provider", key.public),
                                    vkey(DEMO_WITNESS, witness_key.public, SIG_COSIGNATURE)]) + "\n")
    console.print(f"tree over the store: {report.size:,} leaves in {report.seconds:.1f} s; checkpoint signed and "
                  f"cosigned by {DEMO_WITNESS}")
    console.print(f"package for campaign {escape(campaign)} ({len(accounts)} accounts, {manifest['exchanges']:,} "
                  f"exchanges) → {work / 'pkg'}")
    finding = verify_package(work / "pkg", Keys.load([keys_file]))
    console.print(f"[green]VERIFIED[/green] with only the package and {keys_file.name} "
                  f"(distillguard evidence verify {work / 'pkg'} --keys {keys_file})")
    for line in finding.proves():
        console.print(f"  proves: {escape(line)}")
    for line in finding.does_not_prove()[:3]:
        console.print(f"  does not prove: {escape(line)}")
    tampered = work / "pkg-tampered"
    shutil.copytree(work / "pkg", tampered)
    data = bytearray((tampered / "exchanges.jsonl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "exchanges.jsonl").write_bytes(bytes(data))
    try:
        verify_package(tampered, Keys.load([keys_file]))
        caught = False
    except VerifyError as exc:
        caught = True
        console.print(f"one flipped bit in exchanges.jsonl: [red]FAILED[/red] {escape(str(exc))}")
    return {"campaign": campaign, "accounts": len(accounts), "exchanges": manifest["exchanges"],
            "leaves": report.size, "verified": True, "tamper_caught": caught}
