"""Processes for the fleet's exactly-once tests: a log writer (a replica's log, as the gateway
writes it) and a loader contending for the lease. Run as ``python tests/fleet_support.py ...``."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))


def writer(directory: str, count: int, batch: int, pause: float) -> None:
    """Append ``count`` events in fsynced batches; print each batch's ids once it is on disk
    (what the gateway would have answered)."""
    from conftest import _make_event
    from distillguard.gateway.wal import DurableLog
    log = DurableLog(directory, segment_bytes=64 << 10)
    written = 0
    while written < count:
        ids = []
        for _ in range(min(batch, count - written)):
            event = _make_event(written, id=uuid.uuid4().hex)
            event["ts"] = time.time()
            log.append_nowait(orjson.dumps(event))
            ids.append(event["id"])
            written += 1
        log.flush()
        sys.stdout.write(" ".join(ids) + "\n")
        sys.stdout.flush()
        time.sleep(pause)
    log.close()


def loader(root: str, db: str, url: str, holder: str, seconds: float) -> None:
    from distillguard.gateway.fleet.loader import FleetLoader
    from distillguard.gateway.sinks import DuckDBSink
    fl = FleetLoader(root, lambda: DuckDBSink(db), url, holder=holder, ttl_s=1.5, interval_s=0.1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            fl.load_once()
        except Exception as exc:  # noqa: BLE001 - keep contending, as the gateway's thread does
            print(f"error {exc}", file=sys.stderr, flush=True)
        time.sleep(0.1)
    fl.stop(final_load=False)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "writer":
        writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        loader(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))
