"""The gateway's tree: each logged exchange becomes a leaf, checkpoints are signed periodically.

Files under ``LOGDIR/evidence/`` (beside the durable log's segments):

* ``origin``: the log id (checkpoint origin), written once;
* ``leaves.txt``: one line per leaf, ``<event id> <account's previous leaf index or -> <account tag>
  <hex leaf hash>``, in the order the gateway logged the events (appended and fsynced before each
  checkpoint that covers them; the tag, a keyed hash of the account, lets a restart resume the
  account chains without writing account ids beside the log);
* ``checkpoints/<size>.note``: every signed checkpoint (C2SP signed notes).

The request path computes what a leaf needs apart from its place (the salted field commitments,
~20 µs: :meth:`GatewayTree.prepare`); the log's writer thread, once the record is written and
fsynced, places it (account-chain pointer, leaf hash, O(log n) frontier: a few µs,
:meth:`GatewayTree.add_logged`), so the leaves are exactly the logged records in log order: a record
the log failed to write (full disk, the gateway answered 503) is no leaf.
Writing ``leaves.txt`` and signing happen in :meth:`GatewayTree.checkpoint`, which the gateway
calls from a timer thread and on shutdown. Leaves computed after the last checkpoint of a process
that then crashed are lost from the tree (their events are still in the log and the store; a later
``evidence build`` puts them in the store's own tree).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path
from typing import Any

from distillguard.errors import BadInputError
from distillguard.evidence.leaf import leaf_body, leaf_hash_from_body, salt_key_from_private, values_from_record
from distillguard.evidence.logid import check_log_id
from distillguard.evidence.merkle import Frontier
from distillguard.evidence.note import Checkpoint, sign_checkpoint


def _dir(log_dir: str | Path) -> Path:
    return Path(log_dir) / "evidence"


def read_origin(log_dir: str | Path) -> str:
    try:
        return (_dir(log_dir) / "origin").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BadInputError("no evidence tree in this log directory (no evidence/origin)", source=str(log_dir)) from None


def read_leaves(log_dir: str | Path, start: int = 0, *, tags: dict[str, int] | None = None) -> list[tuple[str, int | None, bytes]]:
    """(event id, prev, leaf) from ``start`` on; ``tags`` (if given) gets each account tag's last index."""
    path = _dir(log_dir) / "leaves.txt"
    out: list[tuple[str, int | None, bytes]] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for i, line in enumerate(data.split(b"\n")[:-1]):   # a torn last line (no newline) is ignored
        parts = line.split(b" ")
        if len(parts) != 4 or len(parts[3]) != 64 or not (parts[1] == b"-" or parts[1].isdigit()):
            raise BadInputError(f"malformed leaf line {i + 1}", source=str(path))
        if tags is not None:
            tags[parts[2].decode("ascii")] = i
        if i < start:
            continue
        prev = None if parts[1] == b"-" else int(parts[1])
        out.append((parts[0].decode("utf-8"), prev, bytes.fromhex(parts[3].decode("ascii"))))
    return out


def read_notes(log_dir: str | Path) -> list[str]:
    folder = _dir(log_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.note"))]


class GatewayTree:
    """Leaves of one gateway log, a frontier for its root, and the checkpoint signer."""

    def __init__(self, log_dir: str | Path, log_id: str, signing_key: Any, *, interval_s: float = 60.0) -> None:
        self.dir = _dir(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        origin_file = self.dir / "origin"
        if origin_file.exists():
            existing = origin_file.read_text(encoding="utf-8").strip()
            if existing != log_id:
                raise BadInputError(f"this log directory's tree is {existing!r}, not {log_id!r}", source=str(log_dir))
        else:
            origin_file.write_text(check_log_id(log_id) + "\n", encoding="utf-8")
        self.log_id = log_id
        self.private = signing_key.private
        from cryptography.hazmat.primitives import serialization

        raw = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        self.salt_key = salt_key_from_private(raw)
        self.frontier = Frontier()
        self.last: dict[str, int] = {}        # account tag -> its last leaf index
        self.tags: dict[bytes, str] = {}      # account -> its tag
        for _, _, leaf in read_leaves(log_dir, tags=self.last):
            self.frontier.append(leaf)
        self.pending: list[bytes] = []     # lines not yet on disk
        self.lock = threading.Lock()
        self.interval_s = interval_s
        self.signed_size = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prepare(self, record: dict[str, Any]) -> tuple[bytes, str, bytes]:
        """What the leaf of a record needs apart from its place: (event id, account tag, leaf body).
        Taken on the request path when the record is serialised for the log (the salted field
        commitments, the costly part), so the log's writer thread only places it."""
        values = values_from_record(record)
        account = values["account"] or b""
        tag = self.tags.get(account)
        if tag is None:
            tag = self.tags[account] = hmac.digest(self.salt_key, b"dg-account-tag\x00" + account, "sha256")[:12].hex()
        return values["id"] or b"", tag, leaf_body(values, self.salt_key)

    def add_logged(self, batch: list[tuple[bytes, str, bytes]]) -> None:
        """Place records the log has just written (the log's ``on_commit``: the writer thread, in log
        order, only after the write and fsync succeeded, so no leaf ever stands for a record the log
        failed to store): each one's account-chain pointer, its leaf hash, the frontier."""
        with self.lock:
            for event_id, tag, body in batch:
                index = self.frontier.size
                prev = self.last.get(tag)
                self.last[tag] = index
                leaf = leaf_hash_from_body(prev, body)
                self.frontier.append(leaf)
                self.pending.append(b"%s %s %s %s\n" % (event_id, b"-" if prev is None else str(prev).encode(),
                                                         tag.encode(), leaf.hex().encode()))

    def add(self, record: dict[str, Any]) -> None:
        """Fold one logged record in (in log order; the gateway goes through :meth:`prepare` and
        :meth:`add_logged`)."""
        self.add_logged([self.prepare(record)])

    def checkpoint(self) -> str | None:
        """Write pending leaves, then sign a checkpoint of the tree so far (None if nothing new).

        The leaves reach ``leaves.txt`` (fsynced) before any checkpoint covering them is signed. A
        failed write (full disk) is cut back off the file and its lines kept for the next try, and
        nothing is signed: ``leaves.txt`` never holds a torn line or misses a leaf a note covers.
        """
        with self.lock:
            lines, self.pending = self.pending, []
            size, root = self.frontier.size, self.frontier.root()
        if lines:
            path = self.dir / "leaves.txt"
            with open(path, "ab") as fh:
                start = fh.tell()
                try:
                    fh.write(b"".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException:
                    try:
                        fh.truncate(start)
                    except OSError:
                        pass
                    with self.lock:
                        self.pending[:0] = lines
                    raise
        if size == self.signed_size:
            return None
        note = sign_checkpoint(Checkpoint(self.log_id, size, root), self.private)
        target = self.dir / "checkpoints" / f"{size:015d}.note"
        tmp = target.with_suffix(".tmp")
        try:
            tmp.write_text(note, encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.signed_size = size
        return note

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.checkpoint()
                except OSError:     # a full disk: try again next tick
                    time.sleep(0)

        self._thread = threading.Thread(target=run, name="distillguard-evidence-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.checkpoint()
