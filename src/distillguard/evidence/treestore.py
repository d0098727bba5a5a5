"""The store's side of the log: leaf hashes in order, stored tree levels, signed checkpoints.

Tables in the store's DuckDB file (created on first use):

* ``evidence_leaves(log_id, idx, event_id, account, hash)``: every tree's leaves in append order;
* ``evidence_levels(log_id, level, hashes)``: the tree's full-subtree levels above the leaves,
  packed (32 bytes per node), so proofs are lookups (:class:`~distillguard.evidence.merkle.Levels`);
* ``evidence_checkpoints(log_id, size, note)``: signed (and cosigned) checkpoints, newest cosigned
  version kept.

A tree is identified by its log id, which is also the checkpoint's origin line. ``build`` appends the
stored events that no tree holds yet, in (ts, id) order, to one tree (an ingest source's); ``import_log``
appends a gateway's own leaves in the order that gateway logged them, after checking each against the
stored row it commits to.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from distillguard.errors import BadInputError
from distillguard.evidence.leaf import FIELDS, leaf_hash_of, packed_leaf_hashes, values_from_table
from distillguard.evidence.logid import check_log_id
from distillguard.evidence.merkle import HASH_SIZE, Levels
from distillguard.evidence.note import Checkpoint, NoteError, SignedNote, open_checkpoint, sign_checkpoint
from distillguard.store import EventStore

_DDL = (
    "CREATE TABLE IF NOT EXISTS evidence_leaves (log_id VARCHAR NOT NULL, idx BIGINT NOT NULL, "
    "event_id VARCHAR NOT NULL, account VARCHAR NOT NULL, hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS evidence_levels (log_id VARCHAR NOT NULL, level INTEGER NOT NULL, hashes BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS evidence_checkpoints (log_id VARCHAR NOT NULL, size BIGINT NOT NULL, "
    "note VARCHAR NOT NULL, added TIMESTAMP)",
)


def _has_tables(store: EventStore) -> bool:
    return bool(store.run("SELECT count(*) FROM information_schema.tables WHERE table_name = 'evidence_leaves'")[0][0])


def ensure_tables(store: EventStore) -> None:
    for ddl in _DDL:
        store.run(ddl)


@dataclass
class BuildReport:
    log_id: str
    appended: int
    size: int
    seconds: float


def logs(store: EventStore) -> dict[str, int]:
    """Every tree in the store and its size."""
    if not _has_tables(store):
        return {}
    return {r[0]: int(r[1]) for r in store.run(
        "SELECT log_id, count(*) FROM evidence_leaves GROUP BY log_id ORDER BY log_id")}


def load_levels(store: EventStore, log_id: str) -> Levels:
    if not _has_tables(store):
        return Levels()
    leaves = store.con.sql("SELECT hash FROM evidence_leaves WHERE log_id = ? ORDER BY idx",
                           params=[log_id]).to_arrow_table().column(0)
    level0 = b"".join(leaves.to_pylist())
    rows = store.run("SELECT level, hashes FROM evidence_levels WHERE log_id = ? ORDER BY level", [log_id])
    upper = [bytes(h) for _, h in rows]
    levels = Levels.from_levels([level0, *upper])
    n = levels.size
    # stored levels must match the leaves (a crash between the two writes, or an older build): else rebuild
    if any(len(lv) != (n >> k) * HASH_SIZE for k, lv in enumerate(levels.levels)) or (n > 1 and len(levels.levels) < n.bit_length()):
        levels = Levels(level0)
    return levels


def _save_levels(store: EventStore, log_id: str, levels: Levels) -> None:
    store.run("DELETE FROM evidence_levels WHERE log_id = ?", [log_id])
    for k, lv in enumerate(levels.levels[1:], 1):
        store.run("INSERT INTO evidence_levels VALUES (?, ?, ?)", [log_id, k, bytes(lv)])


def last_per_account(store: EventStore, log_id: str) -> dict[str, int]:
    """Each account's last leaf index in tree ``log_id`` (the next leaf's ``prev``)."""
    if not _has_tables(store):
        return {}
    return {a: int(i) for a, i in store.run(
        "SELECT account, max(idx) FROM evidence_leaves WHERE log_id = ? GROUP BY account", [log_id])}


def chain(accounts: list[str], start: int, last: dict[str, int]) -> list[int | None]:
    """``prev`` pointers for leaves ``start, start+1, ...`` of these accounts (updates ``last``)."""
    prevs: list[int | None] = []
    for i, account in enumerate(accounts, start):
        prevs.append(last.get(account))
        last[account] = i
    return prevs


def append_leaves(store: EventStore, log_id: str, event_ids: list[str] | pa.Array, accounts: list[str] | pa.Array,
                  hashes: list[bytes] | bytes, levels: Levels | None = None) -> Levels:
    """Append leaves to a tree (one transaction: leaves and levels together); ``hashes`` as a list or
    packed (32 bytes each)."""
    ensure_tables(store)
    levels = levels if levels is not None else load_levels(store, log_id)
    start = levels.size
    packed = hashes if isinstance(hashes, (bytes, bytearray)) else b"".join(hashes)
    n = len(packed) // HASH_SIZE
    table = pa.table({"log_id": pa.array([log_id] * n, pa.string()),
                      "idx": pa.array(np.arange(start, start + n, dtype=np.int64)),
                      "event_id": pa.array(event_ids, pa.string()) if isinstance(event_ids, list) else event_ids,
                      "account": pa.array(accounts, pa.string()) if isinstance(accounts, list) else accounts,
                      "hash": pa.Array.from_buffers(pa.binary(HASH_SIZE), n, [None, pa.py_buffer(packed)]).cast(pa.binary())})
    store.run("BEGIN TRANSACTION")
    try:
        store.con.register("_new_leaves", table)
        store.run("INSERT INTO evidence_leaves SELECT * FROM _new_leaves")
        store.con.unregister("_new_leaves")
        levels.extend(packed)
        _save_levels(store, log_id, levels)
        store.run("COMMIT")
    except BaseException:
        store.run("ROLLBACK")
        raise
    return levels


def _prefetched(reader, depth: int = 2) -> Iterator[pa.RecordBatch]:
    """The reader's batches, read one ahead by a thread: DuckDB decompresses and converts the next
    batch (without the GIL) while this thread hashes the current one."""
    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in reader:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:      # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=pump, name="distillguard-evidence-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def build(store: EventStore, salt_key: bytes, log_id: str, *, batch_size: int = 20_000,
          progress: Callable[[int], None] | None = None) -> BuildReport:
    """Append every stored event that no tree holds yet to tree ``log_id``, in (ts, id) order.

    The order (and each account's chain) comes from a narrow sorted query of row ids, ids and
    accounts; the wide rows are then read in storage order, unsorted (one snapshot: the same
    transaction), hashed column-wise (:func:`~distillguard.evidence.leaf.packed_leaf_hashes`) while
    the next batch is read, and each leaf put in its place by its row id.
    """
    check_log_id(log_id)
    ensure_tables(store)
    t0 = time.perf_counter()
    levels = load_levels(store, log_id)
    last = last_per_account(store, log_id)
    where = " WHERE id NOT IN (SELECT event_id FROM evidence_leaves)" if store.run(
        "SELECT count(*) FROM evidence_leaves")[0][0] else ""
    store.run("BEGIN TRANSACTION")       # one snapshot for both reads
    try:
        order = store.con.sql(f"SELECT rowid AS rid, id, account FROM events{where} ORDER BY ts, id").to_arrow_table()
        n = order.num_rows
        prevs = np.array([-1 if p is None else p for p in chain(order.column("account").to_pylist(), levels.size, last)],
                         dtype=np.int64)
        packed = np.zeros((n, HASH_SIZE), dtype=np.uint8)
        if n:
            rowids = order.column("rid").to_numpy()
            rank = np.full(int(rowids.max()) + 1, -1, dtype=np.int64)
            rank[rowids] = np.arange(n, dtype=np.int64)
            reader = store.con.sql(f"SELECT rowid AS rid, {', '.join(FIELDS)} FROM events{where}").to_arrow_reader(batch_size)
            done = 0
            for batch in _prefetched(reader):
                table = pa.Table.from_batches([batch])
                at = rank[table.column("rid").to_numpy()]
                packed[at] = np.frombuffer(packed_leaf_hashes(table, salt_key, prevs[at]), dtype=np.uint8).reshape(-1, HASH_SIZE)
                done += table.num_rows
                if progress is not None:
                    progress(done)
            if done != n:
                raise RuntimeError(f"read {done} rows of the {n} to append")
    finally:
        store.run("COMMIT")
    if n:
        levels = append_leaves(store, log_id, order.column("id").combine_chunks(), order.column("account").combine_chunks(),
                               packed.tobytes(), levels)
    return BuildReport(log_id, n, levels.size, time.perf_counter() - t0)


def leaf_positions(store: EventStore, event_ids: Iterable[str]) -> dict[str, tuple[str, int, int | None]]:
    """Where each event sits: event id -> (log id, leaf index, its account's previous leaf index)."""
    ids = list(dict.fromkeys(event_ids))
    if not ids or not _has_tables(store):
        return {}
    store.con.register("_want", pa.table({"event_id": pa.array(ids, pa.string())}))
    try:
        rows = store.run(
            "SELECT event_id, log_id, idx, prev FROM (SELECT l.event_id, l.log_id, l.idx, lag(l.idx) OVER "
            "(PARTITION BY l.log_id, l.account ORDER BY l.idx) AS prev FROM evidence_leaves l "
            "WHERE l.account IN (SELECT DISTINCT account FROM evidence_leaves JOIN _want USING (event_id))) "
            "JOIN _want USING (event_id)")
    finally:
        store.con.unregister("_want")
    return {r[0]: (r[1], int(r[2]), None if r[3] is None else int(r[3])) for r in rows}


# -- checkpoints --------------------------------------------------------------------------------
def add_checkpoint(store: EventStore, note: str) -> Checkpoint:
    """Keep a signed checkpoint; a copy of one already kept (more cosignatures) is merged into it.

    Two different checkpoints of one log at one size are a fork: refused, never replaced.
    """
    ensure_tables(store)
    new = SignedNote.parse(note)
    cp = Checkpoint.parse(new.text)
    old = store.run("SELECT note FROM evidence_checkpoints WHERE log_id = ? AND size = ?", [cp.origin, cp.size])
    if not old:
        store.run("INSERT INTO evidence_checkpoints VALUES (?, ?, ?, now())", [cp.origin, cp.size, note])
        return cp
    kept = SignedNote.parse(old[0][0])
    if kept.text != new.text:
        raise BadInputError(f"conflicting checkpoints of {cp.origin} at size {cp.size} (a fork): the one kept has "
                            "another root")
    merged = kept.signatures + [sig for sig in new.signatures if sig not in kept.signatures]
    if len(merged) != len(kept.signatures):
        kept.signatures = merged
        store.run("UPDATE evidence_checkpoints SET note = ? WHERE log_id = ? AND size = ?",
                  [kept.render(), cp.origin, cp.size])
    return cp


def merge_cosignatures(store: EventStore, cp: Checkpoint, signed: SignedNote, witnesses: dict) -> int:
    """Add the valid cosignatures of ``witnesses`` (name -> key) in ``signed`` to our kept checkpoint
    with the same text; returns how many were new."""
    ensure_tables(store)
    rows = store.run("SELECT note FROM evidence_checkpoints WHERE log_id = ? AND size = ?", [cp.origin, cp.size])
    if not rows:
        return 0
    ours = SignedNote.parse(rows[0][0])
    if ours.text != signed.text:
        return 0
    have = {n for n, _ in ours.signatures}
    new = [(n, p) for n, p in signed.signatures if n in witnesses and n not in have
           and signed.cosignature(n, witnesses[n]) is not None]
    if new:
        ours.signatures.extend(new)
        store.run("UPDATE evidence_checkpoints SET note = ? WHERE log_id = ? AND size = ?",
                  [ours.render(), cp.origin, cp.size])
    return len(new)


def sign_current(store: EventStore, log_id: str, private, levels: Levels | None = None) -> str:
    """Sign a checkpoint of tree ``log_id`` at its current size and keep it."""
    levels = levels if levels is not None else load_levels(store, log_id)
    note = sign_checkpoint(Checkpoint(log_id, levels.size, levels.root()), private)
    add_checkpoint(store, note)
    return note


def checkpoints(store: EventStore, log_id: str) -> list[tuple[int, str]]:
    if not _has_tables(store):
        return []
    return [(int(s), n) for s, n in store.run(
        "SELECT size, note FROM evidence_checkpoints WHERE log_id = ? ORDER BY size", [log_id])]


def best_checkpoint(store: EventStore, log_id: str, min_size: int, public, witnesses: dict | None = None) -> str | None:
    """The checkpoint covering at least ``min_size`` leaves with the most valid cosignatures (then the
    smallest), checked against the log's key; None if there is none."""
    best: tuple[int, int, str] | None = None
    for size, note in checkpoints(store, log_id):
        if size < min_size:
            continue
        try:
            _, signed = open_checkpoint(note, public, origin=log_id)
        except NoteError:
            continue
        cos = sum(1 for name, key in (witnesses or {}).items() if signed.cosignature(name, key) is not None)
        rank = (-cos, size, note)
        if best is None or rank < best:
            best = rank
    return None if best is None else best[2]


def import_gateway_dir(store: EventStore, log_dir: str | Path, salt_key: bytes) -> tuple[str, int, int]:
    """Append a gateway's own leaves (``LOGDIR/evidence``) to its tree in the store, in its order.

    Each leaf is checked against the stored row it commits to (recomputed from the store); the
    import stops at the first leaf whose row the store does not hold yet (not loaded so far) and
    fails on a leaf that does not match its row. Returns (log id, leaves appended, checkpoints kept).
    """
    from distillguard.evidence.gateway_tree import read_leaves, read_notes, read_origin

    log_dir = Path(log_dir)
    log_id = read_origin(log_dir)
    ensure_tables(store)
    levels = load_levels(store, log_id)
    entries = read_leaves(log_dir, start=levels.size)
    ids = [e[0] for e in entries]
    stored: dict[str, tuple[str, dict]] = {}
    if ids:
        store.con.register("_want", pa.table({"id": pa.array(ids, pa.string())}))
        try:
            table = store.con.sql("SELECT e.* FROM events e JOIN _want w USING (id)").to_arrow_table()
        finally:
            store.con.unregister("_want")
        stored = {v["id"].decode(): (a, v) for a, v in zip(table.column("account").to_pylist(), values_from_table(table))}
    last = last_per_account(store, log_id)
    new_ids, new_accounts, new_hashes = [], [], []
    for event_id, prev, leaf in entries:
        have = stored.get(event_id)
        if have is None:
            break
        account, values = have
        if prev != last.get(account):
            raise BadInputError(f"the gateway's leaf for {event_id} points to leaf {prev} as its account's previous "
                                f"one; the store's tree says {last.get(account)}", source=str(log_dir))
        if leaf_hash_of(values, salt_key, prev) != leaf:
            raise BadInputError(f"event {event_id} in the store does not match the leaf the gateway logged for it "
                                f"(leaf {levels.size + len(new_hashes)} of {log_id}): the stored row was changed",
                                source=str(log_dir))
        last[account] = levels.size + len(new_hashes)
        new_ids.append(event_id)
        new_accounts.append(account)
        new_hashes.append(leaf)
    if new_hashes:
        levels = append_leaves(store, log_id, new_ids, new_accounts, new_hashes, levels)
    kept = 0
    for note in read_notes(log_dir):
        cp = Checkpoint.parse(SignedNote.parse(note).text)
        if cp.origin != log_id:
            continue
        if cp.size <= levels.size and levels.root(cp.size) != cp.root:
            raise BadInputError(f"the gateway's checkpoint at size {cp.size} does not match the leaves it logged",
                                source=str(log_dir))
        add_checkpoint(store, note)
        kept += 1
    return log_id, len(new_hashes), kept
