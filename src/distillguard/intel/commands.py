"""`distillguard intel …`: keys and peers, export/import of signed STIX bundles, TAXII serve/sync,
and a scan that takes peers' indicators into account.

Errors print one line and exit 2 (see ``distillguard.cli.main``); rejected bundles name the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from distillguard.console import console, err_console
from distillguard.errors import BadInputError, DistillguardError, UsageError

intel_app = typer.Typer(help="Shared intelligence with peer organisations: signed STIX 2.1 over TAXII 2.1.",
                        no_args_is_help=True)

HOME_HELP = "Intel home directory (default: $DISTILLGUARD_INTEL_HOME, else ./intel)."


def _home_option() -> Optional[Path]:
    return typer.Option(None, "--home", help=HOME_HELP, show_default=False)


def _load_home(path: Optional[Path]):
    from distillguard.intel.home import IntelHome, resolve_home

    return IntelHome.load(resolve_home(path))


def _read_key_text(value: str) -> str:
    """A key given inline or as a file path."""
    path = Path(value)
    if len(value) < 200 and path.exists():
        try:
            return path.read_text(encoding="ascii")
        except (UnicodeDecodeError, IsADirectoryError):
            raise BadInputError("not a key file (base64 text or PEM)", source=value) from None
    return value


@intel_app.command("init")
def init(
    org: str = typer.Option(..., "--org", help="Our organisation's name, as peers will see it."),
    community_key: Optional[Path] = typer.Option(
        None, "--community-key", help="The community key file agreed with the peers (default: create a new one)."),
    tlp: str = typer.Option("amber", "--tlp", help="Default TLP 2.0 marking: clear, green, amber, amber+strict, red."),
    valid_days: int = typer.Option(90, "--valid-days", min=1, help="Default lifetime of what we share."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Create an intel home: our signing key pair, the community key, our TAXII collections."""
    from distillguard.intel.home import IntelHome, resolve_home
    from distillguard.intel.keys import CommunityKey

    key = CommunityKey.load(community_key) if community_key else CommunityKey.generate()
    target = resolve_home(home)
    created = IntelHome.init(target, org, key, tlp=tlp, valid_days=valid_days)
    console.print(f"intel home for [bold]{escape(created.org)}[/bold] → {target}")
    console.print(f"  public key (give it to every peer): {created.public_key_path} "
                  + escape(f"[{created.signing_key().key_id}]"))
    console.print(f"  community key {key.key_id}: {target / 'community.key'}"
                  + ("" if community_key else "  (new: share it out of band with the peers, e.g. in person or "
                                                 "via your secrets manager; never inside a bundle)"))


