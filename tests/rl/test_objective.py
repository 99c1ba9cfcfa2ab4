"""The clipped policy loss: a NumPy transcription of the published formulas, cases worked by hand,
the gradient against central finite differences (float64), and masked tokens that count for nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.rl.objective import NORMALIZATIONS, PolicyLossConfig, policy_loss

LOSS = jax.jit(policy_loss, static_argnames="cfg")
# d loss / d logp (argument 0), jitted: eager op-by-op dispatch is what makes small JAX tests slow
GRAD = jax.jit(jax.grad(lambda *a, cfg=PolicyLossConfig(): policy_loss(*a, cfg=cfg)[0]), static_argnames="cfg")


def transcription(logp, old, adv, mask, ref, ent, cfg):
    """Token by token, in float64: PPO's clipped surrogate with DAPO's eps_low / eps_high, the k3
    estimator, and the two normalisations as their papers write them."""
    B, L = logp.shape
    c = cfg.log_ratio_clamp
    seq_means, token_sum, tokens = [], 0.0, 0
    ratios, clip_low, clip_high, kls = [], 0, 0, []
    for b in range(B):
        seq_sum, n = 0.0, 0
        for t in range(L):
            if not mask[b, t]:
                continue
            rho = np.exp(np.clip(logp[b, t] - old[b, t], -c, c))
            a = adv[b]
            loss = -min(rho * a, np.clip(rho, 1 - cfg.eps_low, 1 + cfg.eps_high) * a)
            if ref is not None:
                d = np.clip(ref[b, t] - logp[b, t], -c, c)
                kls.append(np.exp(d) - d - 1)
                loss += cfg.beta * kls[-1]
            seq_sum += loss
            n += 1
            ratios.append(rho)
            clip_low += a < 0 and rho < 1 - cfg.eps_low
            clip_high += a > 0 and rho > 1 + cfg.eps_high
        if n:
            seq_means.append(seq_sum / n)
        token_sum += seq_sum
        tokens += n
    loss = np.mean(seq_means) if cfg.normalization == "seq-mean-token-mean" else token_sum / tokens
    metrics = {"loss": loss, "tokens": tokens, "clip_low": clip_low / tokens, "clip_high": clip_high / tokens,
               "ratio_mean": np.mean(ratios), "ratio_min": np.min(ratios), "ratio_max": np.max(ratios)}
    if ref is not None:
        metrics["kl"] = np.mean(kls)
    if ent is not None:
        metrics["entropy"] = ent[mask].mean()
    return metrics


def batch(seed, B=6, L=9, spread=0.8):
    rng = np.random.default_rng(seed)
    old = rng.uniform(-4, -0.05, (B, L))
    logp = old + rng.uniform(-spread, spread, (B, L))
    ref = old + rng.normal(0, 0.3, (B, L))
    adv = rng.normal(0, 1, B)
    lengths = rng.integers(1, L + 1, B)
    mask = np.arange(L)[None, :] < lengths[:, None]
    ent = rng.uniform(0, 3, (B, L))
    return logp, old, adv, mask, ref, ent


CONFIGS = [PolicyLossConfig(),
           PolicyLossConfig(eps_low=0.2, eps_high=0.28, beta=0.04, normalization="token-mean"),
           PolicyLossConfig(eps_low=0.5, eps_high=0.5, beta=0.01, log_ratio_clamp=0.6)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_the_transcription(cfg):
    logp, old, adv, mask, ref, ent = batch(0)
    ref = ref if cfg.beta else None
    want = transcription(logp, old, adv, mask, ref, ent, cfg)
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)  # noqa: E731
    loss, metrics = LOSS(f32(logp), f32(old), f32(adv), jnp.asarray(mask), f32(ref), f32(ent), cfg=cfg)
    assert float(loss) == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    for key, value in want.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0 < float(metrics["clip_low"]) + float(metrics["clip_high"]) < 1  # both branches are exercised


def test_worked_by_hand():
    # two sequences of 1 and 3 tokens, ratio 1 everywhere: each token's loss is -A
    logp = np.full((2, 4), -1.0, np.float32)
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)
    adv = np.array([1.0, -1.0], np.float32)
    seq, _ = LOSS(logp, logp, adv, mask)
    tok, _ = LOSS(logp, logp, adv, mask, cfg=PolicyLossConfig(normalization="token-mean"))
    assert float(seq) == pytest.approx(0.0)                 # mean(-1, +1)
    assert float(tok) == pytest.approx(0.5)                 # (-1 + 1 + 1 + 1) / 4
    # ratios 1.5 (A > 0: clipped at 1.2), 0.5 (A < 0: clipped at 0.8), 1.5 (A < 0: not clipped), 1.1
    lr = np.log(np.array([[1.5, 0.5, 1.5, 1.1], [1.5, 0.5, 1.5, 1.1]], np.float32))
    loss, m = LOSS(lr, np.zeros_like(lr), np.array([1.0, 0.0], np.float32), np.array([[1] * 4, [0] * 4], bool))
    assert float(loss) == pytest.approx(-(1.2 + 0.5 + 1.2 + 1.1) / 4, rel=1e-6)
    assert (float(m["clip_low"]), float(m["clip_high"])) == pytest.approx((0, 0.5))
    assert (float(m["ratio_min"]), float(m["ratio_max"])) == pytest.approx((0.5, 1.5))
    loss, m = LOSS(lr, np.zeros_like(lr), np.array([-1.0, 0.0], np.float32), np.array([[1] * 4, [0] * 4], bool))
    assert float(loss) == pytest.approx((1.5 + 0.8 + 1.5 + 1.1) / 4, rel=1e-6)
    assert (float(m["clip_low"]), float(m["clip_high"])) == pytest.approx((0.25, 0))
    # k3 of a reference 0.5 nats above: e^0.5 - 0.5 - 1 (beta = 0: measured, not in the loss)
    z = np.zeros((2, 4), np.float32)
    loss, m = LOSS(z, z, np.ones(2, np.float32), mask, z + 0.5)
    assert float(m["kl"]) == pytest.approx(np.exp(0.5) - 1.5, rel=1e-5) and float(loss) == -1.0  # -A


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradient_matches_central_differences(cfg):
    """d loss / d logp in float64 against (L(x + h) - L(x - h)) / 2h, token by token. Log-ratios are
    kept 0.02 away from the kinks (the clip edges and the clamp), where the derivative jumps."""
    logp, old, adv, mask, ref, _ = batch(1, B=3, L=5, spread=0.9)
    kinks = np.log([1 - cfg.eps_low, 1 + cfg.eps_high]).tolist() + [-cfg.log_ratio_clamp, cfg.log_ratio_clamp]
    lr = logp - old
    for k in kinks:
        near = np.abs(lr - k) < 0.02
        lr[near] += 0.05
    logp = old + lr
    ref = ref if cfg.beta else None
    with jax.enable_x64(True):
        old64, adv64 = (jnp.asarray(x, jnp.float64) for x in (old, adv))
        ref64 = None if ref is None else jnp.asarray(ref, jnp.float64)

        def f(x):
            return policy_loss(x, old64, adv64, mask, ref64, cfg=cfg)[0]

        x = jnp.asarray(logp, jnp.float64)
        grad = np.asarray(jax.jit(jax.grad(f))(x))
        assert grad.dtype == np.float64
        h = 1e-6
        fd = np.zeros_like(logp)
        f_jit = jax.jit(f)
        for idx in np.ndindex(*logp.shape):
            e = np.zeros_like(logp)
            e[idx] = h
            fd[idx] = (float(f_jit(x + e)) - float(f_jit(x - e))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(grad[~mask] == 0) and np.any(grad[mask] != 0)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_masked_tokens_count_for_nothing(normalization):
    cfg = PolicyLossConfig(beta=0.05, normalization=normalization)
    logp, old, adv, mask, ref, ent = (x.astype(np.float32) if x.dtype != bool else x for x in batch(2))
    mask[2] = False  # a row with no token at all (a dropped group's sample)
    base, base_m = LOSS(logp, old, adv, mask, ref, ent, cfg=cfg)
    grad = GRAD(logp, old, adv, mask, ref, ent, cfg=cfg)

    # garbage where the mask is off: NaN, inf, huge values
    junk = np.resize(np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 7.0], np.float32), logp.shape)
    junk[mask] = 0
    dirty = (logp + junk, old - junk, adv, mask, ref + junk, ent + junk)
    loss, m = LOSS(*dirty, cfg=cfg)
    assert float(loss) == float(base)
    assert all(float(m[k]) == float(base_m[k]) for k in base_m)
    g = np.asarray(GRAD(*dirty, cfg=cfg))
    assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0)
    np.testing.assert_array_equal(g, grad)

    # ... nor to the normaliser: more padding, or leaving out the empty row, changes nothing
    def pad(x):
        return np.pad(x, ((0, 0), (0, 5)))  # (mask: False)

    padded, _ = LOSS(pad(logp), pad(old), adv, pad(mask), pad(ref), pad(ent), cfg=cfg)
    keep = np.arange(logp.shape[0]) != 2
    without, _ = LOSS(logp[keep], old[keep], adv[keep], mask[keep], ref[keep], ent[keep], cfg=cfg)
    assert float(padded) == pytest.approx(float(base), rel=1e-6)
    assert float(without) == pytest.approx(float(base), rel=1e-6)


def test_no_tokens_at_all_is_finite():
    z = np.zeros((2, 3), np.float32)
    loss, m = LOSS(z, z, np.ones(2, np.float32), z > 0, z, cfg=PolicyLossConfig(beta=0.1))
    assert float(loss) == 0.0 and float(m["tokens"]) == 0
    assert (float(m["ratio_mean"]), float(m["ratio_min"]), float(m["ratio_max"])) == (1.0, 1.0, 1.0)


def test_old_and_reference_are_constants():
    logp, old, adv, mask, ref = (x.astype(np.float32) if x.dtype != bool else x for x in batch(3)[:5])
    cfg = PolicyLossConfig(beta=0.1)
    g_old, g_ref = jax.jit(jax.grad(lambda o, r: policy_loss(logp, o, adv, mask, r, cfg=cfg)[0], argnums=(0, 1)))(
        old, ref)
    assert not np.any(g_old) and not np.any(g_ref)


@pytest.mark.parametrize("kw, message", [
    ({"eps_low": 1.0}, "eps_low"), ({"eps_high": -0.1}, "eps_high"), ({"beta": -1.0}, "beta"),
    ({"log_ratio_clamp": 0.0}, "log_ratio_clamp"), ({"normalization": "sum"}, "normalization must be one of"),
])
def test_bad_config_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**kw)


def test_bad_shapes_and_missing_reference_are_named():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(z, z, jnp.ones(2), z > -1, cfg=PolicyLossConfig(beta=0.1))
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(z, z, jnp.ones(3), z > -1)
    with pytest.raises(ValueError, match="old_logp has shape"):
        policy_loss(z, jnp.zeros((2, 4)), jnp.ones(2), z > -1)
