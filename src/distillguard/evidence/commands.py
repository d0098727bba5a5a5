"""`distillguard evidence …`: build the store's Merkle trees, sign checkpoints, witness a peer's
checkpoints, export and verify evidence packages. See docs/evidence.md.

Errors print one line and exit 2; a package that does not verify prints its reason and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from distillguard.console import console
from distillguard.errors import UsageError

evidence_app = typer.Typer(help="Tamper-evident evidence: Merkle log, signed and witnessed checkpoints, "
                                "evidence packages.", no_args_is_help=True)

KEY_HELP = "Our Ed25519 signing key (PEM; default: the intel home's signing.pem)."


def _signing_key(key: Optional[Path], home: Optional[Path]):
    from distillguard.intel.keys import SigningKey

    if key is not None:
        return SigningKey.load(key)
    from distillguard.intel.home import IntelHome, resolve_home

    return IntelHome.load(resolve_home(home)).signing_key()


def _salt_key(signing) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from distillguard.evidence.leaf import salt_key_from_private

    raw = signing.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    return salt_key_from_private(raw)


def _store(db: Path, read_only: bool = False):
    from distillguard.store import EventStore

    return EventStore(db, read_only=read_only)


@evidence_app.command("build")
def build(
    db: Path = typer.Option(..., "--db", help="The DuckDB store."),
    log_id: str = typer.Option("distillguard/store", "--log-id",
                               help="Tree (checkpoint origin) for stored events no tree holds yet."),
    log_dir: List[Path] = typer.Option([], "--log-dir", help="A gateway's log directory: import its own tree first "
                                                             "(each leaf checked against the stored row). Repeatable."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (for its signing key)."),
) -> None:
    """Append stored exchanges to the evidence trees and sign a checkpoint of each tree that grew."""
    from distillguard.evidence import treestore

    signing = _signing_key(key, home)
    salt = _salt_key(signing)
    with _store(db) as store:
        for d in log_dir:
            origin, added, notes = treestore.import_gateway_dir(store, d, salt)
            console.print(f"{escape(origin)}: {added:,} leaves imported from {escape(str(d))}, {notes} checkpoint(s) kept")
        report = treestore.build(store, salt, log_id)
        if report.appended:
            treestore.sign_current(store, log_id, signing.private)
        console.print(f"{escape(log_id)}: {report.appended:,} leaves appended ({report.size:,} in the tree) "
                      f"in {report.seconds:.1f} s")


@evidence_app.command("keys")
def keys(
    log_id: List[str] = typer.Option(["distillguard/store"], "--log-id", help="Log ids whose key to print."),
    signer: Optional[str] = typer.Option(None, "--signer", help="Our name on package manifests."),
    witness: Optional[str] = typer.Option(None, "--witness", help="Our name as a witness (cosignature key)."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (for its signing key)."),
) -> None:
    """Print our verifier keys (C2SP vkey lines) for verifiers' --keys files."""
    from distillguard.evidence.note import SIG_COSIGNATURE, vkey

    public = _signing_key(key, home).public
    for name in [*log_id, *([signer] if signer else [])]:
        print(vkey(name, public))
    if witness:
        print(vkey(witness, public, SIG_COSIGNATURE))