@intel_app.command("add-peer")
def add_peer(
    name: str = typer.Argument(..., help="The peer's name (also its HTTP Basic user name on our server)."),
    public_key: str = typer.Option(..., "--public-key", help="The peer's signing.pub (file or base64 text)."),
    trust: float = typer.Option(1.0, "--trust", min=0.0, max=1.0,
                                help="Weight of the peer's indicators (0 ignores them, 1 takes their confidence)."),
    url: Optional[str] = typer.Option(None, "--url", help="The peer's TAXII API root, to pull from (intel sync)."),
    collection: str = typer.Option("shared", "--collection", help="The peer's collection to pull (id or title)."),
    secret: Optional[str] = typer.Option(None, "--secret", envvar="DISTILLGUARD_PEER_SECRET",
                                         help="What we present to the peer's server (it gives you this)."),
    username: Optional[str] = typer.Option(None, "--username",
                                           help="Our user name on the peer's server (HTTP Basic; default: bearer)."),
    read: List[str] = typer.Option([], "--read", help="Our collections the peer may read (repeat)."),
    write: List[str] = typer.Option([], "--write", help="Our collections the peer may write (repeat)."),
    replace: bool = typer.Option(False, "--replace", help="Update an existing peer."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Register a peer: its public key and trust; optionally its server and its rights on ours."""
    from distillguard.intel.home import Peer, new_secret, secret_sha256
    from distillguard.intel.keys import parse_public_key, public_key_text

    h = _load_home(home)
    key = parse_public_key(_read_key_text(public_key), "--public-key")
    server_secret = None
    old = h.peers.get(name)
    peer = Peer(name=name, public_key=public_key_text(key), trust=trust, url=url,
                collection=collection if url else None, secret=secret, username=username,
                server_secret_sha256=old.server_secret_sha256 if (old and replace) else None,
                read=list(read), write=list(write))
    if (read or write) and peer.server_secret_sha256 is None:
        server_secret = new_secret()
        peer.server_secret_sha256 = secret_sha256(server_secret)
    h.add_peer(peer, replace=replace)
    h.save()
    console.print(f"peer [bold]{escape(name)}[/bold] ({peer.key_id}, trust {trust:g}) registered in {h.path}")
    if server_secret:
        console.print(f"  their secret for our TAXII server (shown once; give it to {escape(name)}): "
                      f"[bold]{server_secret}[/bold]")
        console.print(f"  rights: read {', '.join(read) or '-'}; write {', '.join(write) or '-'}")


@intel_app.command("peers")
def peers(home: Optional[Path] = _home_option()) -> None:
    """List our peers: key, trust, where we pull from, their rights on our server."""
    h = _load_home(home)
    table = Table(title=f"peers of {h.org}")
    for col in ("peer", "key", "trust", "pulls from", "may read", "may write"):
        table.add_column(col)
    for p in h.peers.values():
        table.add_row(escape(p.name), p.key_id, f"{p.trust:g}",
                      escape(f"{p.url} [{p.collection}]") if p.url else "-", ", ".join(p.read) or "-",
                      ", ".join(p.write) or "-")
    console.print(table)


@intel_app.command("export")
def export(
    source: Path = typer.Option(..., "--from", help="A scan's JSON (scan --out), or a DuckDB event store to scan."),
    out: Path = typer.Option(..., "--out", help="Where to write the bundle (the signature goes to OUT.sig)."),
    fmt: str = typer.Option("stix", "--format", help="stix: a signed STIX 2.1 bundle; misp: a MISP event "
                                                     "(MISP JSON) with every indicator a correlatable attribute."),
    db: Optional[Path] = typer.Option(None, "--db", help="With a scan JSON: the DuckDB event store it scanned "
                                                         "(identifiers and prompts are read from it)."),
    tlp: Optional[str] = typer.Option(None, "--tlp", help="TLP 2.0 marking (default: the home's, amber)."),
    valid_days: Optional[int] = typer.Option(None, "--valid-days", min=1, help="Expiry of indicators and signature."),
    min_confidence: int = typer.Option(50, "--min-confidence", min=0, max=100,
                                       help="Export campaigns at least this confident (0-100)."),
    campaign: List[str] = typer.Option([], "--campaign", help="Only these clusters or accounts (repeat)."),
    publish: Optional[bool] = typer.Option(None, "--publish/--no-publish",
                                           help="Also add the signed STIX bundle to our TAXII 'shared' collection "
                                                "(default: yes with --format stix, no with --format misp)."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Confirmed campaigns → a signed STIX 2.1 bundle or a MISP event (only keyed hashes leave, never identifiers)."""
    from distillguard.errors import load_json_file
    from distillguard.intel.export import ExportOptions, export_bundle
    from distillguard.intel.publish import SHARED, sign_and_publish
    from distillguard.intel.store import IntelStore
    from distillguard.store import EventStore, SourceKind, source_kind

    if fmt not in ("stix", "misp"):
        raise UsageError(f"--format must be stix or misp, got {fmt!r}")
    publish = (fmt == "stix") if publish is None else publish
    h = _load_home(home)
    options = ExportOptions(tlp=tlp or h.tlp, valid_days=valid_days or h.valid_days, min_confidence=min_confidence,
                            only=tuple(campaign))
    options.check()
    if not source.exists():
        raise BadInputError("no such file", source=str(source))
    if source_kind(source) is SourceKind.DUCKDB:
        from distillguard.detect.scan import ScanOptions, scan_store

        events_db = source
        with EventStore(events_db, read_only=True) as store, err_console.status("scanning…", spinner="dots"):
            scan = scan_store(store, ScanOptions(workers=os.cpu_count() or 1)).to_dict()
    else:
        scan = load_json_file(source, "scan result")
        if db is None:
            raise UsageError("exporting from a scan's JSON needs --db, the DuckDB event store it scanned")
        events_db = db
    with IntelStore(h.db_path) as istore:
        previous = istore.created_of(SHARED)
        with EventStore(events_db, read_only=True) as store, err_console.status("building the bundle…",
                                                                               spinner="dots"):
            result = export_bundle(scan, store.con, h, options, previous=previous)
        if fmt == "stix" or publish:
            sign_and_publish(result.bundle, h, istore if publish else None, valid_days=options.valid_days,
                             out=out if fmt == "stix" else None)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.indicators.items())) or "none"
    if fmt == "misp":
        from distillguard.intel.misp import write_misp_event

        attributes = write_misp_event(result.bundle, out)
        console.print(f"{len(result.campaigns)} campaign(s), indicators: {kinds} → MISP event {out} "
                      f"({attributes} indicator attribute(s)) [{options.tlp.upper()}]"
                      + (f"; signed STIX bundle published to our '{SHARED}' collection" if publish else ""))
    else:
        console.print(f"{len(result.campaigns)} campaign(s), {len(result.objects)} STIX objects, indicators: "
                      f"{kinds} [{options.tlp.upper()}] → {out} (signature {out.name}.sig)"
                      + (f"; published to our '{SHARED}' collection" if publish else ""))
    if result.withheld:
        console.print("withheld (also used by accounts in good standing): "
                      + ", ".join(f"{k} {v}" for k, v in sorted(result.withheld.items())))
    if not result.campaigns:
        console.print("[yellow]no confirmed campaign in this scan: the export holds only our identity[/yellow]")


