"""Load event sources (JSON Lines, Parquet, another store) into the DuckDB store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from distillguard.events.jsonl import Quarantine, ReadStats
from distillguard.store.duckdb_store import EventStore
from distillguard.store.sources import iter_event_tables, source_kind


@dataclass
class FileReport:
    path: str
    kind: str
    read: int = 0
    inserted: int = 0
    bad: int = 0

    @property
    def duplicates(self) -> int:
        return self.read - self.inserted


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def bad(self) -> int:
        return sum(f.bad for f in self.files)


def ingest_paths(store: EventStore, paths: Sequence[str | Path], *, quarantine: Quarantine | None = None,
                 on_file: Callable[[FileReport], None] | None = None) -> IngestReport:
    """Ingest each source, one atomic statement per file: a strict failure stores nothing of that file."""
    kinds = [source_kind(p) for p in paths]  # every path checked before anything is written
    report = IngestReport()
    for path, kind in zip(paths, kinds):
        file_report = FileReport(path=str(path), kind=kind.value)
        stats = ReadStats()
        result = store.ingest(iter_event_tables([path], quarantine=quarantine, stats=stats))
        file_report.read, file_report.inserted, file_report.bad = result.read, result.inserted, stats.bad
        report.files.append(file_report)
        if on_file is not None:
            on_file(file_report)
    return report
