"""DuckDB file holding the ``events`` table: idempotent ingest and day-partitioned Parquet export."""

from __future__ import annotations

import gc
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.errors import BadInputError
from distillguard.events.columns import EVENT_SCHEMA

_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.timestamp("us"): "TIMESTAMP", pa.int32(): "INTEGER",
    pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.float64(): "DOUBLE",
}


# Long JSON/text columns: DuckDB's default string compression barely shrinks them (the file
# came out 1.5x the raw JSON); zstd makes it ~4x smaller for ~10% more ingest time.
_ZSTD_COLUMNS = frozenset({"request", "response"})


def _ddl() -> str:
    cols = []
    for f in EVENT_SCHEMA:
        decl = f"{f.name} {_DUCK_TYPES[f.type]}"
        if f.name in _ZSTD_COLUMNS:
            decl += " USING COMPRESSION zstd"
        if f.name in ("id", "ts", "account", "request"):
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

    def __init__(self, path: str | Path, *, read_only: bool = False, memory_limit: str = "1GB") -> None:
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
        self.run(f"SET memory_limit = '{memory_limit}'")
        if not read_only:
            self.run(_ddl())
            self._add_missing_columns()
        elif not self._has_events_table():
            raise BadInputError("DuckDB file has no 'events' table", source=self.path)

    def run(self, sql: str, params: list | None = None) -> list[tuple]:
        """Execute and fetch everything (DuckDB refuses new work while a result is unread)."""
        return self.con.execute(sql, params).fetchall()

    def columns(self) -> list[str]:
        return [r[0] for r in self.run(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position")]

    def _add_missing_columns(self) -> None:
        """Stores written by an older version gain the columns added since (as NULL)."""
        present = set(self.columns())
        for f in EVENT_SCHEMA:
            if f.name not in present:
                self.run(f"ALTER TABLE events ADD COLUMN {f.name} {_DUCK_TYPES[f.type]}")

    def _has_events_table(self) -> bool:
        rows = self.run("SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'")
        return bool(rows and rows[0][0])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        return int(self.run("SELECT count(*) FROM events")[0][0])

    def insert_table(self, table: pa.Table) -> list[str]:
        """Insert rows whose id is new; returns the ids inserted.

        The anti-join skips ids already stored (it costs half of what a PRIMARY KEY index costs on
        every insert). ``DISTINCT ON`` drops ids repeated inside the batch, but it hashes whole
        rows, so it runs only when the batch really repeats an id.
        """
        unique = pc.count_distinct(table.column("id")).as_py() == table.num_rows
        source = "_incoming" if unique else "(SELECT DISTINCT ON (id) * FROM _incoming)"
        self.con.register("_incoming", table)
        try:
            rows = self.run(f"INSERT INTO events SELECT * FROM {source} AS incoming "
                            f"WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = incoming.id) RETURNING id")
        finally:
            self.con.unregister("_incoming")
        return [r[0] for r in rows]

    def delete_ids(self, ids: list[str]) -> None:
        """Remove events by id (used to undo a failed ingest)."""
        for start in range(0, len(ids), 50_000):
            self.con.register("_undo", pa.table({"id": pa.array(ids[start:start + 50_000], pa.string())}))
            try:
                self.run("DELETE FROM events WHERE id IN (SELECT id FROM _undo)")
            finally:
                self.con.unregister("_undo")

    def ingest(self, tables: Iterable[pa.Table], *, atomic: bool = True) -> IngestResult:
        """Insert a stream of tables; parsing (the caller's iterator) overlaps with DuckDB's work.

        DuckDB releases the GIL while it executes, so inserting batch k on a worker thread runs
        in parallel with Python parsing batch k+1. The queue is bounded, so memory stays bounded.
        With ``atomic``, a failure (a bad line in strict mode) removes the rows this call added.
        That is done by id rather than with one long transaction, whose uncommitted rows DuckDB
        would hold in memory (4 GB for 700k events).
        """
        result = IngestResult()
        added: list[str] = []
        # DuckDB checkpoints (and zstd-compresses) whenever its WAL passes 16 MB, every few
        # thousand of our ~4 KB rows; one checkpoint per ingest is a third cheaper overall.
        if self.path != ":memory:":
            self.run("SET checkpoint_threshold = '1GB'")
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
                    ids = self.insert_table(table)
                except BaseException as exc:  # re-raised on the caller's thread below
                    failure.append(exc)
                    continue
                if atomic:
                    added.extend(ids)
                result.inserted += len(ids)
                result.duplicates += table.num_rows - len(ids)

        thread = threading.Thread(target=worker, name="duckdb-ingest", daemon=True)
        thread.start()
        # Parsing allocates millions of short-lived dicts; the cyclic GC would rescan them for
        # nothing (they hold no cycles), costing ~15% of ingest time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        interrupted: BaseException | None = None
        try:
            for table in tables:
                if failure:
                    break
                result.read += table.num_rows
                pending.put(table)
        except BaseException as exc:  # a bad line in strict mode, or Ctrl-C
            interrupted = exc
        finally:
            pending.put(None)
            thread.join()
            if gc_was_enabled:
                gc.enable()
        error = interrupted or (failure[0] if failure else None)
        if error is not None:
            if atomic:
                self.delete_ids(added)
            raise error
        if self.path != ":memory:":
            self.run("CHECKPOINT")
        return result

    def iter_tables(self, batch_size: int = 10_000, where: str | None = None) -> Iterator[pa.Table]:
        """Stream the stored events in time order as Arrow tables."""
        sql = "SELECT * FROM events" + (f" WHERE {where}" if where else "") + " ORDER BY ts, id"
        cursor = self.con.cursor()  # its own cursor, so the store stays usable while this streams
        try:
            for batch in cursor.sql(sql).to_arrow_reader(batch_size):
                yield pa.Table.from_batches([batch]).cast(EVENT_SCHEMA)
        finally:
            cursor.close()

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
        row = self.run(
            "SELECT count(*), count(DISTINCT account), min(ts), max(ts), "
            "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) FROM events")[0]
        return {"events": int(row[0]), "accounts": int(row[1]),
                "first": None if row[2] is None else row[2].isoformat() + "Z",
                "last": None if row[3] is None else row[3].isoformat() + "Z",
                "prompt_tokens": int(row[4]), "completion_tokens": int(row[5])}
