"""Resolve what a command was given (JSON Lines logs, Parquet files, or a DuckDB store) into tables."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from distillguard.errors import BadInputError
from distillguard.events.columns import batches_to_tables
from distillguard.events.jsonl import Quarantine, ReadStats, iter_jsonl
from distillguard.events.parquet import PARQUET_MAGIC, iter_parquet_tables
from distillguard.store.duckdb_store import EventStore, is_duckdb_file


class SourceKind(enum.Enum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    DUCKDB = "duckdb"


def source_kind(path: str | Path) -> SourceKind:
    """Decide by content, not by name: DuckDB and Parquet have magic bytes, the rest is JSON Lines."""
    p = Path(path)
    if not p.exists():
        raise BadInputError("no such file", source=str(path))
    if p.is_dir():
        raise BadInputError("is a directory; pass the files inside it", source=str(path))
    if is_duckdb_file(p):
        return SourceKind.DUCKDB
    with open(p, "rb") as fh:
        if fh.read(4) == PARQUET_MAGIC:
            return SourceKind.PARQUET
    return SourceKind.JSONL


def iter_event_tables(paths: Sequence[str | Path], *, quarantine: Quarantine | None = None,
                      stats: ReadStats | None = None, batch_size: int = 10_000) -> Iterator[pa.Table]:
    """Stream every source as Arrow tables of the event schema, in the order given."""
    kinds = [source_kind(p) for p in paths]  # fail on a bad path before reading anything
    for path, kind in zip(paths, kinds):
        if kind is SourceKind.DUCKDB:
            with EventStore(path, read_only=True) as store:
                yield from store.iter_tables(batch_size)
        elif kind is SourceKind.PARQUET:
            yield from iter_parquet_tables(path, batch_size)
        else:
            yield from batches_to_tables(iter_jsonl(path, quarantine=quarantine, stats=stats), batch_size)