@intel_app.command("import")
def import_(
    bundles: List[Path] = typer.Argument(..., help="Signed STIX bundles from peers (signature beside: BUNDLE.sig)."),
    signature: Optional[Path] = typer.Option(None, "--signature", help="The detached signature (one bundle only)."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Verify and import peers' bundles (each all or nothing; a bundle imported before is a no-op)."""
    from distillguard.intel.importer import import_bundle
    from distillguard.intel.store import IntelStore

    if signature is not None and len(bundles) != 1:
        raise UsageError("--signature goes with exactly one bundle")
    h = _load_home(home)
    with IntelStore(h.db_path) as store:
        for path in bundles:
            with err_console.status(f"importing {path}…", spinner="dots") as status:
                result = import_bundle(path, h, store, signature=signature,
                                       progress=lambda n: status.update(f"importing {path}: {n:,} objects"))
            console.print(escape(result.summary()))


@intel_app.command("revoke")
def revoke_(
    ids: List[str] = typer.Argument(..., help="Ids of objects we published (indicators, campaigns…)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the revocation as a signed bundle file."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Revoke objects we shared: signed new versions with revoked: true, published to our collection."""
    from distillguard.intel.publish import revoke
    from distillguard.intel.store import IntelStore

    h = _load_home(home)
    with IntelStore(h.db_path) as store:
        bundle = revoke(h, store, ids, valid_days=h.valid_days, out=out)
    console.print(f"revoked {len(bundle['objects'])} object(s); published to our 'shared' collection"
                  + (f" and → {out}" if out else ""))


@intel_app.command("serve")
def serve(
    port: int = typer.Option(9500, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (put TLS in front for the Internet)."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Serve our collections over TAXII 2.1 (per-peer credentials and rights from intel.json)."""
    import uvicorn

    from distillguard.gateway.server import uvicorn_config
    from distillguard.intel.taxii import API_ROOT, TaxiiServer

    h = _load_home(home)
    app = TaxiiServer(h).app()
    err_console.print(f"TAXII 2.1 for {h.org} on http://{host}:{port}/taxii2/ (API root /{API_ROOT}/; "
                      f"{len(h.peers)} peer(s); collections {', '.join(h.collections)})")
    uvicorn.Server(uvicorn_config(app, host, port, log_level="warning")).run()


@intel_app.command("sync")
def sync(
    names: Optional[List[str]] = typer.Argument(None, help="Peers to pull from (default: every peer with --url)."),
    home: Optional[Path] = _home_option(),
) -> None:
    """Pull peers' TAXII collections; verify and import each signed set."""
    from distillguard.intel.store import IntelStore
    from distillguard.intel.sync import sync_peer

    h = _load_home(home)
    wanted = list(names or [n for n, p in h.peers.items() if p.url])
    unknown = [n for n in wanted if n not in h.peers]
    if unknown:
        raise UsageError(f"no peer {unknown[0]!r} (see 'distillguard intel peers')")
    if not wanted:
        raise UsageError("no peer to pull from: register one with 'intel add-peer NAME --url ...'")
    failed = False
    with IntelStore(h.db_path) as store:
        for name in wanted:
            with err_console.status(f"pulling from {name}…", spinner="dots") as status:
                result = sync_peer(h, h.peers[name], store,
                                   progress=lambda n: status.update(f"pulling from {name}: {n:,} objects"))
            console.print(escape(result.summary()))
            failed |= not result.ok
    if failed:
        raise DistillguardError("some signed sets were rejected (see above); the sync position did not move")


@intel_app.command("scan")
def scan(
    sources: List[Path] = typer.Argument(..., help="Event logs (JSON Lines, Parquet) or a DuckDB store."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: float = typer.Option(0.001, "--fpr", help="Target false-positive rate on organic accounts."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON result here."),
    fail_on_findings: bool = typer.Option(False, "--fail-on-findings", help="Exit 1 when anything is flagged."),
    limit: int = typer.Option(25, "--limit", min=1, help="Rows in the table."),
    home: Optional[Path] = _home_option(),
) -> None:
    """`scan` with peers' indicators as one more signal (reasons name the peer and the indicator)."""
    from distillguard.detect.commands import scan as scan_command
    from distillguard.intel.home import resolve_home

    # The same as `distillguard scan --intel HOME` with its defaults for the other options.
    scan_command(sources=sources, baseline=baseline, fpr=fpr, fmt=fmt, out=out, html=None, engine="local",
                 allowlist=None, price=10.0, fail_on_findings=fail_on_findings, limit=limit, workers=None,
                 intel=resolve_home(home))