@evidence_app.command("export")
def export(
    db: Path = typer.Option(..., "--db", help="The DuckDB store (with evidence trees: run 'evidence build')."),
    out: Path = typer.Option(..., "--out", help="Package directory to create."),
    account: Optional[str] = typer.Option(None, "--account", help="One account's exchanges."),
    campaign: Optional[str] = typer.Option(None, "--campaign", help="A campaign of the scan result (cluster id or "
                                                                    "flagged account); needs --scan."),
    scan: Optional[Path] = typer.Option(None, "--scan", help="The scan result JSON (scan --out): the verdict."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="The baseline the scan used (default: shipped)."),
    report: List[Path] = typer.Option([], "--report", help="Watermark, radioactivity or compare report to include. "
                                                           "Repeatable."),
    measures: List[Path] = typer.Option([], "--measures", help="A measures file in force (gateway config, terms, "
                                                               "watermark settings). Repeatable."),
    terms_version: Optional[str] = typer.Option(None, "--terms-version", help="Terms of service version in force."),
    redact: str = typer.Option("", "--redact", help="Comma-separated fields to reveal only as commitments "
                                                    "(e.g. ip,user_agent,identity,key)."),
    signer: str = typer.Option("distillguard", "--signer", help="Our name on the manifest signature."),
    witness_keys: List[Path] = typer.Option([], "--witness-keys", help="Witnesses' vkey files: prefer checkpoints "
                                                                       "they cosigned."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (for its signing key)."),
) -> None:
    """Write an evidence package for one account or one campaign."""
    from distillguard.errors import load_json_file
    from distillguard.evidence.package import ExportOptions, campaign_accounts, export_package
    from distillguard.evidence.verify import Keys

    if (account is None) == (campaign is None):
        raise UsageError("give exactly one of --account and --campaign")
    if campaign is not None and scan is None:
        raise UsageError("--campaign needs --scan (the scan result that names the campaign)")
    if campaign is not None:
        accounts, subject = campaign_accounts(load_json_file(scan, "scan result"), campaign), {"campaign": campaign}
    else:
        accounts, subject = [account], {"account": account}
    wit = Keys.load(list(witness_keys)).witnesses if witness_keys else {}
    signing = _signing_key(key, home)
    opts = ExportOptions(accounts=accounts, subject=subject, signer=signer, scan=scan, baseline=baseline,
                         reports=list(report), measures=list(measures), terms_version=terms_version,
                         redact=tuple(f.strip() for f in redact.split(",") if f.strip()), witnesses=wit)
    with _store(db) as store:
        manifest = export_package(store, signing, _salt_key(signing), out, opts)
    console.print(f"wrote {escape(str(out))}: {manifest['exchanges']:,} exchanges of {len(accounts)} account(s), "
                  f"{len(manifest['files'])} files, signed by {escape(signer)}")


@evidence_app.command("verify")
def verify(
    pkg: Path = typer.Argument(..., help="The package directory."),
    keys: List[Path] = typer.Option(..., "--keys", help="File(s) of verifier keys (vkey lines): the log's, the "
                                                        "signer's, witnesses'. Repeatable."),
) -> None:
    """Verify a package offline; print what it proves and what it does not. Exit 1 if it fails."""
    from distillguard.evidence.verify import Keys, verify_package

    finding = verify_package(pkg, Keys.load(list(keys)))
    console.print("[green]VERIFIED[/green]")
    console.print("[bold]It proves:[/bold]")
    for line in finding.proves():
        console.print(f"  - {escape(line)}")
    console.print("[bold]It does not prove:[/bold]")
    for line in finding.does_not_prove():
        console.print(f"  - {escape(line)}")


@evidence_app.command("witness")
def witness(
    note: Path = typer.Argument(..., help="A peer's signed checkpoint (note file)."),
    state: Path = typer.Option(..., "--state", help="Our witness state directory (last cosigned checkpoint per log)."),
    name: str = typer.Option(..., "--name", help="Our witness name."),
    log_keys: List[Path] = typer.Option(..., "--log-keys", help="vkey file(s) of the logs we witness."),
    proof: Optional[Path] = typer.Option(None, "--proof", help="Consistency proof from our last cosigned checkpoint "
                                                               "(JSON list of hex hashes)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the cosigned note here (default: stdout)."),
    key: Optional[Path] = typer.Option(None, "--key", help=KEY_HELP),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (for its signing key)."),
) -> None:
    """Cosign a peer's checkpoint after checking it extends the last one we cosigned."""
    from distillguard.errors import load_json_file
    from distillguard.evidence.verify import Keys
    from distillguard.evidence.witness import Witness

    hashes = load_json_file(proof, "consistency proof") if proof is not None else []
    if not isinstance(hashes, list):
        raise UsageError("--proof must be a JSON list of hex hashes")
    w = Witness(state, name, _signing_key(key, home), Keys.load(list(log_keys)).logs)
    cosigned = w.cosign(note.read_text(encoding="utf-8"), [str(h) for h in hashes])
    if out is not None:
        out.write_text(cosigned, encoding="utf-8")
    else:
        print(cosigned, end="")


@evidence_app.command("publish")
def publish(
    db: Path = typer.Option(..., "--db", help="The DuckDB store with our trees."),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (default: $DISTILLGUARD_INTEL_HOME or ./intel)."),
) -> None:
    """Publish our newest checkpoints (with consistency proofs) to our TAXII 'shared' collection."""
    from distillguard.evidence.exchange import publish_checkpoints
    from distillguard.intel.home import IntelHome, resolve_home
    from distillguard.intel.store import IntelStore

    h = IntelHome.load(resolve_home(home))
    with _store(db) as store, IntelStore(h.db_path) as istore:
        n = publish_checkpoints(store, h, istore)
    console.print(f"published {n} checkpoint(s); peers witness them after 'distillguard intel sync'")


@evidence_app.command("witness-peers")
def witness_peers_cmd(
    state: Path = typer.Option(..., "--state", help="Our witness state directory."),
    name: str = typer.Option(..., "--name", help="Our witness name (as our cosignatures carry it)."),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (default: $DISTILLGUARD_INTEL_HOME or ./intel)."),
) -> None:
    """Cosign peers' checkpoints pulled with 'intel sync' (each checked against the last we cosigned)
    and publish the cosignatures."""
    from distillguard.evidence.exchange import witness_peers
    from distillguard.intel.home import IntelHome, resolve_home
    from distillguard.intel.store import IntelStore

    h = IntelHome.load(resolve_home(home))
    with IntelStore(h.db_path) as istore:
        result = witness_peers(h, istore, state, name)
    console.print(f"cosigned {len(result['cosigned'])}: {escape(', '.join(result['cosigned']) or '-')}")
    for reason in result["refused"]:
        console.print(f"[red]refused[/red] {escape(reason)}")


@evidence_app.command("collect")
def collect(
    db: Path = typer.Option(..., "--db", help="The DuckDB store with our trees."),
    home: Optional[Path] = typer.Option(None, "--home", help="Intel home (default: $DISTILLGUARD_INTEL_HOME or ./intel)."),
) -> None:
    """Merge peers' cosignatures of our checkpoints (pulled with 'intel sync') into the store."""
    from distillguard.evidence.exchange import collect_cosignatures
    from distillguard.intel.home import IntelHome, resolve_home
    from distillguard.intel.store import IntelStore

    h = IntelHome.load(resolve_home(home))
    with _store(db) as store, IntelStore(h.db_path) as istore:
        n = collect_cosignatures(store, h, istore)
    console.print(f"{n} new cosignature(s) kept")
