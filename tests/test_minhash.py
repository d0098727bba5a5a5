"""Our vectorised MinHash must equal datasketch's, and banding must group near-duplicates."""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

from distillguard.detect.minhash import (NUM_PERM, band_keys, minhash_signatures, template_groups,
                                         template_shingles)


def test_signatures_equal_datasketch():
    rng = np.random.default_rng(0)
    sets = [sorted(set(int(x) for x in rng.integers(0, 2**32, size=int(k)))) for k in rng.integers(0, 60, size=40)]
    sets[3] = []
    ours = minhash_signatures(sets)
    for i, values in enumerate(sets):
        ref = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32", hashfunc=lambda v: v)
        for v in values:
            ref.update(v)
        assert np.array_equal(ours[i], np.asarray(ref.hashvalues, dtype=np.uint32)), i


def test_jaccard_estimate_tracks_true_jaccard():
    base = list(range(1000, 1100))
    other = list(range(1050, 1150))  # Jaccard 50/150 = 0.33
    sigs = minhash_signatures([base, other, base])
    est = float(np.mean(sigs[0] == sigs[1]))
    assert abs(est - 1 / 3) < 0.15
    assert np.array_equal(sigs[0], sigs[2])


def test_template_groups_find_shared_structure():
    subjects = ["python decorators", "the french revolution", "photosynthesis", "bond yields", "sonnet forms",
                "kubernetes pods", "stoic ethics", "tax law", "chess openings", "protein folding"]
    templated = [f"Explain {s} in depth, covering the history, key ideas and common mistakes. Use markdown headings "
                 f"and give at least three worked examples." for s in subjects]
    organic = ["my cat keeps scratching the couch, any ideas?", "what's a good name for a bakery in lisbon",
               "fix this: TypeError: 'NoneType' object is not subscriptable", "hi", "write me a haiku about rain",
               "how do I center a div"]
    texts = templated + organic
    labels = template_groups(band_keys(minhash_signatures([template_shingles(t) for t in texts])))
    assert len(set(labels[: len(templated)])) == 1  # all templated prompts in one group
    assert labels[len(templated)] not in set(labels[len(templated) + 1:])  # organic prompts stay apart
    assert len(set(labels[len(templated):])) == len(organic)
