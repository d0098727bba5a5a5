"""The embedded event store (DuckDB) and source resolution (log files or a store)."""

from distillguard.store.duckdb_store import EventStore, IngestResult
from distillguard.store.sources import SourceKind, iter_event_tables, source_kind

__all__ = ["EventStore", "IngestResult", "SourceKind", "iter_event_tables", "source_kind"]
