"""RFC 6962/9162 tree, proofs and verifiers: reference vectors, brute force, and forged proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.evidence.merkle import (EMPTY_ROOT, Frontier, Levels, ProofError, leaf_hash, node_hash,
                                          root_of, verify_consistency, verify_inclusion)

# The certificate-transparency reference vectors (RFC 6962 test data used by the CT, Trillian and
# transparency-dev implementations): 8 leaves, the roots of the trees of 1..8 of them, and proofs.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             b"\x50\x51\x52\x53\x54\x55\x56\x57", bytes(range(0x60, 0x70))]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
CT_INCLUSION = {(0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                         "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                         "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
                (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                         "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
                (0, 1): []}
CT_CONSISTENCY = {(1, 1): [],
                  (1, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                           "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                           "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
                  (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                           "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                           "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
                  (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                           "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]}


def ct_levels() -> Levels:
    return Levels(b"".join(leaf_hash(x) for x in CT_LEAVES))


def test_reference_roots_and_empty_tree():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    levels = ct_levels()
    for n in range(1, 9):
        assert levels.root(n).hex() == CT_ROOTS[n - 1]
        assert root_of([leaf_hash(x) for x in CT_LEAVES[:n]]).hex() == CT_ROOTS[n - 1]
    assert levels.root(0) == EMPTY_ROOT


def test_reference_proofs_are_produced_and_verify():
    levels = ct_levels()
    for (i, n), want in CT_INCLUSION.items():
        proof = levels.inclusion_proof(i, n)
        assert [p.hex() for p in proof] == want
        assert verify_inclusion(leaf_hash(CT_LEAVES[i]), i, n, proof, bytes.fromhex(CT_ROOTS[n - 1]))
    for (m, n), want in CT_CONSISTENCY.items():
        proof = levels.consistency_proof(m, n)
        assert [p.hex() for p in proof] == want
        assert verify_consistency(m, n, proof, bytes.fromhex(CT_ROOTS[m - 1]), bytes.fromhex(CT_ROOTS[n - 1]))


# -- an independent brute force: the RFC's recursive definitions on plain lists ------------------
def bf_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return bf_path(m, leaves[:k]) + [root_of(leaves[k:])]
    return bf_path(m - k, leaves[k:]) + [root_of(leaves[:k])]


def bf_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [root_of(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return bf_subproof(m, leaves[:k], b) + [root_of(leaves[k:])]
    return bf_subproof(m - k, leaves[k:], False) + [root_of(leaves[:k])]


def hashes(n: int, seed: int = 0) -> list[bytes]:
    return [leaf_hash(f"{seed}:{i}".encode()) for i in range(n)]


def test_every_proof_up_to_40_leaves_matches_brute_force():
    leaves = hashes(40)
    levels = Levels(b"".join(leaves))
    for n in range(1, 41):
        root = root_of(leaves[:n])
        assert levels.root(n) == root
        for i in range(n):
            proof = levels.inclusion_proof(i, n)
            assert proof == bf_path(i, leaves[:n])
            assert verify_inclusion(leaves[i], i, n, proof, root)
            assert not verify_inclusion(leaves[i], (i + 1) % n, n, proof, root) or n == 1
        for m in range(1, n + 1):
            proof = levels.consistency_proof(m, n)
            assert proof == ([] if m == n else bf_subproof(m, leaves[:n], True))
            assert verify_consistency(m, n, proof, root_of(leaves[:m]), root)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_incremental_levels_and_frontier_equal_a_fresh_build(n, data):
    leaves = hashes(n, seed=n)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))
    levels, frontier, prev = Levels(), Frontier(), 0
    for cut in cuts + [n]:
        levels.extend(leaves[prev:cut])
        for h in leaves[prev:cut]:
            frontier.append(h)
        prev = cut
        assert levels.root() == root_of(leaves[:cut]) == frontier.root()
    fresh = Levels(b"".join(leaves))
    assert [bytes(x) for x in levels.levels] == [bytes(x) for x in fresh.levels]


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 200), st.data())
def test_tampered_proofs_are_rejected(n, data):
    leaves = hashes(n, seed=7)
    levels = Levels(b"".join(leaves))
    m = data.draw(st.integers(1, n - 1))
    i = data.draw(st.integers(0, n - 1))
    root, old_root = levels.root(n), levels.root(m)
    inc = levels.inclusion_proof(i, n)
    con = levels.consistency_proof(m, n)
    assert verify_inclusion(leaves[i], i, n, inc, root) and verify_consistency(m, n, con, old_root, root)
    # flip one bit of one proof element
    if inc:
        j, bit = data.draw(st.integers(0, len(inc) - 1)), data.draw(st.integers(0, 255))
        bad = list(inc)
        bad[j] = bytes(b ^ (1 << (bit % 8)) if k == bit // 8 else b for k, b in enumerate(bad[j]))
        assert not verify_inclusion(leaves[i], i, n, bad, root)
    j, bit = data.draw(st.integers(0, len(con) - 1)), data.draw(st.integers(0, 255))
    bad = list(con)
    bad[j] = bytes(b ^ (1 << (bit % 8)) if k == bit // 8 else b for k, b in enumerate(bad[j]))
    assert not verify_consistency(m, n, bad, old_root, root)
    # wrong sizes, truncated or extended proofs, another tree's root
    assert not verify_consistency(m, n, con[:-1], old_root, root)
    assert not verify_consistency(m, n, con + [leaves[0]], old_root, root)
    assert not verify_inclusion(leaves[i], i, n, inc + [leaves[0]], root)
    other = Levels(b"".join(hashes(n, seed=8)))
    assert not verify_consistency(m, n, con, other.root(m), root)
    assert not verify_inclusion(leaves[i], i, n, inc, other.root(n))


def test_out_of_range_requests_raise():
    levels = Levels(b"".join(hashes(5)))
    with pytest.raises(ProofError):
        levels.inclusion_proof(5, 5)
    with pytest.raises(ProofError):
        levels.consistency_proof(3, 6)
    assert not verify_inclusion(hashes(1)[0], 0, 0, [], EMPTY_ROOT)
    assert verify_consistency(0, 5, [], EMPTY_ROOT, levels.root())
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
