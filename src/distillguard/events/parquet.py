"""Parquet event files in the columnar schema of :mod:`distillguard.events.columns`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from distillguard.errors import BadInputError, FieldError
from distillguard.events.columns import EVENT_SCHEMA, ColumnBuilder, batches_to_tables, events_from_table
from distillguard.events.schema import KNOWN_FIELDS, Event, end_user_of, event_from_obj

PARQUET_MAGIC = b"PAR1"
_JSON_TEXT = frozenset({"request", "response", "identity", "usage", "extra"})
_DERIVED = frozenset(EVENT_SCHEMA.names) - KNOWN_FIELDS - {"extra"}


def write_parquet(events: Iterable[Event], path: str | Path, *, batch_size: int = 10_000) -> int:
    """Write events to one Parquet file, streaming in row groups; returns the count written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with pq.ParquetWriter(path, EVENT_SCHEMA, compression="zstd") as writer:
        for table in batches_to_tables(events, batch_size):
            writer.write_table(table)
            n += table.num_rows
    return n


def iter_parquet_tables(path: str | Path, batch_size: int = 10_000) -> Iterator[pa.Table]:
    """Stream a Parquet event file (or a directory of them) as Arrow tables of ``EVENT_SCHEMA``."""
    try:
        dataset = pq.ParquetFile(path) if Path(path).is_file() else None
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInputError(f"not a readable Parquet file ({exc})", source=str(path)) from None
    if dataset is None:
        raise BadInputError("no such Parquet file", source=str(path))
    missing = [name for name in ("id", "ts", "account", "request") if name not in dataset.schema_arrow.names]
    if missing:
        raise BadInputError(f"Parquet file lacks event column(s) {', '.join(missing)}", source=str(path))
    first_row = 0
    for batch in dataset.iter_batches(batch_size=batch_size):
        table = pa.Table.from_batches([batch])
        yield _conform(table, str(path), first_row)
        first_row += table.num_rows


def _conform(table: pa.Table, source: str, first_row: int) -> pa.Table:
    """Return the table in the canonical schema.

    Files we wrote already have every column. A file from another tool (say, only ``ts``,
    ``account``, ``request``) is rebuilt row by row through the record's own validation, so its
    defaults (``endpoint``) and derived columns (``prompt_text``, ``n_turns``...) are filled in,
    and a bad row is reported like a bad JSON line.
    """
    if set(EVENT_SCHEMA.names) <= set(table.column_names):
        return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    if set(EVENT_SCHEMA.names) - set(table.column_names) == {"end_user"}:
        # Written by a version before the end-user column: derive it from the request bodies.
        end_users = [_end_user_of_json(text) for text in table.column("request").to_pylist()]
        table = table.append_column("end_user", pa.array(end_users, type=pa.string()))
        return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    builder = ColumnBuilder()
    known = set(KNOWN_FIELDS)
    for i, row in enumerate(table.to_pylist()):
        obj: dict[str, Any] = {}
        for name, value in row.items():
            if value is None or name in _DERIVED:
                continue
            if name == "ts" and isinstance(value, datetime):
                value = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
            elif name in _JSON_TEXT and isinstance(value, str):
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError:
                    if name != "response":  # a plain-text response is allowed
                        raise BadInputError("column holds text that is not JSON", source=source,
                                            line=first_row + i + 1, field=name) from None
            if name == "extra" and isinstance(value, dict):
                obj.update({k: v for k, v in value.items() if k not in known})
            else:
                obj[name] = value
        try:
            builder.add(event_from_obj(obj))
        except FieldError as exc:
            raise BadInputError(exc.message, source=source, line=first_row + i + 1, field=exc.field) from None
    return builder.take()


def _end_user_of_json(text: str | None) -> str | None:
    try:
        request = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None
    return end_user_of(request) if isinstance(request, dict) else None


def iter_parquet(path: str | Path) -> Iterator[Event]:
    for table in iter_parquet_tables(path):
        yield from events_from_table(table)
