"""Vectorised MinHash and LSH banding for prompt templates.

``datasketch`` updates one MinHash per Python call, too slow for a million prompts. This module
computes the same sketch (datasketch's ``affine32`` scheme, same permutations for the same seed)
for many prompts at once with numpy; ``tests/test_minhash.py`` checks the values are identical
to datasketch's. Banding then groups prompts whose sketches collide in any band (near-duplicate
structure, Jaccard above about 0.45 with 16 bands of 4 rows).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from distillguard.detect.text import cached_hash, tokens

NUM_PERM = 64
BANDS, ROWS = 16, 4
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@lru_cache(maxsize=4)
def permutations(num_perm: int = NUM_PERM, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters datasketch uses for ``MinHash(num_perm, seed, scheme='affine32')``."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


def minhash_signatures(shingle_sets: Sequence[Sequence[int]], num_perm: int = NUM_PERM,
                       seed: int = 1) -> np.ndarray:
    """MinHash signatures (n x num_perm, uint32) of sets of 32-bit shingle hashes.

    An empty set gets the all-ones sentinel, as an empty datasketch MinHash does.
    """
    a, b = permutations(num_perm, seed)
    n = len(shingle_sets)
    out = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=n)
    nonempty = np.flatnonzero(lengths)
    if nonempty.size == 0:
        return out
    flat = np.fromiter((h for i in nonempty for h in shingle_sets[i]), dtype=np.uint32, count=int(lengths.sum()))
    with np.errstate(over="ignore"):
        mixed = _fmix32(flat)
        # Chunked so the (shingles x permutations) matrix stays small.
        step = max(1, 2_000_000 // num_perm)
        reduced = np.empty((nonempty.size, num_perm), dtype=np.uint32)
        owner = np.repeat(np.arange(nonempty.size), lengths[nonempty])
        reduced[:] = np.iinfo(np.uint32).max
        for lo in range(0, flat.size, step):
            hi = min(flat.size, lo + step)
            _reduce_min(reduced, owner[lo:hi], mixed[lo:hi, None] * a[None, :] + b[None, :])
    out[nonempty] = reduced
    return out


def signature_one(shingles: Sequence[int], num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """The MinHash signature of one shingle set (what :func:`minhash_signatures` gives for a
    one-element list, without its batching machinery: the gateway's per-request path)."""
    if not shingles:
        return np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    a, b = permutations(num_perm, seed)
    with np.errstate(over="ignore"):
        mixed = _fmix32(np.asarray(shingles, dtype=np.uint32))
        return (mixed[:, None] * a[None, :] + b[None, :]).min(axis=0)


_BAND_WEIGHTS = np.array([1, 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D][:ROWS], dtype=np.uint64)
_BAND_SALT = np.arange(BANDS, dtype=np.uint64) << np.uint64(56)


def band_keys32_one(shingles: Sequence[int]) -> np.ndarray:
    """One prompt's band keys folded to 32 bits (0: no template), what ``band_keys`` of
    ``signature_one`` gives folded as ``k ^ (k >> 32)``, in a third of the numpy calls: the
    gateway computes it on every request."""
    if not shingles:
        return np.zeros(BANDS, dtype=np.uint32)
    a, b = permutations(NUM_PERM, 1)
    mixed = _fmix32(np.array(shingles, dtype=np.uint32))
    values = np.multiply.outer(mixed, a)          # uint32 arithmetic wraps, as datasketch's affine32
    values += b
    sig = values.min(axis=0)[: BANDS * ROWS].astype(np.uint64).reshape(BANDS, ROWS)
    sig *= _BAND_WEIGHTS
    keys = sig.sum(axis=1)
    keys ^= _BAND_SALT
    out = (keys ^ (keys >> np.uint64(32))).astype(np.uint32)
    out[keys == 0] = 0
    return out


def _reduce_min(reduced: np.ndarray, owner: np.ndarray, values: np.ndarray) -> None:
    """reduced[o] = min(reduced[o], values of rows owned by o); owners are sorted."""
    boundaries = np.flatnonzero(np.diff(owner)) + 1
    starts = np.concatenate(([0], boundaries))
    mins = np.minimum.reduceat(values, starts, axis=0)
    idx = owner[starts]
    reduced[idx] = np.minimum(reduced[idx], mins)


def template_shingles(text: str, edge: int = 16, edge_chars: int = 300) -> list[int]:
    """Hashed 3-token shingles of a prompt's first and last ``edge`` masked tokens.

    Templates live at the edges (instruction before the payload, format demands after it);
    the payload in the middle varies and would drown the shared structure. Only the first and
    last ``edge_chars`` characters are tokenised, and a shingle's hash combines its tokens'
    cached hashes arithmetically, so long prompts cost no more than short ones.
    """
    if len(text) <= 2 * edge_chars:
        toks = tokens(text)
        picked = toks if len(toks) <= 2 * edge else toks[:edge] + ["…"] + toks[-edge:]
    else:
        picked = tokens(text[:edge_chars])[:edge] + ["…"] + tokens(text[-edge_chars:])[-edge:]
    if len(picked) < 3:
        return []
    h = [cached_hash(t) for t in picked]
    return sorted({(h[i] * 0x9E3779B1 + h[i + 1] * 0x85EBCA77 + h[i + 2]) & 0xFFFFFFFF
                   for i in range(len(h) - 2)})


def band_keys(signatures: np.ndarray, bands: int = BANDS, rows: int = ROWS) -> np.ndarray:
    """One 64-bit key per (prompt, band): equal keys mean the band's rows all agree."""
    n = signatures.shape[0]
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    weights = np.array([1, 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D][:rows], dtype=np.uint64)
    with np.errstate(over="ignore"):
        keys = (sig * weights).sum(axis=2) ^ (np.arange(bands, dtype=np.uint64) << np.uint64(56))
    empty = (signatures == np.iinfo(np.uint32).max).all(axis=1)
    keys[empty] = 0  # prompts too short for a template never collide
    return keys


def template_groups(keys: np.ndarray) -> np.ndarray:
    """Component label per prompt: prompts sharing any band key are joined (transitively)."""
    n, bands = keys.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols = [], []
    for band in range(bands):
        column = keys[:, band]
        valid = np.flatnonzero(column != 0)
        if valid.size < 2:
            continue
        _, first, inverse = np.unique(column[valid], return_index=True, return_inverse=True)
        rows.append(valid)
        cols.append(valid[first[inverse]])
    if not rows:
        return np.arange(n)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels
