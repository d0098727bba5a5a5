"""The embedded event store (DuckDB) and source resolution (log files or a store).

Names are loaded on first use (PEP 562), so importing ``distillguard.store.commands`` to build
the CLI does not load DuckDB and pyarrow.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillguard.store.duckdb_store import EventStore, IngestResult
    from distillguard.store.sources import SourceKind, iter_event_tables, source_kind

__all__ = ["EventStore", "IngestResult", "SourceKind", "iter_event_tables", "source_kind"]
_HOME = {"EventStore": "duckdb_store", "IngestResult": "duckdb_store", "SourceKind": "sources",
         "iter_event_tables": "sources", "source_kind": "sources"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"distillguard.store.{_HOME[name]}"), name)
    raise AttributeError(f"module 'distillguard.store' has no attribute {name!r}")
