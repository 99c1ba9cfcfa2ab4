"""Reward terms against values computed by hand from the formulas in reward.py's docstring."""

import numpy as np
import pytest

from jaxdiff.verify.reward import RewardConfig, correctness, efficiency, reward, rewards, speed

PASS_PY = {"status": "passed", "stats": {"cpu_ms": 100.0, "tests_passed": 3, "tests_total": 3}}
FAIL_PARTIAL = {"status": "failed", "stats": {"cpu_ms": 5.0, "tests_passed": 1, "tests_total": 4}}
PASS_BEND = {"status": "passed", "stats": {"itrs": 3_000_000, "cpu_ms": 9.0}}
TIMEOUT = {"status": "timeout", "stats": {}}


def test_correctness():
    assert correctness(PASS_PY) == 1.0
    assert correctness(FAIL_PARTIAL) == 0.25
    assert correctness(FAIL_PARTIAL, partial_credit=False) == 0.0
    assert correctness(TIMEOUT) == 0.0


def test_speed():
    assert speed(16, 64) == 0.75
    assert speed(64, 64) == 0.0
    assert speed(100, 64) == 0.0
    assert speed(0, 64) == 1.0
    with pytest.raises(ValueError):
        speed(1, 0)


def test_efficiency_prefers_interactions_then_cpu_time():
    assert efficiency(PASS_PY) == 0.5                     # 100 / (100 + 100)
    assert efficiency(PASS_BEND) == 0.25                  # 1e6 / (1e6 + 3e6), itrs win over cpu_ms
    assert efficiency(TIMEOUT) == 0.0
    assert efficiency(PASS_PY, RewardConfig(cpu_ms_scale=300)) == 0.75


def test_reward_by_hand():
    # 1.0 * 1 + 0.5 * (1 - 16/64) + 0.2 * 0.5 = 1 + 0.375 + 0.1
    assert reward(PASS_PY, 16, 64) == pytest.approx(1.475)
    # failing: only correctness counts, 1.0 * 0.25
    assert reward(FAIL_PARTIAL, 1, 64) == pytest.approx(0.25)
    # 2.0 * 1 + 0.1 * (1 - 32/64) + 1.0 * 0.25
    cfg = RewardConfig(correctness=2.0, speed=0.1, efficiency=1.0)
    assert reward(PASS_BEND, 32, 64, cfg) == pytest.approx(2.3)


def test_rewards_batch():
    out = rewards([PASS_PY, FAIL_PARTIAL, TIMEOUT], [16, 1, 64], 64)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.475, 0.25, 0.0], rtol=1e-6)
    with pytest.raises(ValueError):
        rewards([PASS_PY], [1, 2], 64)


def test_config_defaults_match_the_design():
    cfg = RewardConfig()
    assert (cfg.correctness, cfg.speed, cfg.efficiency) == (1.0, 0.5, 0.2)
