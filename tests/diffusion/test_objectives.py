"""Losses and schedules against direct NumPy transcriptions of the published formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import corrupt, losses
from jaxdiff.diffusion.schedules import SCHEDULES, Schedule, inverse_prob_weight, sample_times


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def case():
    rs = np.random.RandomState(0)
    b, l, v = 3, 7, 11
    logits = rs.randn(b, l, v).astype(np.float32) * 3
    targets = rs.randint(0, v, (b, l))
    masked = rs.rand(b, l) < 0.5
    t = rs.uniform(0.05, 1, b).astype(np.float32)
    return logits, targets, masked, t


def test_llada_loss_matches_numpy(case):
    logits, targets, masked, t = case
    b, l, _ = logits.shape
    p = np.broadcast_to(t[:, None], (b, l))
    nll = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    ref = np.sum(np.where(masked, nll / p, 0)) / (b * l)                  # LLaDA eq. (3)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), kind="llada")
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)
    # SFT: per-example answer length, then mean over the batch (LLaDA SFT recipe).
    ans = np.array([5, 7, 3])
    ref_sft = np.sum(np.sum(np.where(masked, nll / p, 0), 1) / ans) / b
    out_sft = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), answer_lengths=jnp.asarray(ans))
    np.testing.assert_allclose(float(out_sft), ref_sft, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_mdlm_loss_matches_numpy(case, kind):
    logits, targets, masked, t = case
    b, l, _ = logits.shape
    sched = Schedule(kind)
    p = np.asarray(sched.mask_prob(jnp.asarray(t)), np.float64)
    dp = np.asarray(sched.mask_prob_derivative(jnp.asarray(t)), np.float64)
    nll = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    # MDLM: -alpha'(t) / (1 - alpha(t)) = p'(t) / p(t) times the masked-token NLL.
    ref = np.sum(np.where(masked, nll * (dp / p)[:, None], 0)) / (b * l)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(np.broadcast_to(p[:, None], (b, l))),
                                kind="mdlm", dp_mask=jnp.asarray(np.broadcast_to(dp[:, None], (b, l))))
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)


def test_soft_ce_matches_numpy(case):
    logits, targets, masked, t = case
    b, l, v = logits.shape
    eps = 0.2
    logq = _np_log_softmax(logits.astype(np.float64))
    soft = np.full((b, l, v), eps / v)
    np.put_along_axis(soft, targets[..., None], 1 - eps + eps / v, -1)
    ce = -(soft * logq).sum(-1)                      # CE against the smoothed one-hot
    p = np.broadcast_to(t[:, None], (b, l))
    ref = np.sum(np.where(masked, ce / p, 0)) / (b * l)
    stats = losses.token_stats_from_logits(jnp.asarray(logits), jnp.asarray(targets))
    out = losses.diffusion_loss(stats, jnp.asarray(masked), jnp.asarray(p), kind="soft_ce", label_smoothing=eps)
    np.testing.assert_allclose(float(out), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [4, 11, 64])
def test_vocab_chunked_stats_equal_full_logits(chunk):
    rs = np.random.RandomState(1)
    h = rs.randn(9, 8).astype(np.float32)
    w = rs.randn(11, 8).astype(np.float32)
    targets = rs.randint(0, 11, 9)
    full = losses.token_stats_from_logits(jnp.asarray(h @ w.T), jnp.asarray(targets))
    ch = losses.token_stats_chunked(jnp.asarray(h), jnp.asarray(w), jnp.asarray(targets), chunk=chunk)
    np.testing.assert_allclose(np.asarray(ch.nll), np.asarray(full.nll), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ch.mean_nll), np.asarray(full.mean_nll), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ch.correct), np.asarray(full.correct))


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_hit_endpoints_and_derivative(kind):
    s = Schedule(kind)
    np.testing.assert_allclose(float(s.mask_prob(jnp.float32(0.0))), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(s.mask_prob(jnp.float32(1.0))), 1.0, atol=1e-6)
    t = jnp.linspace(0.1, 0.9, 9)
    numeric = (s.mask_prob(t + 1e-3) - s.mask_prob(t - 1e-3)) / 2e-3
    np.testing.assert_allclose(np.asarray(s.mask_prob_derivative(t)), np.asarray(numeric), rtol=2e-3)
    assert np.all(np.diff(np.asarray(s.mask_prob(jnp.linspace(0, 1, 50)))) >= 0)


def test_time_sampling_range_and_antithetic_strata():
    t = np.asarray(sample_times(jax.random.key(0), 1000, eps=1e-3))
    assert t.min() > 1e-3 and t.max() <= 1.0
    ta = np.sort(np.asarray(sample_times(jax.random.key(1), 8, eps=0.0, antithetic=True)))
    # one draw per stratum of width 1/8
    np.testing.assert_array_equal(np.floor(np.clip(ta, 0, 1 - 1e-9) * 8), np.arange(8))
    np.testing.assert_allclose(np.asarray(inverse_prob_weight(jnp.array([0.01, 0.5]), 10.0)), [10.0, 2.0])


def test_corruptions_respect_maskable_and_prompt():
    rs = np.random.RandomState(2)
    tokens = jnp.asarray(rs.randint(0, 50, (64, 40)))
    plen = rs.randint(0, 30, 64)
    maskable = jnp.asarray(np.arange(40)[None] >= plen[:, None])
    p = jnp.full((64,), 0.9)
    key = jax.random.key(3)
    for span_prob in (0.0, 1.0, 0.5):
        noisy, masked = corrupt.corrupt_mask(key, tokens, p, 99, maskable, span_prob=span_prob)
        assert not np.any(np.asarray(masked) & ~np.asarray(maskable))   # prompts never noised
        np.testing.assert_array_equal(np.asarray(noisy)[~np.asarray(masked)], np.asarray(tokens)[~np.asarray(masked)])
    noisy, masked = corrupt.mask_span(key, tokens, p, 99, maskable)
    for row in np.asarray(masked):
        idx = np.flatnonzero(row)
        assert len(idx) == 0 or np.all(np.diff(idx) == 1)              # one contiguous run
    edited_tokens, edited = corrupt.edit_corrupt(key, noisy, tokens, masked, maskable, 50, 0.5)
    e = np.asarray(edited)
    assert e.any() and not np.any(e & (~np.asarray(maskable) | np.asarray(masked)))
    assert np.all(np.asarray(edited_tokens)[e] != np.asarray(tokens)[e])
    replaced = corrupt.random_replace(key, noisy, masked, 50, 0.3)
    changed = np.asarray(replaced) != np.asarray(noisy)
    assert changed.any() and not np.any(changed & ~np.asarray(masked))


def test_random_shorten_cuts_about_the_given_fraction():
    tokens = jnp.ones((4000, 16), jnp.int32)
    out, valid = corrupt.random_shorten(jax.random.key(0), tokens, jnp.ones((4000, 16), bool), prob=0.05, pad_id=0)
    cut_rows = np.any(~np.asarray(valid), axis=1)
    assert 0.03 < cut_rows.mean() < 0.07
    assert np.all(np.asarray(out)[~np.asarray(valid)] == 0)
    assert np.all(np.asarray(valid)[:, 0])   # a cut row keeps at least one token
