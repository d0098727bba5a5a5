"""DuckDB file holding the ``events`` table: idempotent ingest and day-partitioned Parquet export."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import duckdb
import pyarrow as pa

from distillguard.errors import BadInputError
from distillguard.events.columns import EVENT_SCHEMA

_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.timestamp("us"): "TIMESTAMP", pa.int32(): "INTEGER",
    pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
}


def _ddl() -> str:
    cols = []
    for f in EVENT_SCHEMA:
        decl = f"{f.name} {_DUCK_TYPES[f.type]}"
        if f.name == "id":
            decl += " PRIMARY KEY"
        elif f.name in ("ts", "account", "request"):
            decl += " NOT NULL"
        cols.append(decl)
    return "CREATE TABLE IF NOT EXISTS events (" + ", ".join(cols) + ")"


@dataclass
class IngestResult:
    read: int = 0        # rows offered
    inserted: int = 0    # rows new to the store
    duplicates: int = 0  # rows whose id was already stored (or repeated in the input)


def is_duckdb_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[8:12] == b"DUCK"


class EventStore:
    """An events table in a DuckDB file (``:memory:`` works too)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = str(path)
        if read_only and not Path(self.path).exists():
            raise BadInputError("no such DuckDB file", source=self.path)
        if self.path != ":memory:" and Path(self.path).exists() and not is_duckdb_file(self.path):
            raise BadInputError("not a DuckDB database file", source=self.path)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as exc:
            raise BadInputError(f"cannot open DuckDB file ({exc})", source=self.path) from None
        self.run("SET TimeZone = 'UTC'")
        self.run("SET enable_progress_bar = false")
        if not read_only:
            self.run(_ddl())
        elif not self._has_events_table():
            raise BadInputError("DuckDB file has no 'events' table", source=self.path)

    def run(self, sql: str, params: list | None = None) -> list[tuple]:
        """Execute and fetch everything (DuckDB refuses new work while a result is unread)."""
        return self.con.execute(sql, params).fetchall()

    def _has_events_table(self) -> bool:
        row = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'").fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        row = self.con.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def insert_table(self, table: pa.Table) -> int:
        """Insert rows whose id is new; returns how many were inserted."""
        self.con.register("_incoming", table)
        try:
            return self.insert_select("SELECT * FROM _incoming")
        finally:
            self.con.unregister("_incoming")

    def insert_select(self, select_sql: str) -> int:
        """Insert the rows of a SELECT (columns in schema order) whose id is new; returns the count."""
        # DISTINCT ON drops ids repeated inside this input; OR IGNORE those already stored.
        rows = self.run(f"INSERT OR IGNORE INTO events SELECT DISTINCT ON (id) * FROM ({select_sql})")
        return int(rows[0][0]) if rows else 0

    def ingest(self, tables: Iterable[pa.Table]) -> IngestResult:
        """Insert a stream of tables; parsing (the caller's iterator) overlaps with DuckDB's work.

        DuckDB releases the GIL while it executes, so inserting batch k on a worker thread runs
        in parallel with Python parsing batch k+1. The queue is bounded, so memory stays bounded.
        """
        result = IngestResult()
        pending: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def worker() -> None:
            while True:
                table = pending.get()
                if table is None:
                    return
                if failure:
                    continue
                try:
                    inserted = self.insert_table(table)
                except BaseException as exc:  # re-raised on the caller's thread below
                    failure.append(exc)
                    continue
                result.inserted += inserted
                result.duplicates += table.num_rows - inserted

        thread = threading.Thread(target=worker, name="duckdb-ingest", daemon=True)
        thread.start()
        try:
            for table in tables:
                if failure:
                    break
                result.read += table.num_rows
                pending.put(table)
        finally:
            pending.put(None)
            thread.join()
        if failure:
            raise failure[0]
        return result

    def iter_tables(self, batch_size: int = 50_000, where: str | None = None) -> Iterator[pa.Table]:
        """Stream the stored events in time order as Arrow tables."""
        sql = "SELECT * FROM events" + (f" WHERE {where}" if where else "") + " ORDER BY ts, id"
        reader = self.con.execute(sql).fetch_record_batch(batch_size)
        for batch in reader:
            yield pa.Table.from_batches([batch]).cast(EVENT_SCHEMA)

    def export_parquet(self, out_dir: str | Path) -> list[Path]:
        """Write the events as Parquet partitioned by UTC day: ``out_dir/day=YYYY-MM-DD/*.parquet``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = str(out).replace("'", "''")
        self.run(
            "COPY (SELECT *, strftime(ts, '%Y-%m-%d') AS day FROM events ORDER BY ts) "
            f"TO '{target}' (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE, COMPRESSION zstd)")
        return sorted(out.rglob("*.parquet"))

    def summary(self) -> dict[str, object]:
        row = self.con.execute(
            "SELECT count(*), count(DISTINCT account), min(ts), max(ts), "
            "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) FROM events").fetchone()
        assert row is not None
        return {"events": int(row[0]), "accounts": int(row[1]),
                "first": None if row[2] is None else row[2].isoformat() + "Z",
                "last": None if row[3] is None else row[3].isoformat() + "Z",
                "prompt_tokens": int(row[4]), "completion_tokens": int(row[5])}
