"""Reward terms from verifier results (pure Python / NumPy; no JAX, no sandbox).

For one result r of a completion that took `steps` denoising steps out of `max_steps`:

    correctness C = 1                               if r passed
                  = tests_passed / tests_total      if partial_credit and r reports tests_total > 0
                  = 0                               otherwise
    speed       S = clip(1 - steps / max_steps, 0, 1)          (fewer diffusion steps score higher)
    efficiency  E = scale / (scale + cost)                     in (0, 1]; 1 at zero cost, 1/2 at cost = scale
                    cost = stats["itrs"]  (HVM interactions, Bend jobs)   with scale = itrs_scale
                         = stats["cpu_ms"] (CPU time, Python jobs)        with scale = cpu_ms_scale
                    E = 0 when the result carries no cost.
    reward        R = w_c * C + [r passed] * (w_s * S + w_e * E)

Speed and efficiency only count for a passing program: otherwise a policy would be paid for
giving up early with cheap garbage.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    correctness: float = 1.0
    speed: float = 0.5
    efficiency: float = 0.2
    partial_credit: bool = True
    itrs_scale: float = 1e6
    cpu_ms_scale: float = 100.0

    def __post_init__(self):
        for name in ("itrs_scale", "cpu_ms_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def correctness(result: dict, partial_credit: bool = True) -> float:
    if result.get("status") == "passed":
        return 1.0
    stats = result.get("stats") or {}
    total = stats.get("tests_total") or 0
    if partial_credit and total > 0:
        return float(stats.get("tests_passed", 0)) / float(total)
    return 0.0


def speed(steps: float, max_steps: float) -> float:
    if max_steps <= 0:
        raise ValueError("max_steps must be positive")
    return float(min(1.0, max(0.0, 1.0 - steps / max_steps)))


def efficiency(result: dict, cfg: RewardConfig = RewardConfig()) -> float:
    stats = result.get("stats") or {}
    if stats.get("itrs") is not None:
        cost, scale = float(stats["itrs"]), cfg.itrs_scale
    elif stats.get("cpu_ms") is not None:
        cost, scale = float(stats["cpu_ms"]), cfg.cpu_ms_scale
    else:
        return 0.0
    return scale / (scale + max(cost, 0.0))


def reward(result: dict, steps: float, max_steps: float, cfg: RewardConfig = RewardConfig()) -> float:
    c = correctness(result, cfg.partial_credit)
    if result.get("status") != "passed":
        return cfg.correctness * c
    return cfg.correctness * c + cfg.speed * speed(steps, max_steps) + cfg.efficiency * efficiency(result, cfg)


def rewards(results, steps, max_steps: float, cfg: RewardConfig = RewardConfig()) -> np.ndarray:
    """`reward` over a batch: results[i] with steps[i]; float32 array of len(results)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.shape != (len(results),):
        raise ValueError(f"steps has shape {steps.shape}, expected ({len(results)},)")
    return np.array([reward(r, s, max_steps, cfg) for r, s in zip(results, steps)], dtype=np.float32)
