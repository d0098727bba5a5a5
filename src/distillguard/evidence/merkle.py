"""RFC 6962 / RFC 9162 Merkle tree: hashing, stored levels, inclusion and consistency proofs.

Hashing (RFC 9162 §2.1.1): ``leaf = SHA-256(0x00 || data)``, ``node = SHA-256(0x01 || left || right)``,
the empty tree's root is ``SHA-256("")``; a tree of ``n`` leaves splits at the largest power of two
below ``n`` (no duplicated odd nodes).

:class:`Levels` keeps every *full, aligned* subtree root (level ``k`` holds ``n >> k`` hashes of the
blocks ``[j·2^k, (j+1)·2^k)``), 64 bytes per leaf in all. Any subtree hash the proofs need is then
one lookup, or (on the tree's ragged right edge) a fold of at most ``log2 n`` lookups, so a proof
costs O(log² n) hash operations at worst and never rehashes the log.

:class:`Frontier` keeps only the right-edge peaks (O(log n) hashes): what an appender (the gateway)
needs to compute roots without holding the whole tree.

Verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step and take nothing from the prover but
the proof; the test suite checks them against the RFC 6962 reference vectors and a brute-force
recomputation.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that cannot be produced (index or sizes out of range)."""


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH by the RFC's recursive definition (reference implementation, used by tests)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


def _parents(level: bytes | bytearray | memoryview) -> bytes:
    """The next level up from a packed level (pairs of 32-byte hashes; an odd last one is dropped)."""
    mv = memoryview(level)
    sha = _sha256
    return b"".join([sha(b"\x01" + mv[i:i + 64]).digest() for i in range(0, len(mv) - 63, 64)])


class Levels:
    """All full aligned subtree roots of a tree of ``size`` leaves (packed 32-byte hashes per level)."""

    def __init__(self, leaves: bytes | bytearray = b"") -> None:
        if len(leaves) % HASH_SIZE:
            raise ValueError("packed leaf hashes must be a multiple of 32 bytes")
        self.levels: list[bytearray] = [bytearray(leaves)]
        self._memo: dict[tuple[int, int], bytes] = {}
        self._rebuild_from(0)

    @classmethod
    def from_levels(cls, levels: list[bytes]) -> "Levels":
        obj = cls.__new__(cls)
        obj.levels = [bytearray(b) for b in levels]
        obj._memo = {}
        return obj

    @property
    def size(self) -> int:
        return len(self.levels[0]) // HASH_SIZE

    def _rebuild_from(self, level: int) -> None:
        while len(self.levels[level]) >= 2 * HASH_SIZE:
            parents = _parents(self.levels[level])
            if len(self.levels) == level + 1:
                self.levels.append(bytearray())
            self.levels[level + 1][:] = parents
            level += 1
        del self.levels[level + 1:]

    def extend(self, leaf_hashes: bytes | Iterable[bytes]) -> None:
        """Append leaf hashes, hashing only the new nodes (pairs completed by the new leaves)."""
        data = leaf_hashes if isinstance(leaf_hashes, (bytes, bytearray)) else b"".join(leaf_hashes)
        if len(data) % HASH_SIZE:
            raise ValueError("packed leaf hashes must be a multiple of 32 bytes")
        self.levels[0] += data
        k = 0
        while len(self.levels[k]) >= 2 * HASH_SIZE:
            have = len(self.levels[k + 1]) if k + 1 < len(self.levels) else 0
            if k + 1 == len(self.levels):
                self.levels.append(bytearray())
            start = 2 * have  # bytes of level k already paired
            self.levels[k + 1] += _parents(memoryview(self.levels[k])[start:])
            k += 1

    def leaf(self, index: int) -> bytes:
        return bytes(self.levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def _node(self, level: int, index: int) -> bytes:
        off = index * HASH_SIZE
        return bytes(self.levels[level][off:off + HASH_SIZE])

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]): one lookup for a full aligned block; otherwise the fold of the range's
        aligned peaks (right to left), memoised: the log is append-only, so a range's hash never
        changes once all its leaves exist."""
        width = end - start
        if width <= 0:
            return EMPTY_ROOT
        if width & (width - 1) == 0 and start % width == 0:
            return self._node(width.bit_length() - 1, start // width)
        key = (start, end)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        top = width.bit_length() - 1
        if start % (1 << top):       # not a range the RFC's recursions produce: split by definition
            k = _split(width)
            h = node_hash(self.subtree(start, start + k), self.subtree(start + k, end))
        else:
            peaks, pos = [], start
            for b in range(top, -1, -1):
                if width >> b & 1:
                    peaks.append(self._node(b, pos >> b))
                    pos += 1 << b
            h = peaks[-1]
            for peak in reversed(peaks[:-1]):
                h = node_hash(peak, h)
        if len(self._memo) > 65536:
            self._memo.clear()
        self._memo[key] = h
        return h

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} outside 0..{self.size}")
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[0:size]), deepest sibling first.

        Below level ``inner`` (where ``index`` and ``size - 1`` part ways) every sibling is a full
        block except the one at ``inner - 1`` (the tree's ragged right part); above it, the path
        runs along the right edge and takes the full left sibling wherever ``index`` has a 1 bit.
        """
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ProofError(f"no leaf {index} in a tree of {size} (log holds {self.size})")
        inner = (index ^ (size - 1)).bit_length()
        node = self._node
        path = [node(k, (index >> k) ^ 1) for k in range(inner - 1)]
        if inner:
            start = ((index >> (inner - 1)) ^ 1) << (inner - 1)
            path.append(self.subtree(start, min(start + (1 << (inner - 1)), size)))
        for k in range(inner, size.bit_length()):
            if index >> k & 1:
                path.append(node(k, (index >> k) ^ 1))
        return path

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(old, D[0:new]); empty when ``old`` is 0 or equals ``new``."""
        new = self.size if new is None else new
        if not 0 <= old <= new <= self.size:
            raise ProofError(f"no consistency proof from {old} to {new} (log holds {self.size})")
        if old == 0 or old == new:
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [self.subtree(start, end)]
        k = _split(n)
        if m <= k:
            return self._subproof(m, start, start + k, complete) + [self.subtree(start + k, end)]
        return self._subproof(m - k, start + k, end, False) + [self.subtree(start, start + k)]


class Frontier:
    """The right-edge peaks of a growing tree: appends and roots in O(log n) memory."""

    def __init__(self, size: int = 0, peaks: list[bytes] | None = None) -> None:
        self.size = size
        self.peaks = list(peaks or [])   # one per set bit of size, largest (leftmost) first
        if len(self.peaks) != bin(size).count("1"):
            raise ValueError("peaks do not match the tree size")

    def append(self, leaf: bytes) -> None:
        h, size = leaf, self.size
        while size & 1:
            h = node_hash(self.peaks.pop(), h)
            size >>= 1
        self.peaks.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        h = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            h = node_hash(peak, h)
        return h


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` place ``leaf`` at ``index`` of the tree ``(size, root)``?"""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes,
                       new_root: bytes) -> bool:
    """RFC 9162 §2.1.4.2: is the tree ``(new_size, new_root)`` an append-only extension of
    ``(old_size, old_root)``?"""
    if not 0 <= old_size <= new_size or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:          # an exact power of 2: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
