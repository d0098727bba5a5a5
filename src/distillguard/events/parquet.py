"""Parquet event files in the columnar schema of :mod:`distillguard.events.columns`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from distillguard.errors import BadInputError
from distillguard.events.columns import EVENT_SCHEMA, batches_to_tables, events_from_table
from distillguard.events.schema import Event

PARQUET_MAGIC = b"PAR1"


def write_parquet(events: Iterable[Event], path: str | Path, *, batch_size: int = 50_000) -> int:
    """Write events to one Parquet file, streaming in row groups; returns the count written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with pq.ParquetWriter(path, EVENT_SCHEMA, compression="zstd") as writer:
        for table in batches_to_tables(events, batch_size):
            writer.write_table(table)
            n += table.num_rows
    return n


def iter_parquet_tables(path: str | Path, batch_size: int = 50_000) -> Iterator[pa.Table]:
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
    for batch in dataset.iter_batches(batch_size=batch_size):
        table = pa.Table.from_batches([batch])
        yield _conform(table)


def _conform(table: pa.Table) -> pa.Table:
    """Add absent optional columns as nulls and cast to the canonical schema."""
    arrays = []
    for f in EVENT_SCHEMA:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def iter_parquet(path: str | Path) -> Iterator[Event]:
    for table in iter_parquet_tables(path):
        yield from events_from_table(table)
