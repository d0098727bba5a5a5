"""The columnar form of the event record, shared by the DuckDB store and Parquet files.

Record fields become columns of the same name (JSON objects as JSON text), plus a few derived
columns the detectors read without re-parsing request bodies: ``prompt_text``, ``system_prompt``,
``n_turns``, ``max_tokens``, ``logprobs``, ``has_tools``, ``temperature``, ``end_user`` and the token counts. The output text is
not duplicated into a column: it stays inside ``response`` (see :func:`response_text`).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import orjson
import pyarrow as pa

from distillguard.events.schema import Event, prompt_view

EVENT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("ts", pa.timestamp("us")),           # UTC
    ("account", pa.string()),
    ("key", pa.string()),
    ("endpoint", pa.string()),
    ("model", pa.string()),
    ("ip", pa.string()),
    ("user_agent", pa.string()),
    ("status", pa.int32()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("prompt_text", pa.string()),
    ("system_prompt", pa.string()),
    ("n_turns", pa.int32()),
    ("n_messages", pa.int32()),
    ("max_tokens", pa.int64()),
    ("logprobs", pa.bool_()),
    ("has_tools", pa.bool_()),
    ("temperature", pa.float64()),
    ("end_user", pa.string()),            # the caller's end-user id (request.safety_identifier/user)
    ("request", pa.string()),              # JSON text
    ("response", pa.string()),             # JSON text (a string response is stored as a JSON string)
    ("identity", pa.string()),             # JSON text
    ("usage", pa.string()),                # JSON text
    ("extra", pa.string()),                # JSON text of unknown fields, kept not dropped
])

_DUMPS = orjson.dumps

# SQL (DuckDB) for the ``end_user`` column from the ``request`` JSON text, for stores written before
# the column existed: strings only, as :func:`distillguard.events.schema.end_user_of` reads them.
END_USER_FROM_REQUEST_SQL = "left(coalesce({0}), 256)".format(", ".join(
    f"CASE WHEN json_type(request, '{path}') = 'VARCHAR' AND trim(json_extract_string(request, '{path}')) <> '' "
    f"THEN json_extract_string(request, '{path}') END"
    for path in ("$.safety_identifier", "$.user", "$.metadata.user_id")))


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _DUMPS(value).decode()


class ColumnBuilder:
    """Accumulates events column by column and emits Arrow tables of ``EVENT_SCHEMA``."""

    def __init__(self) -> None:
        self._cols: dict[str, list[Any]] = {name: [] for name in EVENT_SCHEMA.names}

    def __len__(self) -> int:
        return len(self._cols["id"])

    def add(self, ev: Event) -> None:
        c = self._cols
        view = prompt_view(ev.request)
        usage = ev.usage or {}
        c["id"].append(ev.id)
        c["ts"].append(ev.ts)
        c["account"].append(ev.account)
        c["key"].append(ev.key)
        c["endpoint"].append(ev.endpoint)
        c["model"].append(ev.model)
        c["ip"].append(ev.ip)
        c["user_agent"].append(ev.user_agent)
        c["status"].append(ev.status)
        c["prompt_tokens"].append(usage.get("prompt_tokens"))
        c["completion_tokens"].append(usage.get("completion_tokens"))
        c["prompt_text"].append(view.prompt_text)
        c["system_prompt"].append(view.system_prompt)
        c["n_turns"].append(view.n_turns)
        c["n_messages"].append(view.n_messages)
        c["max_tokens"].append(view.max_tokens)
        c["logprobs"].append(view.logprobs)
        c["has_tools"].append(view.has_tools)
        c["temperature"].append(view.temperature)
        c["end_user"].append(view.end_user)
        c["request"].append(_DUMPS(ev.request).decode())
        c["response"].append(_json_or_none(ev.response))
        c["identity"].append(_json_or_none(ev.identity))
        c["usage"].append(_json_or_none(ev.usage))
        c["extra"].append(_DUMPS(ev.extra).decode() if ev.extra else None)

    def take(self) -> pa.Table:
        """Return the accumulated rows as a table and start empty again."""
        cols = self._cols
        self._cols = {name: [] for name in EVENT_SCHEMA.names}
        arrays = []
        for f in EVENT_SCHEMA:
            values = cols[f.name]
            if f.name == "ts":
                micros = np.round(np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64)
                arrays.append(pa.array(micros, type=pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(values, type=f.type))
        return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def batches_to_tables(events: Iterable[Event], batch_size: int = 10_000) -> Iterator[pa.Table]:
    """Group a stream of events into Arrow tables of at most ``batch_size`` rows."""
    builder = ColumnBuilder()
    for ev in events:
        builder.add(ev)
        if len(builder) >= batch_size:
            yield builder.take()
    if len(builder):
        yield builder.take()


def events_from_table(table: pa.Table | pa.RecordBatch) -> Iterator[Event]:
    """Rebuild events from columnar rows (the inverse of :class:`ColumnBuilder`)."""
    cols = table.to_pydict()
    ts_col = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    loads = orjson.loads
    for i in range(table.num_rows):
        response = cols["response"][i]
        extra = cols["extra"][i]
        status = cols["status"][i]
        yield Event(
            ts=float(ts_col[i]), account=cols["account"][i], request=loads(cols["request"][i]),
            response=None if response is None else loads(response), id=cols["id"][i],
            key=cols["key"][i], endpoint=cols["endpoint"][i], model=cols["model"][i],
            ip=cols["ip"][i], user_agent=cols["user_agent"][i],
            identity=None if cols["identity"][i] is None else loads(cols["identity"][i]),
            usage=None if cols["usage"][i] is None else loads(cols["usage"][i]),
            status=None if status is None else int(status),
            extra={} if extra is None else loads(extra),
        )
