"""`distillguard gateway`: run the enforcing OpenAI-compatible gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillguard.console import err_console
from distillguard.errors import UsageError


def gateway(
    upstream: Optional[str] = typer.Option(None, "--upstream", help="Base URL of the OpenAI-compatible model server."),
    config: Optional[Path] = typer.Option(None, "--config", help="gateway.toml (see docs/gateway.md)."),
    db: Optional[Path] = typer.Option(None, "--db", help="DuckDB store the log is loaded into (default events.duckdb)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default 8080)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="JSON object mapping API keys to accounts."),
    admin_token: Optional[str] = typer.Option(None, "--admin-token", envvar="DISTILLGUARD_ADMIN_TOKEN",
                                              help="Bearer token for /admin/... (else the admin API is off)."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Directory of the durable event log."),
    mode: Optional[str] = typer.Option(None, "--mode", help="enforce, or shadow (decide and log, never act)."),
    fail: Optional[str] = typer.Option(None, "--fail", help="open or closed: what an internal policy error does."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Target false-positive rate of the live flag."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error (JSON lines on stderr)."),
    intel: Optional[Path] = typer.Option(None, "--intel", metavar="HOME",
                                         help="An intel home: peers' live indicators feed the policy "
                                              "(overrides [intel] home; see docs/gateway.md)."),
    state: Optional[str] = typer.Option(None, "--state", metavar="URL",
                                        help="redis://host:port/db: share accounts, limits and operator state with "
                                             "every replica pointing there (default: embedded, this process only)."),
    workers: int = typer.Option(1, "--workers", min=1, max=256,
                                help="Replica processes on this port (SO_REUSEPORT); more than 1 needs --state."),
    replica: Optional[str] = typer.Option(None, "--replica",
                                          help="This gateway's name in the fleet (default: host name and port); "
                                               "its log goes to LOG_DIR/<replica>-w<i>/."),
) -> None:
    """The enforcing gateway: an OpenAI-compatible proxy that logs, scores and acts with reasons."""
    import uvicorn

    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.logs import configure as configure_logs
    from distillguard.gateway.server import uvicorn_config

    cfg = load_config(config, upstream=upstream, db=db, port=port, host=host, keys=keys, admin_token=admin_token,
                      baseline=baseline, fpr=fpr)
    if log_dir is not None:
        cfg.log.dir = log_dir
    if mode is not None:
        cfg.policy.mode = mode
    if fail is not None:
        cfg.policy.fail = fail
    if intel is not None:
        cfg.intel.home = intel
    if state is not None:
        cfg.state = state
    if replica is not None:
        cfg.log.replica = replica
    cfg.validate()
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    configure_logs(log_level)
    if cfg.state is not None:
        from distillguard.gateway.fleet.state import redact
        from distillguard.gateway.fleet.workers import replica_config, serve_workers

        if workers > 1:
            err_console.print(f"distillguard gateway fleet: {workers} workers → {cfg.upstream}, shared state "
                              f"{redact(cfg.state)}, logs under {cfg.log.dir}/")
            serve_workers(cfg, workers, log_level, announce=err_console.print)
            return
        cfg = replica_config(cfg, 0)
    elif workers > 1:
        raise UsageError("--workers needs --state redis://... (the workers share accounts, limits and operator "
                         "state there)")
    gw = Gateway(cfg)
    err_console.print(f"distillguard gateway on http://{cfg.host}:{cfg.port} → {cfg.upstream} "
                      f"(mode {cfg.policy.mode}, fail-{cfg.policy.fail}, {len(gw.keys)} keys, log {cfg.log.dir}, "
                      f"sink {cfg.log.sink}{'' if not gw.recovered else f', recovered {gw.recovered:,} events'})")
    if gw.intel is not None:
        st = gw.intel.status()
        err_console.print(f"intel from {st['home']}: {st['indicators']:,} live indicators of {len(st['peers'])} trusted "
                          f"peer(s), {st['accounts_matched']:,} account(s) matched"
                          + (f"; re-read every {cfg.intel.reload_s:g} s when it changes" if cfg.intel.reload_s else ""))
    if gw.admin_token is None:
        err_console.print("admin API off (no --admin-token / DISTILLGUARD_ADMIN_TOKEN)")
    uvicorn.Server(uvicorn_config(build_app(gw), cfg.host, cfg.port, log_level="warning")).run()
