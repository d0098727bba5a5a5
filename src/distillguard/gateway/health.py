"""Unauthenticated operations endpoints: /healthz (the durable log is writable) and /metrics
(Prometheus text format)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from distillguard import __version__
from distillguard.gateway.core import Gateway
from distillguard.gateway.openai_errors import JSON


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ok = gw.log.error is None
    body = {"status": "ok" if ok else "degraded", "version": __version__}
    if gw.fleet is not None:          # serving on local state is degraded, not down (the log still records)
        body["state"] = gw.fleet.state.status()["mode"]
        if body["state"] != "shared" and ok:
            body["status"] = "degraded"
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type=JSON)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")
