"""``distillguard gateway --workers N --state redis://...``: N replicas on one port.

Each worker is a process with its own event loop, scorer and log (``<log root>/<replica>/``),
listening on its own socket bound with ``SO_REUSEPORT`` to the same address: the kernel spreads
connections over the workers. They share accounts, limits and operator state through Redis
(:mod:`.state`), and one of them at a time (the loader lease) fills the store. The parent only
supervises: a worker that dies (even by SIGKILL) is started again with the same replica name,
so it finds its log and checkpoint where it left them; SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from distillguard.errors import BadInputError


def replica_base(cfg: Any) -> str:
    """The fleet-wide replica name of this gateway (workers add -w<i>): ``log.replica`` when
    set, else host name and port, unique across the machines of a fleet."""
    if cfg.log.replica and cfg.log.replica != "gw":
        return cfg.log.replica
    return f"{socket.gethostname()}-{cfg.port}"


def replica_config(cfg: Any, index: int) -> Any:
    """A worker's configuration: its replica name and its log directory under the log root."""
    out = copy.deepcopy(cfg)
    out.log.replica = f"{replica_base(cfg)}-w{index}"
    out.log.dir = Path(cfg.log.dir) / out.log.replica
    out.log.shared_dir = Path(cfg.log.dir)
    return out


def reuseport_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise BadInputError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)", field="workers")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInputError(f"cannot listen on {host}:{port} ({exc.strerror})", field="port") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve_one(cfg: Any, sock: socket.socket | None = None) -> None:
    """Run one replica in this process until it is told to stop."""
    import uvicorn

    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.server import uvicorn_config

    gw = Gateway(cfg)
    server = uvicorn.Server(uvicorn_config(build_app(gw), cfg.host, cfg.port, log_level="warning"))
    server.run(sockets=[sock] if sock is not None else None)


def _worker(cfg: Any, index: int, log_level: str) -> None:
    from distillguard.gateway.logs import configure

    configure(log_level)
    wcfg = replica_config(cfg, index)
    sock = reuseport_socket(wcfg.host, wcfg.port)
    serve_one(wcfg, sock)


def serve_workers(cfg: Any, workers: int, log_level: str = "info", *, restart_s: float = 1.0,
                  announce=print) -> int:
    """Start ``workers`` replicas on ``cfg.port`` and supervise them; returns when stopped."""
    if cfg.state is None:
        raise BadInputError("--workers needs --state redis://... (the workers share accounts, limits and "
                            "operator state there)", field="workers")
    if cfg.port == 0:
        with socket.socket() as s:      # one port for all, chosen now
            s.bind((cfg.host, 0))
            cfg.port = s.getsockname()[1]
    reuseport_socket(cfg.host, cfg.port).close()     # fail here, with one line, if the port is taken
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, Any] = {}
    stopping = False

    def start(i: int) -> None:
        p = ctx.Process(target=_worker, args=(cfg, i, log_level), name=f"distillguard-gateway-w{i}", daemon=False)
        p.start()
        procs[i] = p

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(workers):
            start(i)
        announce(f"{workers} workers on http://{cfg.host}:{cfg.port} (pids {', '.join(str(p.pid) for p in procs.values())})")
        restarts = 0
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping:
                    restarts += 1
                    announce(f"worker {i} (pid {p.pid}) exited with {p.exitcode}; starting it again")
                    time.sleep(restart_s)
                    start(i)
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        return restarts
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
