"""Group advantages: against cases worked by hand and a plain NumPy/statistics transcription."""

import statistics

import numpy as np
import pytest

from jaxdiff.rl.advantages import BASELINES, SCALES, group_advantages

# three groups of four: one with a single pass, one all equal (dropped), one split half and half
REWARDS = [1.0, 0.0, 0.0, 0.0,
           1.0, 1.0, 1.0, 1.0,
           0.5, 1.5, 0.5, 1.5]
BY_HAND = {  # worked on paper; the middle group is dropped (all zeros)
    ("mean", "none"): [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, -0.5, 0.5, -0.5, 0.5],
    # r_i - mean of the other three: 1 - 0, 0 - 1/3; 0.5 - 3.5/3, 1.5 - 2.5/3
    ("leave_one_out", "none"): [1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0, -2 / 3, 2 / 3, -2 / 3, 2 / 3],
    # std with ddof = 1: sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; sqrt(4 * 0.25 / 3) = 1 / sqrt(3)
    ("mean", "std"): [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0, -0.5 * 3 ** 0.5, 0.5 * 3 ** 0.5, -0.5 * 3 ** 0.5,
                      0.5 * 3 ** 0.5],
}


@pytest.mark.parametrize("baseline, scale", list(BY_HAND))
def test_worked_by_hand(baseline, scale):
    out = group_advantages(REWARDS, 4, baseline=baseline, scale=scale, eps=0.0)
    np.testing.assert_allclose(out.values, BY_HAND[baseline, scale], rtol=1e-6, atol=1e-7)
    assert out.values.dtype == np.float32
    assert out.keep.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert (out.groups, out.dropped_groups, out.kept_samples) == (3, 1, 8)
    m = out.metrics()
    assert m["dropped_groups"] == 1 and m["dropped_fraction"] == pytest.approx(1 / 3) and m["kept_samples"] == 8


def transcription(rewards, G, baseline, scale, eps):
    """The definitions, one sample at a time."""
    out, keep = [], []
    for p in range(len(rewards) // G):
        group = [float(x) for x in rewards[p * G:(p + 1) * G]]
        if len(set(group)) == 1:
            out += [0.0] * G
            keep += [False] * G
            continue
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1:]
            a = r - (sum(others) / len(others) if baseline == "leave_one_out" else sum(group) / G)
            if scale == "std":
                a /= statistics.stdev(group) + eps
            out.append(a)
            keep.append(True)
    return np.array(out), np.array(keep)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("scale", SCALES)
def test_matches_the_transcription(baseline, scale):
    rng = np.random.default_rng(0)
    G = 6
    rewards = rng.choice([0.0, 0.25, 1.0, 1.4], size=(40, G))
    rewards[::5] = 0.7                        # some zero-variance groups
    rewards[3] = rng.normal(size=G)           # and continuous ones
    want, keep = transcription(rewards.reshape(-1), G, baseline, scale, 1e-4)
    got = group_advantages(rewards.reshape(-1), G, baseline=baseline, scale=scale)
    np.testing.assert_allclose(got.values, want, rtol=2e-6, atol=1e-6)
    assert np.array_equal(got.keep, keep) and got.dropped_groups == 8
    # [P, G] is the same batch
    np.testing.assert_array_equal(group_advantages(rewards, G, baseline=baseline, scale=scale).values, got.values)


def test_leave_one_out_is_a_rescaled_mean_baseline():
    r = np.random.default_rng(1).random(5 * 8)
    loo = group_advantages(r, 8, baseline="leave_one_out").values
    np.testing.assert_allclose(loo, 8 / 7 * group_advantages(r, 8).values, rtol=1e-5)


def test_a_group_that_differs_only_slightly_is_kept():
    out = group_advantages([1.0, 1.0, 1.0 + 1e-9, 1.0], 4)
    assert out.dropped_groups == 0 and out.keep.all()


@pytest.mark.parametrize("args, kw, message", [
    (([1.0, 0.0], 1), {}, "group_size must be >= 2"),
    (([1.0, 0.0, 1.0], 2), {}, "do not split into groups of 2"),
    (([], 2), {}, "do not split"),
    (([1.0, float("nan")], 2), {}, "rewards must be finite"),
    (([1.0, 0.0], 2), {"baseline": "median"}, "baseline must be one of"),
    (([1.0, 0.0], 2), {"scale": "max"}, "scale must be one of"),
])
def test_bad_input_is_named(args, kw, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(*args, **kw)
